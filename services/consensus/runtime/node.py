"""The consensus node: the asyncio runtime that owns one Raft core (STYLE 3:
one task touches the core, so no locks).

Inputs — ticks, messages from peers, submissions, calls that need the core
(membership changes, transfers) — are queued, and one loop drains them and
handles each ``Ready`` in the contract's order:

1. **persist** the hard state and entries (one synced batch: the group
   commit). A leader sends its appends first and syncs off the loop while
   they travel (Raft §10.2.1; its own vote counts only once durable);
2. **send** the messages (a SNAPSHOT message starts a snapshot stream);
3. **apply** the committed entries to the ledger machine and answer the
   submissions waiting for them;
4. **advance** the core.

Everything else lives beside it, behind small interfaces: ``submissions.py``
(waiting, deadlines, proposing again), ``compaction.py`` (compaction,
snapshots sent and installed), ``certification.py`` (block signatures and
certificates), ``reads.py`` (ReadIndex reads), ``membership.py`` (members
and their addresses). The ports (``ports.py``) are
injected: the same node runs over gRPC and RocksDB in production and over a
fake network and in-memory storage in the whole-node simulation.

Membership (``membership.py``): the address of every member comes with the
CONFIG entry that added it; the transport and the certifier follow the
configuration in effect, never the static peer list.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from ..errors import (
    ChangePending,
    MembershipRefused,
    NotLeader,
    OutcomeUnknown,
    ShuttingDown,
    StorageError,
)
from ..ledger.block import BlockData
from ..ledger.certify import NodeKey
from ..ledger.entries import BlockSignature
from ..ledger.keys import RequestKey
from ..ledger.machine import Applied, LedgerMachine
from ..metrics import ConsensusMetrics
from ..raft.membership import (
    ConfChange,
    ConfChangeInvalid,
    ConfChangePending,
)
from ..raft.node import RaftNode
from ..raft.types import Entry, Message, MessageType, ProposalDropped, Role
from .certification import CertificationLoop, Certifier
from .compaction import Compaction
from .config import RuntimeConfig
from .membership import Membership
from .ports import NodeStore, Offload, PeerTransport, SnapshotStore
from .reads import ReadTracker
from .submissions import Submissions, Waiter

log = logging.getLogger(__name__)

__all__ = ["ConsensusNode", "NodeStatus", "Waiter"]


@dataclass(frozen=True, slots=True)
class NodeStatus:
    """What a node reports of itself (the Status API, metrics, tests)."""

    node_id: str
    role: str
    term: int
    leader_id: str
    commit_index: int
    applied_index: int
    last_log_index: int
    block_height: int
    voters: tuple[str, ...]
    learners: tuple[str, ...]
    snapshot_index: int
    pending_conf_index: int


class ConsensusNode:
    def __init__(
        self,
        config: RuntimeConfig,
        store: NodeStore,
        transport: PeerTransport,
        metrics: ConsensusMetrics,
        rng: random.Random,
        *,
        node_key: NodeKey | None = None,
        snapshots: SnapshotStore | None = None,
        addresses: Mapping[str, str] | None = None,
        on_fatal: Callable[[BaseException], None] | None = None,
        offload: Offload = asyncio.to_thread,
    ) -> None:
        self.config = config
        self._store = store
        self._transport = transport
        self._metrics = metrics
        self._offload = offload
        self._on_fatal = on_fatal
        self._node_key = node_key
        self._aio_loop: asyncio.AbstractEventLoop | None = None
        self._new_blocks: list[BlockData] = []
        self.membership = Membership(config.node_id, store, transport, metrics, addresses)
        self.machine = LedgerMachine(
            store, on_block=self._new_blocks.append, cluster_id=config.cluster_id,
            on_config=self.membership.applied,
        )
        start = Compaction.restore_log_start(store, snapshots, metrics)
        hard_state, entries = store.load()
        self._core = RaftNode(
            config.raft, rng, hard_state=hard_state, log=entries, applied=self.machine.applied_index(),
            snapshot=start,
        )
        self.compaction = Compaction(
            config, self._core, store, snapshots, transport, metrics, offload, self._wake_up, start
        )
        self.submissions = Submissions(config, store, metrics, self._now)
        self._reads = ReadTracker(config.stale_after_s, self._now)
        # Peer addresses: the static ones, those recorded by applied CONFIG
        # entries, and those of CONFIG entries in the log not yet applied.
        self.membership.learn(entries)
        self.certification: CertificationLoop | None = None
        self._build_certifier()
        self._calls: list[tuple[Callable[[], Any], asyncio.Future[Any]]] = []
        self._applied_event = asyncio.Event()
        self._inbox: list[Message] = []
        self._ticks = 0
        self._skipped_ticks = 0
        self._wake = asyncio.Event()
        self._leader = ""
        self._stopped = False
        # Set, then replaced, at each new block: wakes WatchBlocks waiters
        # without a task per applied entry.
        self._block_event = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.fatal: BaseException | None = None
        self._bind_gauges()

    @property
    def snapshots(self) -> SnapshotStore | None:
        return self.compaction.snapshots

    @property
    def certifier(self) -> Certifier | None:
        return self.certification.certifier if self.certification is not None else None

    def _now(self) -> float:
        # The event loop's clock: monotonic in production, virtual in the
        # simulation. (Kept: asyncio.get_running_loop() checks the pid on
        # every call, a measurable cost once per submission.)
        return (self._aio_loop or asyncio.get_running_loop()).time()

    def _wake_up(self) -> None:
        self._wake.set()

    def _bind_gauges(self) -> None:
        """Gauges that mirror state are read when Prometheus scrapes, not
        set on every round of the loop."""
        m = self._metrics
        m.term.set_function(lambda: self._core.term)
        m.commit_index.set_function(lambda: self._core.commit_index)
        m.applied_index.set_function(lambda: self.machine.applied_index())
        m.block_height.set_function(lambda: self.machine.height)
        m.has_leader.set_function(lambda: 1 if self._core.leader_id else 0)
        m.is_leader.set_function(lambda: 1 if self._core.role == Role.LEADER else 0)
        m.proposals_pending.set_function(lambda: len(self.submissions))

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._aio_loop = asyncio.get_running_loop()
        self._tasks = [
            asyncio.create_task(self._loop(), name="raft-loop"),
            asyncio.create_task(self._ticker(), name="raft-ticker"),
        ]
        if self.certification is not None:
            self._tasks.append(asyncio.create_task(self.certification.run(), name="certify"))

    async def hand_over_leadership(self, timeout_s: float) -> bool:
        """Before a graceful stop: if leader, transfer leadership to another
        voter (the core first catches it up, then sends TimeoutNow) and wait
        until another node leads, so a rolling restart costs no election
        timeout. True if handed over."""
        others = sorted(p for p in self._core.voters if p != self.config.node_id)
        if self._core.role != Role.LEADER or not others:
            return False
        self._core.transfer_leadership(others[0])
        self._wake.set()
        deadline = self._now() + timeout_s
        while self._now() < deadline:
            if self._core.role != Role.LEADER:
                return True
            await asyncio.sleep(self.config.tick_s)
        return self._core.role != Role.LEADER

    async def stop(self) -> None:
        self._stopped = True
        self._wake.set()
        if self.certification is not None:
            self.certification.stop()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.compaction.stop()
        stopping = ShuttingDown("node is shutting down")
        self._reads.fail_all(stopping)
        for _, fut in self._calls:
            if not fut.done():
                fut.set_exception(stopping)
        self.submissions.fail_all(stopping)

    # ------------------------------------------------------------ inputs

    def deliver(self, messages: list[Message]) -> None:
        self._inbox.extend(messages)
        self._wake.set()

    async def submit(self, payload: bytes, key: RequestKey, timeout_s: float) -> Applied:
        return await self.submit_future(payload, key, timeout_s)

    def submit_future(self, payload: bytes, key: RequestKey, timeout_s: float) -> asyncio.Future[Applied]:
        """Queue a submission; the future resolves with its ``Applied`` answer,
        or fails with a ConsensusError (OutcomeUnknown, NoLeader, ...) at the
        deadline."""
        fut: asyncio.Future[Applied] = (self._aio_loop or asyncio.get_running_loop()).create_future()
        self.submit_waiter(payload, key, timeout_s, fut)
        return fut

    def submit_waiter(self, payload: bytes, key: RequestKey, timeout_s: float, waiter: Waiter) -> None:
        """Queue a submission answered through ``waiter``: a future, or an
        object that answers at once when called (the streams' way: no future
        and no callback scheduled through the loop per submission)."""
        if self._stopped:
            waiter.set_exception(ShuttingDown("node is shutting down"))
        elif self.fatal is not None:
            waiter.set_exception(StorageError(f"node stopped: {self.fatal}"))
        elif self.submissions.add(payload, key, timeout_s, waiter):
            self._wake.set()

    def snapshot_received(self, msg: Message, seconds: float) -> None:
        """The receiver stored a complete, verified snapshot: the core decides
        whether to take it (the final chunk, without its data)."""
        self._metrics.snapshots.labels("received").inc()
        self._metrics.snapshot_duration.labels("receive").observe(seconds)
        self.deliver([replace(msg, data=b"", offset=0, done=True)])

    def receive_signatures(self, items: Iterable[BlockSignature]) -> None:
        if self.certification is not None:
            self.certification.receive(items)

    # ------------------------------------------------------------ the loop

    async def _ticker(self) -> None:
        tick_s = self.config.tick_s
        next_at = self._now()
        while not self._stopped:
            next_at += tick_s
            delay = next_at - self._now()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                # Fell behind (a stalled process): do not burst ticks, which
                # would fire elections at once, but let the core's clock
                # jump, so a leader lease does not outlive the stall.
                self._skipped_ticks += int(-delay / tick_s)
                next_at = self._now()
            self._ticks += 1
            self._wake.set()
            self.submissions.expire_due(bool(self._core.leader_id))

    async def _loop(self) -> None:
        try:
            while not self._stopped:
                await self._wake.wait()
                self._wake.clear()
                await self._step_once()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # a storage failure or a broken invariant stops the node
            self.fatal = exc
            log.error("raft loop stopped: %s", exc)
            if self._on_fatal is not None:
                self._on_fatal(exc)

    def _take_inputs(self) -> int:
        """Feed the core what arrived since the last round; the ticks taken."""
        core = self._core
        ticks, self._ticks = self._ticks, 0
        if self._skipped_ticks:
            core.clock_jumped(self._skipped_ticks)
            self._skipped_ticks = 0
        for _ in range(ticks):
            core.tick()
        inbox, self._inbox = self._inbox, []
        for msg in inbox:
            core.step(msg)
        return ticks

    def _feed_requests(self) -> None:
        self._run_calls()
        self.submissions.propose(self._core)
        self._ask_reads()

    async def _step_once(self) -> None:
        core = self._core
        ticks = self._take_inputs()
        self._run_calls()
        self._track_leader()
        if ticks:
            self.submissions.repropose_stale()
            self._reads.retry_stale()
        self.submissions.propose(core)
        self._ask_reads()
        while core.has_ready():
            rd = core.ready()
            started = time.perf_counter()
            if rd.snapshot is not None:
                await self.compaction.install(rd.snapshot)
                self._after_install()
            # 1. persist (a leader's appends go out first)
            messages = rd.messages
            if rd.entries and core.role == Role.LEADER:
                self._transport.send([m for m in messages if m.type == MessageType.APPEND])
                messages = [m for m in messages if m.type != MessageType.APPEND]
            synced = self._store.needs_sync(rd.hard_state, rd.entries)
            if synced and core.role == Role.LEADER:
                # The appends are on their way: the loop keeps taking client
                # requests and answers while the sync runs off the loop.
                await self._offload(self._store.save, rd.hard_state, rd.entries)
            else:
                # A follower can answer nothing before the sync, and the sync
                # releases the GIL: done in place it saves a thread hand-off
                # per append (about a fifth of a follower's CPU per entry).
                self._store.save(rd.hard_state, rd.entries)
            if synced:
                self._metrics.fsync_duration.observe(time.perf_counter() - started)
            if rd.entries:
                self.membership.learn(rd.entries)
                self.compaction.appended(sum(len(e.data) for e in rd.entries))
            # 2. send
            plain = []
            for m in messages:
                if m.type == MessageType.SNAPSHOT:
                    self.compaction.send(m)
                else:
                    plain.append(m)
            self._transport.send(plain)
            if rd.entries and plain and rd.committed:
                # A follower's answers to appends are durable now: let the
                # transport write them before this Ready's apply runs, so the
                # leader's commit does not wait for our ledger work.
                await asyncio.sleep(0)
            # 3. apply
            if rd.committed:
                self._apply(rd.committed)
            # 4. advance
            core.advance(rd)
            if rd.read_states:
                self._reads.confirmed(rd.read_states, self.machine.applied_index())
            self._metrics.append_duration.observe(time.perf_counter() - started)
            self._track_leader()
            # Inputs that arrived during the sync go into the next round at once.
            if self._inbox or self._ticks:
                self._take_inputs()
            self._feed_requests()
        self.membership.follow(*self.members(), self.certifier)
        self.compaction.maybe_compact(self.machine.applied_index())

    def _apply(self, entries: list[Entry]) -> None:
        results = self.machine.apply(entries)
        applied = sum(1 for r in results if not r.duplicate)
        self.submissions.answer(results)
        self._metrics.proposals_committed.inc(applied)
        self._metrics.proposals_applied.inc(applied)
        self._reads.applied(self.machine.applied_index())
        self._applied_event.set()
        if self._new_blocks:
            if self.certification is not None:
                self.certification.applied(list(self._new_blocks))
            self._new_blocks.clear()
            self._notify_block()

    def _after_install(self) -> None:
        """A snapshot replaced the applied state: everything derived from it
        is read again."""
        self.machine.reload()
        self._build_certifier()
        self.membership.reload()
        self.submissions.answer_from_store()
        self._reads.applied(self.machine.applied_index())
        self._applied_event.set()
        self._notify_block()

    def _run_calls(self) -> None:
        """Requests that need the core (membership changes, transfers) and
        snapshot stream results, run here so that one task touches the core."""
        for peer, ok in self.compaction.take_results():
            self._core.snapshot_status(peer, ok)
        calls, self._calls = self._calls, []
        for fn, fut in calls:
            if fut.done():
                continue
            try:
                fut.set_result(fn())
            except Exception as exc:  # handed to the caller, who maps it to an error
                fut.set_exception(exc)

    def _call(self, fn: Callable[[], Any]) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self._stopped:
            fut.set_exception(ShuttingDown("node is shutting down"))
            return fut
        self._calls.append((fn, fut))
        self._wake.set()
        return fut

    def _track_leader(self) -> None:
        leader = self._core.leader_id
        if leader != self._leader:
            if leader:
                self._metrics.leader_changes.inc()
                log.info("leader is %s in term %d%s", leader, self._core.term,
                         " (this node)" if leader == self.config.node_id else "")
            else:
                log.info("no leader in term %d (was %s)", self._core.term, self._leader)
            self._leader = leader
            self.submissions.leader_changed()

    # ------------------------------------------------------------ membership

    def members(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(voters, learners) of the configuration in effect here."""
        s = self._core.status()
        return s.voters, s.learners

    def knows(self, node_id: str) -> bool:
        return self.membership.knows(node_id)

    @property
    def addresses(self) -> dict[str, str]:
        return self.membership.addresses

    def _build_certifier(self) -> None:
        if self._node_key is None:
            return
        certifier = Certifier(
            self.config.node_id, self.config.cluster_id, self._node_key, self._store, self.machine,
            self._core.voters, self._metrics,
        )
        if self.certification is None:
            self.certification = CertificationLoop(
                self.config, certifier, self._store, self.machine, self._transport,
                self.submit_future,  # type: ignore[arg-type]
                lambda: bool(self._core.leader_id),
            )
        else:
            self.certification.replace(certifier)

    async def change_membership(self, change: ConfChange, address: str = "") -> int:
        """Leader only: append a CONFIG entry and wait for it to be applied here."""
        def propose() -> int:
            core = self._core
            if core.role is not Role.LEADER:
                raise NotLeader(f"not the leader (leader: {core.leader_id or 'unknown'})", core.leader_id)
            if address:
                self.membership.addresses[change.node_id] = address
            try:
                return core.propose_conf_change(change)
            except (ConfChangePending, ProposalDropped) as exc:
                raise ChangePending(str(exc)) from exc
            except ConfChangeInvalid as exc:
                raise MembershipRefused(str(exc)) from exc

        index: int = await self._call(propose)
        if not await self.wait_applied(index, self.config.stale_after_s * 10):
            raise OutcomeUnknown(f"membership change at index {index} not applied in time; check status")
        return index

    async def transfer_leader(self, target: str, timeout_s: float) -> str:
        def start() -> None:
            core = self._core
            if core.role is not Role.LEADER:
                raise NotLeader(f"not the leader (leader: {core.leader_id or 'unknown'})", core.leader_id)
            if target not in core.voters:
                raise MembershipRefused(f"{target} is not a voter")
            core.transfer_leadership(target)

        await self._call(start)
        deadline = self._now() + timeout_s
        while self._now() < deadline and self._core.leader_id != target:
            await asyncio.sleep(self.config.tick_s)
        return self._core.leader_id

    async def wait_applied(self, index: int, timeout_s: float) -> bool:
        deadline = self._now() + timeout_s
        while self.machine.applied_index() < index:
            remaining = deadline - self._now()
            if remaining <= 0 or self._stopped:
                return False
            self._applied_event.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._applied_event.wait(), remaining)
        return True

    # ------------------------------------------------------------ reads

    async def read_barrier(self, timeout_s: float) -> int:
        """Dissertation §6.4: returns once this node applied everything that
        was committed when the call was made (a linearizable read point)."""
        if self._stopped:
            raise ShuttingDown("node is shutting down")
        fut = self._reads.add(timeout_s)
        self._wake.set()
        return await fut

    def _ask_reads(self) -> None:
        for context, fut in self._reads.take_queued():
            try:
                self._core.read_index(context)
            except ProposalDropped:
                self._reads.queued.append(fut)  # no leader yet: asked again next round
                continue
            self._reads.asked(context, fut)

    # ------------------------------------------------------------ blocks

    def _notify_block(self) -> None:
        event, self._block_event = self._block_event, asyncio.Event()
        event.set()

    async def wait_for_height(self, height: int, timeout_s: float) -> bool:
        """Wait until the ledger head reaches ``height`` (False on timeout)."""
        deadline = self._now() + timeout_s
        while self.machine.height < height:
            remaining = deadline - self._now()
            if remaining <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._block_event.wait(), remaining)
        return True

    # ------------------------------------------------------------ status

    @property
    def role(self) -> Role:
        return self._core.role

    @property
    def leader_id(self) -> str:
        return self._core.leader_id

    def status(self) -> NodeStatus:
        s = self._core.status()
        return NodeStatus(
            node_id=s.node_id,
            role=s.role.value,
            term=s.term,
            leader_id=s.leader_id,
            commit_index=s.commit_index,
            applied_index=self.machine.applied_index(),
            last_log_index=s.last_index,
            block_height=self.machine.height,
            voters=s.voters,
            learners=s.learners,
            snapshot_index=s.snapshot_index,
            pending_conf_index=s.pending_conf_index,
        )
