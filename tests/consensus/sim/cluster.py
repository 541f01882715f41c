"""A whole Raft cluster on one thread, a fake clock and a fake network.

The harness plays each node's runtime exactly as the ``Ready`` contract says:
persist (``MemoryStorage.save``), then send, then apply, then ``advance``. A
crash discards the ``RaftNode`` and everything not saved; it can strike
between those steps. A restart rebuilds the node from its storage with
``applied=0``, so its application state is rebuilt by re-applying the log.
Every step feeds the ``InvariantChecker``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from services.consensus.raft.memory import MemoryStorage, PrefixInspector
from services.consensus.raft.node import RaftNode
from services.consensus.raft.roles import RequestKey
from services.consensus.raft.types import Entry, ProposalDropped, RaftConfig, Role

from .invariants import InvariantChecker
from .network import Network

# Where a crash may strike while a node handles a Ready.
BEFORE_SAVE, BEFORE_SEND, BEFORE_APPLY = 0, 1, 2
_MAX_READY_ROUNDS = 8


@dataclass
class SimNode:
    node_id: str
    config: RaftConfig
    storage: MemoryStorage = field(default_factory=MemoryStorage)
    raft: RaftNode | None = None
    crash_at: int | None = None  # crash while handling the next Ready
    reported: tuple[int, int] = (0, 0)  # (term, commit) last reported as leader


@dataclass
class Request:
    payload: bytes
    node: str = ""  # the node it was last proposed to
    retry_at: int = 0


class Cluster:
    def __init__(
        self,
        size: int,
        seed: int,
        *,
        election_ticks: int = 10,
        heartbeat_ticks: int = 2,
        max_entries_per_append: int = 4,
        max_inflight_appends: int = 4,
        retry_ticks: int = 30,
    ) -> None:
        self.rng = random.Random(seed)
        self.now = 0
        ids = tuple(f"n{i}" for i in range(1, size + 1))
        self.nodes: dict[str, SimNode] = {}
        for nid in ids:
            cfg = RaftConfig(
                node_id=nid,
                peers=ids,
                election_ticks=election_ticks,
                heartbeat_ticks=heartbeat_ticks,
                max_entries_per_append=max_entries_per_append,
                max_bytes_per_append=64,
                max_inflight_appends=max_inflight_appends,
            )
            self.nodes[nid] = SimNode(nid, cfg)
        self.checker = InvariantChecker(ids)
        self.network = Network(random.Random(self.rng.getrandbits(64)))
        self.retry_ticks = retry_ticks
        self.pending: dict[bytes, Request] = {}
        self.acked: dict[bytes, int] = {}
        self._next_request = 0
        for nid in ids:
            self.start(nid)

    # -- node lifecycle ----------------------------------------------------------

    def start(self, nid: str) -> None:
        node = self.nodes[nid]
        hard_state, log = node.storage.load()
        rng = random.Random(self.rng.getrandbits(64))
        node.raft = RaftNode(node.config, rng, hard_state, log, applied=0)
        node.crash_at = None
        node.reported = (0, 0)
        self.checker.restarted(nid)

    def crash(self, nid: str) -> None:
        node = self.nodes[nid]
        node.raft = None
        node.crash_at = None

    def live(self) -> list[SimNode]:
        return [n for n in self.nodes.values() if n.raft is not None]

    def leader(self) -> SimNode | None:
        """The live leader of the highest term, if any."""
        best: tuple[int, SimNode] | None = None
        for n in self.live():
            assert n.raft is not None
            if n.raft.role is Role.LEADER and (best is None or best[0] < n.raft.term):
                best = (n.raft.term, n)
        return best[1] if best else None

    # -- one tick ------------------------------------------------------------------

    def tick(self) -> None:
        self.now += 1
        for m in self.network.due(self.now):
            node = self.nodes[m.dst]
            if node.raft is not None:
                node.raft.step(m)
                self._handle_ready(node)
        for node in self.live():
            assert node.raft is not None
            node.raft.tick()
            self._handle_ready(node)
        self._drive_clients()

    def _handle_ready(self, node: SimNode) -> None:
        raft = node.raft
        assert raft is not None
        for _ in range(_MAX_READY_ROUNDS):
            if not raft.has_ready():
                break
            rd = raft.ready()
            if node.crash_at == BEFORE_SAVE:
                self.crash(node.node_id)
                return
            node.storage.save(rd.hard_state, rd.entries)
            self.checker.saved(node.node_id, rd.entries)
            if node.crash_at == BEFORE_SEND:
                self.crash(node.node_id)
                return
            self.network.send(self.now, rd.messages)
            if node.crash_at == BEFORE_APPLY:
                self.crash(node.node_id)
                return
            self.checker.applied(node.node_id, rd.committed)
            self._acknowledge(node.node_id, rd.committed)
            raft.advance(rd)
        else:
            raise AssertionError(f"{node.node_id}: Ready did not settle")
        self._observe(node)

    def _observe(self, node: SimNode) -> None:
        raft = node.raft
        assert raft is not None
        if raft.role is Role.LEADER:
            self.checker.leader(node.node_id, raft.term)
            if node.reported != (raft.term, raft.commit_index):
                node.reported = (raft.term, raft.commit_index)
                self.checker.leader_committed(node.node_id, raft.term, raft.commit_index)
        self.checker.check_acknowledged_durable()

    # -- clients ---------------------------------------------------------------------

    def submit(self) -> bytes:
        self._next_request += 1
        payload = PrefixInspector.encode(RequestKey("sim", self._next_request), b"x")
        self.pending[payload] = Request(payload)
        return payload

    def _drive_clients(self) -> None:
        live = self.live()
        if not live:
            return
        for req in list(self.pending.values()):
            if req.retry_at > self.now or req.payload not in self.pending:
                continue
            node = self.rng.choice(live)
            if node.raft is None:  # crashed earlier in this loop
                continue
            req.node = node.node_id
            try:
                node.raft.propose([req.payload])
            except ProposalDropped:
                req.retry_at = self.now + 1
                continue
            req.retry_at = self.now + self.retry_ticks
            self._handle_ready(node)

    def _acknowledge(self, nid: str, entries: list[Entry]) -> None:
        if not self.pending:
            return
        for e in entries:
            req = self.pending.get(e.data)
            if req is not None and req.node == nid:
                # The node the client talked to applied it: the client hears back.
                del self.pending[e.data]
                self.acked[e.data] = e.index
                self.checker.acknowledged(e.data, e.index)
