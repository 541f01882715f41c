"""A synchronous in-memory network of RaftNodes for the unit tests (the
etcd-io/raft test network: deliver everything at once, with cut links).

``drain`` plays a node's runtime (install a received snapshot, save, send,
apply, advance); ``stabilize`` delivers messages until none are left. A
SNAPSHOT message is delivered whole (one chunk) and reported to its sender
with ``snapshot_status``. No clock: time is ``tick``.
"""

from __future__ import annotations

import random
from collections.abc import Iterable

from services.consensus.raft.memory import MemoryStorage
from services.consensus.raft.node import RaftNode
from services.consensus.raft.types import (
    Entry,
    Message,
    MessageType,
    RaftConfig,
    ReadState,
    Role,
    SnapshotMeta,
)

_MAX_ROUNDS = 1000


class RaftNet:
    def __init__(self, size: int = 3, seed: int = 0, **config: int | bool) -> None:
        self.ids = tuple(f"n{i}" for i in range(1, size + 1))
        self._config = config
        self.configs = {
            nid: RaftConfig(node_id=nid, peers=self.ids, **config)  # type: ignore[arg-type]
            for nid in self.ids
        }
        self.rng = random.Random(seed)
        self.storage = {nid: MemoryStorage() for nid in self.ids}
        self.nodes = {
            nid: RaftNode(self.configs[nid], random.Random(self.rng.getrandbits(32)))
            for nid in self.ids
        }
        self.applied: dict[str, list[Entry]] = {nid: [] for nid in self.ids}
        self.installed: dict[str, list[SnapshotMeta]] = {nid: [] for nid in self.ids}
        self.read_states: dict[str, list[ReadState]] = {nid: [] for nid in self.ids}
        self.cut: set[tuple[str, str]] = set()
        self.sent: list[Message] = []  # every message that left a node, in order

    def add_node(self, nid: str) -> RaftNode:
        """Start a new, empty node that joins as a learner of the current voters."""
        voters = tuple(sorted(next(iter(self.nodes.values())).voters))
        cfg = RaftConfig(node_id=nid, peers=voters, learners=(nid,), **self._config)  # type: ignore[arg-type]
        self.ids = (*self.ids, nid)
        self.configs[nid] = cfg
        self.storage[nid] = MemoryStorage()
        self.nodes[nid] = RaftNode(cfg, random.Random(self.rng.getrandbits(32)))
        self.applied[nid] = []
        self.installed[nid] = []
        self.read_states[nid] = []
        return self.nodes[nid]

    # -- faults ----------------------------------------------------------------------

    def isolate(self, nid: str) -> None:
        for other in self.ids:
            if other != nid:
                self.cut.add((nid, other))
                self.cut.add((other, nid))

    def heal(self) -> None:
        self.cut.clear()

    def restart(self, nid: str) -> None:
        hs, log = self.storage[nid].load()
        rng = random.Random(self.rng.getrandbits(32))
        snap = self.storage[nid].load_snapshot()
        meta = snap[0] if snap else None
        applied = meta.index if meta else 0
        self.nodes[nid] = RaftNode(self.configs[nid], rng, hs, log, applied=applied, snapshot=meta)
        self.applied[nid] = []

    def compact(self, nid: str, index: int | None = None) -> SnapshotMeta:
        """Snapshot ``nid`` at its applied index (or ``index``) and compact."""
        node = self.nodes[nid]
        at = node.status().applied_index if index is None else index
        meta = node.snapshot_meta(at)
        self.storage[nid].save_snapshot(meta, b"state@%d" % at)
        return node.compact(at)

    # -- runtime --------------------------------------------------------------------

    def drain(self, nid: str) -> list[Message]:
        """Handle every Ready of ``nid``; return the messages it sent."""
        node = self.nodes[nid]
        out: list[Message] = []
        for _ in range(_MAX_ROUNDS):
            if not node.has_ready():
                return out
            rd = node.ready()
            if rd.snapshot is not None:
                self.storage[nid].install_snapshot(rd.snapshot, b"state@%d" % rd.snapshot.index)
                self.installed[nid].append(rd.snapshot)
            self.storage[nid].save(rd.hard_state, rd.entries)
            out.extend(rd.messages)
            self.applied[nid].extend(rd.committed)
            self.read_states[nid].extend(rd.read_states)
            node.advance(rd)
        raise AssertionError("Ready did not settle")

    def deliver(self, msgs: Iterable[Message]) -> None:
        for m in msgs:
            delivered = (m.src, m.dst) not in self.cut and m.dst in self.nodes
            if delivered:
                self.nodes[m.dst].step(m)
            if m.type is MessageType.SNAPSHOT:
                self.nodes[m.src].snapshot_status(m.dst, delivered)

    def stabilize(self) -> None:
        for _ in range(_MAX_ROUNDS):
            msgs = [m for nid in self.ids for m in self.drain(nid)]
            self.sent.extend(msgs)
            if not msgs:
                return
            self.deliver(msgs)
        raise AssertionError("network did not stabilize")

    def tick(self, nid: str, times: int = 1) -> None:
        for _ in range(times):
            self.nodes[nid].tick()

    def tick_all(self, times: int = 1) -> None:
        for _ in range(times):
            for nid in self.ids:
                self.nodes[nid].tick()
            self.stabilize()

    def elect(self, nid: str) -> RaftNode:
        """Time ``nid`` out until it campaigns, then let the election finish."""
        node = self.nodes[nid]
        for _ in range(2 * self.configs[nid].election_ticks):
            if node.role is not Role.FOLLOWER:
                break
            node.tick()
        self.stabilize()
        assert node.role is Role.LEADER, f"{nid} did not win: {node.status()}"
        return node

    def propose(self, nid: str, *payloads: bytes) -> list[int]:
        indexes = self.nodes[nid].propose(list(payloads))
        self.stabilize()
        self.spread_commit()
        return indexes

    def spread_commit(self) -> None:
        """A leader tells idle followers a new commit index at its next tick
        (or with its next append): tick the leaders once and let it spread."""
        for nid in self.ids:
            if self.nodes[nid].role is Role.LEADER:
                self.nodes[nid].tick()
        self.stabilize()

    def of_type(self, t: MessageType) -> list[Message]:
        return [m for m in self.sent if m.type is t]
