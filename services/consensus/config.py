"""Configuration of one consensus process, declared once
(``fleetsuit.settings``): every flag, its environment variable
(``FLEETSUIT_CONSENSUS_*``; the node's identity and data directory are
shared by the node's services: ``FLEETSUIT_NODE_ID``, ``FLEETSUIT_CLUSTER_ID``,
``FLEETSUIT_PEERS``, ``FLEETSUIT_DATA``), its default and its help come from
the fields below. Flags override the environment, which overrides the
defaults. Derived values are properties, computed here only."""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from fleetsuit.logs import LOG_FORMATS
from fleetsuit.settings import ConfigError, add_arguments, from_sources, setting

from .anchors import SPEC_SEPARATOR, AnchorError, AnchorSpec, load_anchors, parse_anchor_specs
from .ledger.entries import Anchor
from .raft.types import RaftConfig
from .runtime.config import RuntimeConfig

ENV_PREFIX = "FLEETSUIT_CONSENSUS_"
ANCHOR_FLAG = "--trust-anchor"
ANCHOR_METAVAR = "PATH[:components=A,B][:classes=X,Y]"
MIB = 1024 * 1024


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
    node_id: str = setting("", "this node's id, unique in the cluster", env="FLEETSUIT_NODE_ID")
    listen: str = setting("127.0.0.1:7101", "HOST:PORT to serve the Ledger and RaftPeer APIs on")
    peers: tuple[tuple[str, str], ...] = setting(
        (), "id=host:port,... for every voter, this node included (default: this node alone)",
        env="FLEETSUIT_PEERS", parse=parse_peers, metavar="ID=HOST:PORT,...",
    )
    data_dir: str = setting("", "data directory (RocksDB, snapshots, node key)", env="FLEETSUIT_DATA", flag="--data")
    cluster_id: str = setting("fleetsuit", "the cluster's id; a data directory of another cluster is refused",
                              env="FLEETSUIT_CLUSTER_ID")
    metrics_port: int = setting(0, "port of the Prometheus /metrics endpoint (0: none)")
    metrics_host: str = setting("", "address of the /metrics endpoint (default: the listen host)")
    tick_ms: int = setting(25, "Raft tick, in milliseconds")
    election_ticks: int = setting(12, "election timeout in ticks (randomized up to twice that)")
    heartbeat_ticks: int = setting(2, "heartbeat interval in ticks")
    submit_timeout_ms: int = setting(5_000, "default deadline of a submission, in milliseconds")
    max_entry_bytes: int = setting(1_536 * 1024, "largest ledger entry accepted (etcd's request limit)")
    max_batch_entries: int = setting(1_024, "ledger entries per Raft entry at most")
    max_batch_bytes: int = setting(4 * MIB, "bytes per Raft entry at most")
    max_pending_submissions: int = setting(
        50_000, "submissions waiting for commit on this node; more are refused (OVERLOADED)"
    )
    key_file: str = setting("", "Ed25519 block-signing key (PEM); created if missing (default: DATA/node.key)")
    compact_every_entries: int = setting(
        10_000, "compact the Raft log every N applied entries (no file is written: the applied ledger "
        "is the snapshot; a file is made only when a follower needs one)",
    )
    compact_keep_entries: int = setting(1_000, "log entries kept behind the compaction point for "
                                        "followers only a little behind")
    compact_log_bytes: int = setting(128 * MIB, "also compact once the Raft log held in memory reaches "
                                     "this many bytes")
    snapshot_chunk_bytes: int = setting(MIB, "InstallSnapshot chunk size")
    max_snapshot_bytes: int = setting(4 * 1024 * MIB, "largest snapshot file accepted from a leader")
    join: bool = setting(False, "join a running cluster as a learner (peers = its voters); "
                         "add it first with `fleetsuit cluster add`")
    manifest_endpoint: str = setting(
        "", "HOST:PORT of this node's manifest service, which validates a release's envelope before "
        "this node proposes it (none: that check is skipped)",
    )
    dht_endpoint: str = setting(
        "", "HOST:PORT of this node's dht service, asked whether a release's payload is stored before "
        "this node proposes it (none: that check is skipped)",
    )
    gateway_endpoint: str = setting("", "HOST:PORT of this node's gateway service (only advertised in Status)")
    trust_anchors: tuple[AnchorSpec, ...] = setting(
        (), "a PEM public key (Ed25519 or P-256) allowed to sign releases, optionally only for the "
        "components and device classes named; repeat the flag for more (in the variable, separate "
        "them with ';'). Recorded in the ledger once, when it has none; read at startup",
        flag=ANCHOR_FLAG, parse=parse_anchor_specs, metavar=ANCHOR_METAVAR, repeat=SPEC_SEPARATOR,
    )
    unsafe_skip_release_checks: bool = setting(
        False, "TESTS ONLY: propose release entries without this node's checks (ledger state, "
        "manifest, dht), to show that every node refuses a bad one when applying it",
    )
    log_level: str = setting("INFO", "log level (DEBUG, INFO, WARNING, ERROR)")
    log_format: str = setting("text", "log lines as text or json")

    def validate(self) -> None:
        ids = [p[0] for p in self.voters]
        if not self.node_id:
            raise ConfigError("node_id is required (--node-id or FLEETSUIT_NODE_ID)")
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
            raise ConfigError("data_dir is required (--data or FLEETSUIT_DATA)")
        if self.compact_every_entries < 1:
            raise ConfigError("compact_every_entries must be >= 1")
        if not 0 <= self.compact_keep_entries < self.compact_every_entries:
            raise ConfigError("compact_keep_entries must be >= 0 and below compact_every_entries")
        if self.compact_log_bytes < MIB:
            raise ConfigError("compact_log_bytes must be at least 1 MiB")
        if not 1024 <= self.snapshot_chunk_bytes <= 16 * MIB:
            raise ConfigError("snapshot_chunk_bytes must be between 1 KiB and 16 MiB")
        if self.log_format not in LOG_FORMATS:
            raise ConfigError(f"log_format must be one of {', '.join(LOG_FORMATS)}")
        if ":" not in self.listen:
            raise ConfigError(f"listen {self.listen!r} is not HOST:PORT")
        for name in ("manifest_endpoint", "dht_endpoint", "gateway_endpoint"):
            value = getattr(self, name)
            if value and ":" not in value:
                raise ConfigError(f"{name} {value!r} is not HOST:PORT")
        self.anchors()

    # ------------------------------------------------------------ derived values

    @property
    def voters(self) -> tuple[tuple[str, str], ...]:
        """The peers given, or else a cluster of one: this node at ``listen``."""
        return self.peers or ((self.node_id, self.listen),)

    @property
    def key_path(self) -> str:
        return self.key_file or f"{self.data_dir}/node.key"

    @property
    def peer_addresses(self) -> dict[str, str]:
        return dict(self.voters)

    def services(self) -> dict[str, str]:
        """The node's services and the addresses clients reach them at (the
        Status answer): this consensus process, and the others configured."""
        out = {"consensus": self.peer_addresses.get(self.node_id, self.listen)}
        for name, address in (("dht", self.dht_endpoint), ("manifest", self.manifest_endpoint),
                              ("gateway", self.gateway_endpoint)):
            if address:
                out[name] = address
        return out

    def anchors(self) -> tuple[Anchor, ...]:
        """The configured trust anchors, their files read (sorted by key id);
        ConfigError naming a file that is missing or not a usable key."""
        try:
            return load_anchors(self.trust_anchors)
        except AnchorError as exc:
            raise ConfigError(f"trust_anchors: {exc}") from None

    @property
    def tick_s(self) -> float:
        return self.tick_ms / 1000

    @property
    def election_timeout_s(self) -> float:
        return self.tick_s * self.election_ticks

    @property
    def submit_timeout_s(self) -> float:
        return self.submit_timeout_ms / 1000

    @property
    def metrics_address(self) -> str:
        return self.metrics_host or self.listen.rsplit(":", 1)[0]

    def raft(self) -> RaftConfig:
        ids = tuple(p[0] for p in self.voters)
        config = RaftConfig(
            node_id=self.node_id,
            # A joining node starts as a learner: it never campaigns, so its
            # bootstrap view of the voters does no harm until it learns the real one.
            peers=tuple(i for i in ids if i != self.node_id) if self.join else ids,
            learners=(self.node_id,) if self.join else (),
            election_ticks=self.election_ticks,
            heartbeat_ticks=self.heartbeat_ticks,
        )
        config.validate()
        return config

    def runtime(self) -> RuntimeConfig:
        return RuntimeConfig(
            raft=self.raft(),
            cluster_id=self.cluster_id,
            tick_s=self.tick_s,
            max_batch_entries=self.max_batch_entries,
            max_batch_bytes=self.max_batch_bytes,
            max_pending=self.max_pending_submissions,
            compact_every_entries=self.compact_every_entries,
            compact_keep_entries=self.compact_keep_entries,
            compact_log_bytes=self.compact_log_bytes,
            snapshot_chunk_bytes=self.snapshot_chunk_bytes,
        )

    @classmethod
    def from_args(
        cls, argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None
    ) -> ConsensusConfig:
        """Flags, then the environment, then the defaults; validated. A usage
        error exits with status 2 (argparse); a bad value raises ConfigError."""
        parser = argparse.ArgumentParser(
            prog="python -m services.consensus", description="One consensus process of a fleetsuit node.",
        )
        add_arguments(parser, cls, ENV_PREFIX)
        return from_sources(cls, parser.parse_args(argv), env, ENV_PREFIX)
