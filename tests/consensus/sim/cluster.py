"""A whole Raft cluster on one thread, a fake clock and a fake network.

The harness plays each node's runtime exactly as the ``Ready`` contract says:
persist (``MemoryStorage.save``), then send, then apply, then ``advance``. A
crash discards the ``RaftNode`` and everything not saved; it can strike
between those steps. A restart rebuilds the node from its storage with
``applied=0``, so its application state is rebuilt by re-applying the log,
or from its snapshot when it has one.

The application is a digest chain over the applied entries; its snapshot is
that digest. Nodes compact at random applied indexes; an outgoing SNAPSHOT
message is streamed as chunks through the lossy network (the receiver steps
the last chunk only if it holds them all) and reported with
``snapshot_status(peer, True)`` once sent, as a runtime whose stream finished
would. Clients issue ReadIndex reads; a read's index must cover every write
acknowledged before it started. Every step feeds the ``InvariantChecker``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace

from services.consensus.ledger.keys import RequestKey
from services.consensus.raft.membership import ConfChange, ConfChangeError, ConfChangeKind
from services.consensus.raft.memory import MemoryStorage, PrefixInspector
from services.consensus.raft.node import RaftNode
from services.consensus.raft.types import (
    Entry,
    Message,
    MessageType,
    ProposalDropped,
    RaftConfig,
    Ready,
    Role,
)

from .invariants import InvariantChecker, InvariantViolation, _chain
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
    app_index: int = 0  # the application: index and digest chain of what it applied
    app_digest: int = 0
    staged: dict[tuple[str, int, int], dict[int, bytes]] = field(default_factory=dict)
    received: dict[tuple[int, int], bytes] = field(default_factory=dict)  # complete snapshots


@dataclass
class Read:
    context: bytes
    node: str
    min_index: int  # the highest acknowledged write when the read started
    expires_at: int


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
        promote_lag_entries: int = 4,
        snapshot_chunk_bytes: int = 8,
        lease_reads: bool = False,
        hold_small_appends: bool = True,
    ) -> None:
        self.rng = random.Random(seed)
        self.now = 0
        ids = tuple(f"n{i}" for i in range(1, size + 1))
        self._config = {
            "election_ticks": election_ticks,
            "heartbeat_ticks": heartbeat_ticks,
            "max_entries_per_append": max_entries_per_append,
            "max_bytes_per_append": 64,
            "max_inflight_appends": max_inflight_appends,
            "promote_lag_entries": promote_lag_entries,
            "hold_small_appends": hold_small_appends,
        }
        if lease_reads:
            self._config["lease_reads"] = True
        self.nodes: dict[str, SimNode] = {}
        for nid in ids:
            cfg = RaftConfig(node_id=nid, peers=ids, **self._config)  # type: ignore[arg-type]
            self.nodes[nid] = SimNode(nid, cfg)
        self.voters: tuple[str, ...] = ids  # of the highest-term leader seen
        self.learners: frozenset[str] = frozenset()
        self._leader_term = 0
        self.snapshot_chunk_bytes = snapshot_chunk_bytes
        self.reads: dict[bytes, Read] = {}
        self.reads_done = 0
        self._next_read = 0
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
        snap = node.storage.load_snapshot()
        meta, data = snap if snap else (None, b"0")
        node.app_index, node.app_digest = (meta.index if meta else 0), int(data)
        node.raft = RaftNode(
            node.config, rng, hard_state, log, applied=node.app_index, snapshot=meta
        )
        node.crash_at = None
        node.reported = (0, 0)
        node.staged, node.received = {}, {}
        self.checker.restarted(nid, node.app_index, node.app_digest)

    def add_node(self, nid: str) -> None:
        """A new, empty server that will join as a learner of the current voters."""
        cfg = RaftConfig(node_id=nid, peers=self.voters, learners=(nid,), **self._config)  # type: ignore[arg-type]
        self.nodes[nid] = SimNode(nid, cfg)
        self.checker.add_node(nid)
        self.start(nid)

    @property
    def members(self) -> frozenset[str]:
        """Voters and learners of the highest-term leader seen."""
        return frozenset(self.voters) | self.learners

    def change_membership(self, change: ConfChange) -> bool:
        """Ask the leader for ``change``; a server being added is started."""
        leader = self.leader()
        if leader is None or leader.raft is None:
            return False
        try:
            leader.raft.propose_conf_change(change)
        except (ConfChangeError, ProposalDropped):
            return False
        if change.kind is ConfChangeKind.ADD_LEARNER:
            self.add_node(change.node_id)
        self._handle_ready(leader)
        return True

    def compact(self, nid: str) -> None:
        """The node snapshots its application at its applied index."""
        node = self.nodes[nid]
        raft = node.raft
        if raft is None or node.app_index <= raft.status().snapshot_index:
            return
        meta = raft.snapshot_meta(node.app_index)
        node.storage.save_snapshot(meta, str(node.app_digest).encode())
        raft.compact(node.app_index)

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
            if node.raft is not None and self._receive(node, m):
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
            if rd.snapshot is not None:
                self._install(node, rd)
            node.storage.save(rd.hard_state, rd.entries)
            self.checker.saved(node.node_id, rd.entries)
            if node.crash_at == BEFORE_SEND:
                self.crash(node.node_id)
                return
            streamed = self._send(node, rd.messages)
            if node.crash_at == BEFORE_APPLY:
                self.crash(node.node_id)
                return
            self._apply(node, rd.committed)
            self._acknowledge(node.node_id, rd.committed)
            raft.advance(rd)
            for peer in streamed:
                raft.snapshot_status(peer, True)
            self._take_reads(node, rd)
        else:
            raise AssertionError(f"{node.node_id}: Ready did not settle")
        self._observe(node)

    def _observe(self, node: SimNode) -> None:
        raft = node.raft
        assert raft is not None
        if raft.role is Role.LEADER:
            self.checker.leader(node.node_id, raft.term)
            if raft.term >= self._leader_term:
                self._leader_term = raft.term
                self.voters = tuple(sorted(raft.voters))
                self.learners = raft.learners
            if node.reported != (raft.term, raft.commit_index):
                node.reported = (raft.term, raft.commit_index)
                self.checker.leader_committed(node.node_id, raft.term, raft.commit_index)
        self.checker.check_acknowledged_durable(self.voters)

    # -- the runtime's part in snapshots ---------------------------------------------

    def _send(self, node: SimNode, messages: list[Message]) -> list[str]:
        """Send; stream each SNAPSHOT as chunks. Returns the peers streamed to."""
        plain = [m for m in messages if m.type is not MessageType.SNAPSHOT]
        self.network.send(self.now, plain)
        streamed: list[str] = []
        for m in messages:
            if m.type is not MessageType.SNAPSHOT:
                continue
            snap = node.storage.load_snapshot()
            assert snap is not None and m.snapshot == snap[0], "leader sent a snapshot it lacks"
            data, size = snap[1], self.snapshot_chunk_bytes
            offsets = list(range(0, len(data), size)) or [0]
            chunks = [
                replace(m, offset=o, data=data[o : o + size], done=o == offsets[-1])
                for o in offsets
            ]
            self.network.send(self.now, chunks)
            streamed.append(m.dst)
        return streamed

    def _receive(self, node: SimNode, m: Message) -> bool:
        """Stage snapshot chunks; True when ``m`` should be stepped."""
        if m.type is not MessageType.SNAPSHOT or m.snapshot is None:
            return True
        key = (m.src, m.snapshot.index, m.snapshot.term)
        chunks = node.staged.setdefault(key, {})
        chunks[m.offset] = m.data
        if not m.done:
            return False
        pos = 0  # every chunk up to the last one is here, back to back
        while pos in chunks and pos < m.offset and chunks[pos]:
            pos += len(chunks[pos])
        if pos != m.offset:
            return False
        node.received[(m.snapshot.index, m.snapshot.term)] = b"".join(
            chunks[o] for o in sorted(chunks) if o <= m.offset
        )
        return True

    def _install(self, node: SimNode, rd: Ready) -> None:
        meta = rd.snapshot
        assert meta is not None
        data = node.received.get((meta.index, meta.term))
        if data is None:
            raise InvariantViolation(f"{node.node_id}: Ready.snapshot {meta} was never received")
        node.storage.install_snapshot(meta, data)
        node.app_index, node.app_digest = meta.index, int(data)
        node.staged, node.received = {}, {}
        self.checker.installed(node.node_id, meta.index, node.app_digest)

    def _apply(self, node: SimNode, entries: list[Entry]) -> None:
        self.checker.applied(node.node_id, entries)
        for e in entries:
            node.app_digest = _chain(node.app_digest, e)
            node.app_index = e.index

    # -- linearizable reads -----------------------------------------------------------

    def read(self) -> None:
        live = self.live()
        if not live:
            return
        node = self.rng.choice(live)
        assert node.raft is not None
        self._next_read += 1
        ctx = b"read-%d" % self._next_read
        try:
            node.raft.read_index(ctx)
        except ProposalDropped:
            return
        self.reads[ctx] = Read(ctx, node.node_id, self.checker.max_acknowledged, self.now + 40)
        self._handle_ready(node)

    def _take_reads(self, node: SimNode, rd: Ready) -> None:
        for rs in rd.read_states:
            read = self.reads.pop(rs.context, None)
            if read is None or read.node != node.node_id:
                continue  # a duplicate answer, or one for a read that timed out
            if rs.index < read.min_index:
                raise InvariantViolation(
                    f"linearizability: read {rs.context!r} at index {rs.index} misses the write "
                    f"acknowledged at {read.min_index} before it started"
                )
            self.reads_done += 1

    def expire_reads(self) -> None:
        for ctx in [c for c, r in self.reads.items() if r.expires_at <= self.now]:
            del self.reads[ctx]  # the runtime's read timeout

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
