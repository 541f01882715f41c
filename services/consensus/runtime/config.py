"""The one configuration object of a consensus runtime: the Raft core's
settings and the runtime's own, with every derived duration computed here
and nowhere else. Built from the service config by
``ConsensusConfig.runtime()``; the simulation builds it directly."""

from __future__ import annotations

from dataclasses import dataclass

from ..raft.types import RaftConfig


@dataclass(frozen=True, slots=True)
class RuntimeConfig:
    raft: RaftConfig
    cluster_id: str = ""
    tick_s: float = 0.025
    max_batch_entries: int = 1_024  # ledger entries per Raft entry
    max_batch_bytes: int = 4 * 1024 * 1024  # bytes per Raft entry
    max_pending: int = 50_000  # submissions waiting for commit; more are OVERLOADED
    # Raft §7: compact every this many applied entries, keeping this many
    # behind the applied index (a tail for followers only a little behind)...
    compact_every_entries: int = 10_000
    compact_keep_entries: int = 1_000
    # ... or once the log held in memory reaches this many bytes.
    compact_log_bytes: int = 128 * 1024 * 1024
    snapshot_chunk_bytes: int = 1024 * 1024  # InstallSnapshot chunk size
    sign_interval_s: float = 0.05  # block signatures pushed at most this often per peer
    certify_interval_s: float = 0.25  # key registration and stalled-certificate checks
    pull_after_rounds: int = 2  # pull signatures once certification stalled this many checks

    @property
    def node_id(self) -> str:
        return self.raft.node_id

    @property
    def election_timeout_s(self) -> float:
        """The shortest election timeout."""
        return self.tick_s * self.raft.election_ticks

    @property
    def stale_after_s(self) -> float:
        """Two election timeouts: a proposal or a read unanswered this long is
        asked again (it may have been lost with a leader)."""
        return 2 * self.election_timeout_s
