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
    # Submissions waiting for commit on this node; beyond it, OVERLOADED.
    max_pending_submissions: int = 50_000
    log_level: str = "INFO"
    key_file: str = ""  # the node's block-signing key; default DATA/node.key
    # Raft §7: compact the log every this many applied entries, keeping this
    # many behind the applied index (a tail for followers only a little
    # behind); no file is written, the applied ledger is the snapshot ...
    snapshot_entries: int = 10_000
    snapshot_keep_entries: int = 1_000
    # ... or once the log held in memory reaches this many bytes (large
    # entries), keeping a tail of at most half of them: bounds a node's
    # memory whatever the entries' size.
    compact_log_bytes: int = 128 * 1024 * 1024
    snapshot_chunk_bytes: int = 1024 * 1024  # InstallSnapshot chunk size
    max_snapshot_bytes: int = 4 * 1024 * 1024 * 1024
    # Join a running cluster: start as a learner; peers = its current voters.
    join: bool = False
    extra: Mapping[str, str] = field(default_factory=dict)

    def validate(self) -> None:
        ids = [p[0] for p in self.peers]
        if not self.node_id:
            raise ConfigError("node_id is required")
        if self.node_id not in ids and not self.join:
            raise ConfigError(f"node_id {self.node_id!r} is not among peers {ids}")
        if self.join and not [i for i in ids if i != self.node_id]:
            raise ConfigError("join needs peers: the voters of the cluster to join")
        if len(set(ids)) != len(ids):
            raise ConfigError(f"peers has duplicate ids: {ids}")
        if self.tick_ms < 1:
            raise ConfigError("tick_ms must be >= 1")
        if self.election_ticks <= self.heartbeat_ticks:
            raise ConfigError("election_ticks must be greater than heartbeat_ticks")
        if self.submit_timeout_ms < 1:
            raise ConfigError("submit_timeout_ms must be >= 1")
        if self.max_pending_submissions < 1:
            raise ConfigError("max_pending_submissions must be >= 1")
        if not self.data_dir:
            raise ConfigError("data_dir is required")
        if self.snapshot_entries < 1:
            raise ConfigError("snapshot_entries must be >= 1")
        if not 0 <= self.snapshot_keep_entries < self.snapshot_entries:
            raise ConfigError("snapshot_keep_entries must be >= 0 and below snapshot_entries")
        if self.compact_log_bytes < 1024 * 1024:
            raise ConfigError("compact_log_bytes must be at least 1 MiB")
        if not 1024 <= self.snapshot_chunk_bytes <= 16 * 1024 * 1024:
            raise ConfigError("snapshot_chunk_bytes must be between 1 KiB and 16 MiB")

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
        p.add_argument("--max-pending-submissions", type=int,
                       default=env_int("FLEETSUIT_MAX_PENDING_SUBMISSIONS", 50_000, env),
                       help="submissions waiting for commit on this node; more are refused (OVERLOADED)")
        p.add_argument("--log-level", default=env_str("FLEETSUIT_LOG_LEVEL", "INFO", env))
        p.add_argument("--key-file", default=env_str("FLEETSUIT_NODE_KEY_FILE", "", env),
                       help="Ed25519 block-signing key (PEM); created if missing; default DATA/node.key")
        p.add_argument("--snapshot-entries", type=int,
                       default=env_int("FLEETSUIT_SNAPSHOT_ENTRIES", 10_000, env),
                       help="compact the Raft log every N applied entries (no file is written: "
                            "the applied ledger is the snapshot; a file is made when a follower needs one)")
        p.add_argument("--snapshot-keep-entries", type=int,
                       default=env_int("FLEETSUIT_SNAPSHOT_KEEP_ENTRIES", 1_000, env),
                       help="log entries kept behind a snapshot for slightly lagging followers")
        p.add_argument("--compact-log-bytes", type=int,
                       default=env_int("FLEETSUIT_COMPACT_LOG_BYTES", 128 * 1024 * 1024, env),
                       help="also compact once the Raft log held in memory reaches this many bytes")
        p.add_argument("--snapshot-chunk-bytes", type=int,
                       default=env_int("FLEETSUIT_SNAPSHOT_CHUNK_BYTES", 1024 * 1024, env))
        p.add_argument("--join", action="store_true",
                       help="join a running cluster as a learner (peers = its voters); "
                            "add it first with `fleetsuit cluster add`")
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
            max_pending_submissions=a.max_pending_submissions,
            log_level=a.log_level,
            key_file=a.key_file,
            snapshot_entries=a.snapshot_entries,
            snapshot_keep_entries=a.snapshot_keep_entries,
            snapshot_chunk_bytes=a.snapshot_chunk_bytes,
            compact_log_bytes=a.compact_log_bytes,
            join=a.join,
        )
        config.validate()
        return config
