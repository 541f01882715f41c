"""Configuration of the manifest service: one frozen dataclass.

Every setting is declared once, with :func:`fleetsuit.settings.setting`:
its flag is ``--field-name`` and its variable ``FLEETSUIT_MANIFEST_FIELD_NAME``
unless named otherwise (the node id and the metrics host are shared by the
services of a node). A value comes from the flag, else the environment,
else the default; ``validate`` names the setting that is wrong.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from fleetsuit.logs import LOG_FORMATS
from fleetsuit.settings import ConfigError, from_sources, parse_config, setting

ENV_PREFIX = "FLEETSUIT_MANIFEST_"
PROG = "python -m services.manifest"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DNS_NAME = re.compile(rf"(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*\.?")


@dataclass(frozen=True, slots=True)
class ManifestConfig:
    listen: str = setting("127.0.0.1:7403", "HOST:PORT for gRPC (port 0 picks a free one)")
    metrics_host: str = setting(
        "127.0.0.1", "address of the Prometheus /metrics endpoint (0.0.0.0: every interface, for a "
        "scraper on another host)", env="FLEETSUIT_METRICS_HOST",
    )
    metrics_port: int = setting(0, "port of /metrics (0 picks a free one, -1 turns it off)")
    node_id: str = setting(
        "manifest-0", "this node's id, in logs and metrics", env="FLEETSUIT_NODE_ID"
    )
    cluster_id: str = setting(
        "", "the cluster this node belongs to, for the start line", env="FLEETSUIT_CLUSTER_ID"
    )
    trust_anchors: tuple[str, ...] = setting(
        (),
        "PEM public keys (comma-separated files) trusted when a request names none",
        metavar="FILE[,FILE...]",
    )
    max_envelope_bytes: int = setting(
        1024 * 1024, "largest envelope accepted, integrated payloads included (bytes)"
    )
    anchor_cache_entries: int = setting(
        256, "trust anchors from requests kept parsed (least recently used go first)"
    )
    grace_ms: int = setting(2000, "how long calls in flight may finish at shutdown (ms)")
    log_level: str = setting("INFO", f"log level: {', '.join(LOG_LEVELS)}")
    log_format: str = setting("text", f"log line format: {' or '.join(LOG_FORMATS)}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ManifestConfig:
        """Environment (``os.environ`` when None), then defaults; validated."""
        return from_sources(cls, None, env, ENV_PREFIX)

    @classmethod
    def from_args(
        cls, argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None
    ) -> ManifestConfig:
        """Flags, then the environment, then defaults; validated. A usage
        error exits with status 2 (argparse)."""
        return parse_config(
            cls,
            argv,
            env,
            prog=PROG,
            env_prefix=ENV_PREFIX,
            description="The manifest service: validates and inspects SUIT envelopes over gRPC.",
        )

    @property
    def grace_s(self) -> float:
        return self.grace_ms / 1000

    @property
    def metrics_enabled(self) -> bool:
        return self.metrics_port >= 0

    def validate(self) -> None:
        host, sep, port = self.listen.rpartition(":")
        if not sep or not host or not port.isdigit() or int(port) > 65535:
            raise ConfigError(f"listen={self.listen!r} is not HOST:PORT")
        if not -1 <= self.metrics_port <= 65535:
            raise ConfigError(f"metrics_port={self.metrics_port} is out of range (-1..65535)")
        _check_host(self.metrics_host, "metrics_host")
        if not self.node_id:
            raise ConfigError("node_id must not be empty")
        if any(not path for path in self.trust_anchors):
            raise ConfigError("trust_anchors has an empty file name")
        if self.max_envelope_bytes <= 0:
            raise ConfigError(f"max_envelope_bytes={self.max_envelope_bytes} must be positive")
        if self.anchor_cache_entries <= 0:
            raise ConfigError(f"anchor_cache_entries={self.anchor_cache_entries} must be positive")
        if self.grace_ms < 0:
            raise ConfigError(f"grace_ms={self.grace_ms} must not be negative")
        if self.log_level.upper() not in LOG_LEVELS:
            raise ConfigError(f"log_level={self.log_level!r} is not one of {', '.join(LOG_LEVELS)}")
        if self.log_format not in LOG_FORMATS:
            raise ConfigError(
                f"log_format={self.log_format!r} is not one of {', '.join(LOG_FORMATS)}"
            )


def _check_host(value: str, field: str) -> None:
    """A bare host a server can bind: an IP address (0.0.0.0 or :: for every
    interface) or a DNS name; ConfigError naming ``field`` otherwise."""
    if not value:
        raise ConfigError(f"{field} must not be empty")
    try:
        ipaddress.ip_address(value)
        return
    except ValueError:
        pass
    if _DNS_NAME.fullmatch(value) is None:
        hint = " (a host only, without a port)" if ":" in value else ""
        raise ConfigError(f"{field}={value!r} is not an IP address or a host name{hint}")
