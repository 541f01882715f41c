"""Configuration of one consensus process: flags override environment
variables (``FLEETSUIT_*``), which override the defaults."""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from fleetsuit.envconfig import ConfigError, env_int, env_str


def parse_peers(text: str) -> tuple[tuple[str, str], ...]:
    """``id=host:port,id=host:port`` -> ((id, address), ...)."""
    peers: list[tuple[str, str]] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        node_id, sep, address = part.partition("=")
        if not sep or not node_id or ":" not in address:
            raise ConfigError(f"peer {part!r} is not of the form id=host:port")
        peers.append((node_id, address))
    return tuple(peers)


@dataclass(frozen=True)
class ConsensusConfig:
    node_id: str
    listen: str
    peers: tuple[tuple[str, str], ...]  # every voter, this node included
    data_dir: str
    cluster_id: str = "fleetsuit"
    metrics_port: int = 0  # 0: no metrics endpoint
    tick_ms: int = 25
    election_ticks: int = 12  # election timeout: 300-600 ms at 25 ms ticks
    heartbeat_ticks: int = 2
    submit_timeout_ms: int = 5_000
    max_entry_bytes: int = 1_536 * 1024  # etcd's request limit (1.5 MiB)
    max_batch_entries: int = 1_024
    max_batch_bytes: int = 4 * 1024 * 1024
    log_level: str = "INFO"
    key_file: str = ""  # the node's block-signing key; default DATA/node.key
    extra: Mapping[str, str] = field(default_factory=dict)

    def validate(self) -> None:
        ids = [p[0] for p in self.peers]
        if self.node_id not in ids:
            raise ConfigError(f"node_id {self.node_id!r} is not among peers {ids}")
        if len(set(ids)) != len(ids):
            raise ConfigError(f"peers has duplicate ids: {ids}")
        if self.tick_ms < 1:
            raise ConfigError("tick_ms must be >= 1")
        if self.election_ticks <= self.heartbeat_ticks:
            raise ConfigError("election_ticks must be greater than heartbeat_ticks")
        if self.submit_timeout_ms < 1:
            raise ConfigError("submit_timeout_ms must be >= 1")
        if not self.data_dir:
            raise ConfigError("data_dir is required")

    @property
    def key_path(self) -> str:
        return self.key_file or f"{self.data_dir}/node.key"

    @property
    def peer_addresses(self) -> dict[str, str]:
        return dict(self.peers)

    @classmethod
    def from_args(
        cls, argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None
    ) -> ConsensusConfig:
        p = argparse.ArgumentParser(prog="python -m services.consensus")
        p.add_argument("--node-id", default=env_str("FLEETSUIT_NODE_ID", "", env))
        p.add_argument("--cluster-id", default=env_str("FLEETSUIT_CLUSTER_ID", "fleetsuit", env))
        p.add_argument("--listen", default=env_str("FLEETSUIT_CONSENSUS_LISTEN", "127.0.0.1:7101", env))
        p.add_argument("--peers", default=env_str("FLEETSUIT_PEERS", "", env),
                       help="id=host:port,... for every voter, this node included")
        p.add_argument("--data", default=env_str("FLEETSUIT_DATA", "", env))
        p.add_argument("--metrics-port", type=int, default=env_int("FLEETSUIT_CONSENSUS_METRICS_PORT", 0, env))
        p.add_argument("--tick-ms", type=int, default=env_int("FLEETSUIT_TICK_MS", 25, env))
        p.add_argument("--election-ticks", type=int, default=env_int("FLEETSUIT_ELECTION_TICKS", 12, env))
        p.add_argument("--heartbeat-ticks", type=int, default=env_int("FLEETSUIT_HEARTBEAT_TICKS", 2, env))
        p.add_argument("--submit-timeout-ms", type=int,
                       default=env_int("FLEETSUIT_SUBMIT_TIMEOUT_MS", 5_000, env))
        p.add_argument("--log-level", default=env_str("FLEETSUIT_LOG_LEVEL", "INFO", env))
        p.add_argument("--key-file", default=env_str("FLEETSUIT_NODE_KEY_FILE", "", env),
                       help="Ed25519 block-signing key (PEM); created if missing; default DATA/node.key")
        a = p.parse_args(argv)
        peers = parse_peers(a.peers) if a.peers else ((a.node_id, a.listen),)
        config = cls(
            node_id=a.node_id,
            listen=a.listen,
            peers=peers,
            data_dir=a.data,
            cluster_id=a.cluster_id,
            metrics_port=a.metrics_port,
            tick_ms=a.tick_ms,
            election_ticks=a.election_ticks,
            heartbeat_ticks=a.heartbeat_ticks,
            submit_timeout_ms=a.submit_timeout_ms,
            log_level=a.log_level,
            key_file=a.key_file,
        )
        config.validate()
        return config
