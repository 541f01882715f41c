"""Configuration of the manifest service: one frozen dataclass.

``from_env`` is the only reader of environment variables; command-line flags
override it in ``__main__``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from fleetsuit.envconfig import ConfigError, env_int, env_str


@dataclass(frozen=True, slots=True)
class ManifestConfig:
    listen: str = "127.0.0.1:7403"  # HOST:PORT; port 0 picks a free one
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 0  # 0 picks a free port; -1 disables /metrics
    node_id: str = "manifest-0"
    trust_anchor_paths: tuple[str, ...] = ()  # PEM public keys used when a request has none
    max_envelope_bytes: int = 1024 * 1024
    grace_ms: int = 2000

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ManifestConfig:
        d = cls()
        anchors = env_str("FLEETSUIT_MANIFEST_TRUST_ANCHORS", "", env)
        return cls(
            listen=env_str("FLEETSUIT_MANIFEST_LISTEN", d.listen, env),
            metrics_host=env_str("FLEETSUIT_METRICS_HOST", d.metrics_host, env),
            metrics_port=env_int("FLEETSUIT_MANIFEST_METRICS_PORT", d.metrics_port, env),
            node_id=env_str("FLEETSUIT_NODE_ID", d.node_id, env),
            trust_anchor_paths=tuple(p for p in anchors.split(",") if p),
            max_envelope_bytes=env_int(
                "FLEETSUIT_MANIFEST_MAX_ENVELOPE_BYTES", d.max_envelope_bytes, env
            ),
            grace_ms=env_int("FLEETSUIT_MANIFEST_GRACE_MS", d.grace_ms, env),
        )

    def validate(self) -> ManifestConfig:
        host, sep, port = self.listen.rpartition(":")
        if not sep or not host or not port.isdigit() or int(port) > 65535:
            raise ConfigError(f"listen={self.listen!r} is not HOST:PORT")
        if not -1 <= self.metrics_port <= 65535:
            raise ConfigError(f"metrics_port={self.metrics_port} is out of range")
        if not self.node_id:
            raise ConfigError("node_id must not be empty")
        if self.max_envelope_bytes <= 0:
            raise ConfigError("max_envelope_bytes must be positive")
        if self.grace_ms < 0:
            raise ConfigError("grace_ms must not be negative")
        return self
