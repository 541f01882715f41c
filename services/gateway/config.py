"""Configuration of the gateway service: one frozen dataclass.

Every setting is declared once, with :func:`fleetsuit.settings.setting`:
its flag is ``--field-name`` and its variable ``FLEETSUIT_GATEWAY_FIELD_NAME``
unless named otherwise (the node id, the cluster id and the metrics host are
shared by the services of a node). A value comes from the flag, else the
environment, else the default; ``validate`` names the setting that is wrong.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from fleetsuit.logs import LOG_FORMATS
from fleetsuit.settings import ConfigError, from_sources, parse_config, setting

ENV_PREFIX = "FLEETSUIT_GATEWAY_"
PROG = "python -m services.gateway"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
GIB = 1024 * 1024 * 1024


def _host_port(name: str, value: str, *, empty_ok: bool = False) -> None:
    if empty_ok and not value:
        return
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"{name}={value!r} is not HOST:PORT")


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    listen: str = setting("127.0.0.1:7404", "HOST:PORT of the devices' gRPC sessions (port 0 picks one)")
    http_listen: str = setting(
        "127.0.0.1:7405", "HOST:PORT of the payload downloads over HTTP (port 0 picks one)"
    )
    advertise: str = setting(
        "", "HOST:PORT devices are told to reach this gateway's gRPC at (default: listen)"
    )
    advertise_http: str = setting(
        "", "HOST:PORT devices are told to download payloads from (default: http_listen)"
    )
    consensus_endpoint: str = setting(
        "127.0.0.1:7101", "HOST:PORT of this node's consensus service (ledger, devices, reports)"
    )
    dht_endpoint: str = setting("127.0.0.1:7102", "HOST:PORT of this node's dht (payloads)")
    gateway_id: str = setting("", "this gateway's id, as devices rank it (default: node_id)")
    node_id: str = setting("gateway-0", "this node's id, in logs and metrics", env="FLEETSUIT_NODE_ID")
    cluster_id: str = setting(
        "", "the cluster this node belongs to, for the start line", env="FLEETSUIT_CLUSTER_ID"
    )
    data_dir: str = setting(
        "data/gateway", "directory of the payload cache (DATA/cache)", flag="--data",
        env="FLEETSUIT_GATEWAY_DATA", metavar="DIR",
    )  # fmt: skip
    cache_max_bytes: int = setting(4 * GIB, "largest total size of the payload cache (bytes)")
    heartbeat_interval_ms: int = setting(10_000, "how often devices send a heartbeat (ms)")
    missed_heartbeats: int = setting(
        3, "heartbeat intervals a session may stay silent before it is closed"
    )
    ledger_lost_ms: int = setting(
        30_000,
        "how long this gateway may be cut off from its node's ledger before it hands its devices "
        "to the other live gateways (ms); with none live, it keeps serving them",
    )
    register_timeout_ms: int = setting(
        10_000, "how long a device may take from Hello to Register (ms)"
    )
    offer_lead_ms: int = setting(
        60_000, "how long before its switch time a device is offered a release, to download "
        "and install it into its inactive slot (ms)",
    )
    directory_refresh_ms: int = setting(
        2_000, "how often the live gateways are looked up from the cluster's membership (ms)"
    )
    probe_timeout_ms: int = setting(
        1_000, "deadline of the calls that find and probe the other gateways (ms)"
    )
    device_cache_entries: int = setting(
        100_000, "device enrolments kept in memory (invalidated by the ledger)"
    )
    device_cache_ttl_ms: int = setting(
        300_000, "longest an enrolment is used from memory without a fresh read (ms)"
    )
    report_timeout_ms: int = setting(
        5_000, "how long a device report may wait for its commit before the device resends (ms)"
    )
    metrics_host: str = setting(
        "127.0.0.1", "address of the Prometheus /metrics endpoint", env="FLEETSUIT_METRICS_HOST"
    )
    metrics_port: int = setting(0, "port of /metrics (0 picks a free one, -1 turns it off)")
    grace_ms: int = setting(2000, "how long sessions may take to move away at shutdown (ms)")
    log_level: str = setting("INFO", f"log level: {', '.join(LOG_LEVELS)}")
    log_format: str = setting("text", f"log line format: {' or '.join(LOG_FORMATS)}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> GatewayConfig:
        """Environment (``os.environ`` when None), then defaults; validated."""
        return from_sources(cls, None, env, ENV_PREFIX)

    @classmethod
    def from_args(
        cls, argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None
    ) -> GatewayConfig:
        """Flags, then the environment, then defaults; validated. A usage
        error exits with status 2 (argparse)."""
        return parse_config(
            cls,
            argv,
            env,
            prog=PROG,
            env_prefix=ENV_PREFIX,
            description="The gateway service: devices' sessions, rollout decisions and "
            "payload downloads.",
        )

    # ------------------------------------------------------------ derived values

    @property
    def id(self) -> str:
        """The gateway id devices rank and are told about."""
        return self.gateway_id or self.node_id

    @property
    def cache_dir(self) -> str:
        return os.path.join(self.data_dir, "cache")

    @property
    def grace_s(self) -> float:
        return self.grace_ms / 1000

    @property
    def heartbeat_interval_s(self) -> float:
        return self.heartbeat_interval_ms / 1000

    @property
    def metrics_enabled(self) -> bool:
        return self.metrics_port >= 0

    def validate(self) -> GatewayConfig:
        for name in ("listen", "http_listen", "consensus_endpoint"):
            _host_port(name, getattr(self, name))
        for name in ("advertise", "advertise_http", "dht_endpoint"):
            _host_port(name, getattr(self, name), empty_ok=True)
        if not self.node_id:
            raise ConfigError("node_id must not be empty")
        if not self.metrics_host:
            raise ConfigError("metrics_host must not be empty")
        if not -1 <= self.metrics_port <= 65535:
            raise ConfigError(f"metrics_port={self.metrics_port} is out of range (-1..65535)")
        if not self.data_dir:
            raise ConfigError("data_dir must name a directory")
        positive = (
            "cache_max_bytes", "heartbeat_interval_ms", "missed_heartbeats", "register_timeout_ms",
            "directory_refresh_ms", "probe_timeout_ms", "device_cache_entries",
            "device_cache_ttl_ms", "report_timeout_ms", "ledger_lost_ms",
        )  # fmt: skip
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name}={getattr(self, name)} must be positive")
        if self.heartbeat_interval_ms > 0xFFFFFFFF:
            raise ConfigError(f"heartbeat_interval_ms={self.heartbeat_interval_ms} is too large")
        for name in ("offer_lead_ms", "grace_ms"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}={getattr(self, name)} must not be negative")
        if self.log_level.upper() not in LOG_LEVELS:
            raise ConfigError(f"log_level={self.log_level!r} is not one of {', '.join(LOG_LEVELS)}")
        if self.log_format not in LOG_FORMATS:
            raise ConfigError(
                f"log_format={self.log_format!r} is not one of {', '.join(LOG_FORMATS)}"
            )
        return self
