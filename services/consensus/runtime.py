"""The asyncio runtime that owns one Raft core (STYLE: one task touches the
core, so no locks).

Inputs — ticks from a timer, messages from the transport, submissions from
the Ledger API — are queued and drained by ``_loop``, which then handles each
``Ready`` in contract order: persist (one synced RocksDB batch: the group
commit), send, apply into the ledger, advance. While one batch is being
synced, new submissions gather and go into the next Raft entry together
(the Assembler).

Submissions wait for their own application by request key. A follower
forwards its batch to the leader and learns the outcome by applying it. When
the leader changes, every submission still in flight is proposed again:
idempotency keys make the retry harmless, and a failover costs one election
instead of a client timeout.

Compaction and snapshots (Raft §7): the applied ledger is durable in
RocksDB, so every ``snapshot_entries`` applied entries, or once the log held
in memory reaches ``compact_log_bytes``, the core and the stored log are
compacted up to ``snapshot_keep_entries`` behind the applied index (a tail
for followers that are only a little behind, of at most half those bytes),
with no file written: the cost does not grow with the ledger, and the memory
the log takes is bounded whatever the entries' size. A snapshot file is
written only when a follower needs one (a SNAPSHOT message from the core):
from a consistent RocksDB view of the applied state, by a thread, and then
streamed to the peer in chunks by a task of its own, which reports back with
``snapshot_status`` exactly once. A snapshot received from a leader is installed (one atomic
RocksDB batch) before anything else of its Ready.

Membership: the address of every member comes with the CONFIG entry that
added it; the transport and the certifier follow the configuration in
effect (the core's voters and learners), never the static peer list.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any, Protocol

from fleetsuit.v1 import consensus_pb2 as pb

from .certifier import Certifier
from .errors import (
    ChangePending,
    CommitTimeout,
    InvalidEntry,
    MembershipRefused,
    NoLeader,
    NotLeader,
    Overloaded,
    ShuttingDown,
    StorageError,
)
from .ledger.block import BlockData
from .ledger.certify import NodeKey
from .ledger.machine import Applied, LedgerMachine, decode_member_context, encode_batch
from .ledger.snapshot import read_snapshot
from .metrics import ConsensusMetrics
from .raft import types as raft_types
from .raft.membership import (
    ConfChange,
    ConfChangeInvalid,
    ConfChangeKind,
    ConfChangePending,
    ConfigDecodeError,
    decode_config,
)
from .raft.node import RaftNode
from .raft.roles import RequestKey, Transport
from .raft.types import (
    Entry,
    EntryType,
    Message,
    MessageType,
    ProposalDropped,
    RaftConfig,
    Role,
    SnapshotMeta,
)
from .reads import ReadTracker
from .snapshots import FileSnapshotStore
from .storage import RocksStorage, StateView
from .transport import GrpcTransport

log = logging.getLogger(__name__)

SIGN_INTERVAL_S = 0.05  # batch block signatures: at most 20 pushes a second per peer
PULL_AFTER_ROUNDS = 2  # pull signatures once certification has not moved for this many rounds


class Waiter(Protocol):
    """Who hears a submission's answer: an asyncio future, or an object with
    the same three methods that passes the answer on at once."""

    def done(self) -> bool: ...
    def set_result(self, result: Applied, /) -> None: ...
    def set_exception(self, exception: BaseException, /) -> None: ...


@dataclass
class _Waiting:
    payload: bytes
    waiters: list[Waiter]
    proposed_term: int = -1  # term in which it was last proposed (-1: not yet)
    proposed_at: float = 0.0  # monotonic time of the last proposal


class ConsensusNode:
    def __init__(
        self,
        raft_config: RaftConfig,
        storage: RocksStorage,
        transport: Transport,
        metrics: ConsensusMetrics,
        rng: random.Random,
        *,
        tick_s: float,
        max_batch_entries: int = 1_024,
        max_batch_bytes: int = 4 * 1024 * 1024,
        max_pending: int = 50_000,
        on_fatal: Callable[[BaseException], None] | None = None,
        cluster_id: str = "",
        node_key: NodeKey | None = None,
        certify_interval_s: float = 0.25,
        snapshots: FileSnapshotStore | None = None,
        snapshot_entries: int = 10_000,
        snapshot_keep_entries: int = 1_000,
        snapshot_chunk_bytes: int = 1024 * 1024,
        compact_log_bytes: int = 128 * 1024 * 1024,
        addresses: dict[str, str] | None = None,
    ) -> None:
        self.config = raft_config
        self._storage = storage
        self._transport = transport
        self._metrics = metrics
        self.snapshots = snapshots
        self._snapshot_entries = snapshot_entries
        self._snapshot_keep = snapshot_keep_entries
        self._chunk_bytes = snapshot_chunk_bytes
        self._cluster_id = cluster_id
        self._node_key = node_key
        self._tick_s = tick_s
        self._stale_after_s = tick_s * raft_config.election_ticks * 2
        self._max_batch_entries = max_batch_entries
        self._max_batch_bytes = max_batch_bytes
        self._max_pending = max_pending
        self._on_fatal = on_fatal
        self._aio_loop: asyncio.AbstractEventLoop | None = None
        self._new_blocks: list[BlockData] = []
        self._to_sign: list[BlockData] = []
        self._to_push: list[pb.SignedBlock] = []
        self.machine = LedgerMachine(
            storage, on_block=self._new_blocks.append, cluster_id=cluster_id, on_config=self._on_config
        )
        self._certify_interval_s = certify_interval_s
        snapshot = self._restore_log_start()
        hard_state, entries = storage.load()
        self._core = RaftNode(
            raft_config, rng, hard_state=hard_state, log=entries, applied=self.machine.applied_index(),
            snapshot=snapshot,
        )
        # Peer addresses: the static ones, those recorded by applied CONFIG
        # entries, and those of CONFIG entries in the log not yet applied.
        self.addresses: dict[str, str] = dict(addresses or {})
        self.addresses.update(storage.addresses())
        self._learn_addresses(entries)
        self._membership: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())
        self.certifier: Certifier | None = None
        self._build_certifier()
        self._compacted = snapshot.index if snapshot else 0  # where the log starts
        self._compact_bytes = compact_log_bytes
        self._log_bytes = self._core.log_bytes  # payload bytes of the log held in memory
        self._compact_retry_at = 0
        self._snapshot_task: asyncio.Task[SnapshotMeta] | None = None
        self._snapshot_meta: SnapshotMeta | None = None  # the file being written
        self._sending: dict[str, asyncio.Task[None]] = {}
        self._sending_meta: dict[str, SnapshotMeta] = {}
        self._snapshot_results: list[tuple[str, bool]] = []
        self._calls: list[tuple[Callable[[], Any], asyncio.Future[Any]]] = []
        self._reads = ReadTracker(tick_s * raft_config.election_ticks * 2)
        self._applied_event = asyncio.Event()
        self._inbox: list[Message] = []
        self._ticks = 0
        self._skipped_ticks = 0
        self._wake = asyncio.Event()
        self._queue: deque[RequestKey] = deque()  # keys waiting to be proposed
        self._waiting: dict[RequestKey, _Waiting] = {}
        # Submission deadlines, checked every tick: a heap instead of a timer
        # handle (and a done callback to cancel it) per submission.
        self._deadlines: list[tuple[float, int, RequestKey, Waiter, float]] = []
        self._deadline_seq = 0
        self._leader = ""
        self._stopped = False
        # Set, then replaced, at each new block: wakes WatchBlocks waiters
        # without a task per applied entry.
        self._block_event = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.fatal: BaseException | None = None
        self._bind_gauges()

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
        m.proposals_pending.set_function(lambda: len(self._waiting))

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        # Kept: asyncio.get_running_loop() checks the pid on every call, a
        # measurable cost once per submission.
        self._aio_loop = asyncio.get_running_loop()
        self._tasks = [
            asyncio.create_task(self._loop(), name="raft-loop"),
            asyncio.create_task(self._ticker(), name="raft-ticker"),
        ]
        if self.certifier is not None:
            self._tasks.append(asyncio.create_task(self._certify_loop(), name="certify"))

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
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._core.role != Role.LEADER:
                return True
            await asyncio.sleep(self._tick_s)
        return self._core.role != Role.LEADER

    async def stop(self) -> None:
        self._stopped = True
        self._wake.set()
        extra = [*self._sending.values(), *([self._snapshot_task] if self._snapshot_task else [])]
        for task in [*self._tasks, *extra]:
            task.cancel()
        for task in [*self._tasks, *extra]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._reads.fail_all(ShuttingDown("node is shutting down"))
        for _, fut in self._calls:
            if not fut.done():
                fut.set_exception(ShuttingDown("node is shutting down"))
        for waiting in self._waiting.values():
            for waiter in waiting.waiters:
                if not waiter.done():
                    waiter.set_exception(ShuttingDown("node is shutting down"))
        self._waiting.clear()

    # ------------------------------------------------------------ inputs

    def deliver(self, messages: list[Message]) -> None:
        self._inbox.extend(messages)
        self._wake.set()

    async def submit(self, payload: bytes, key: RequestKey, timeout_s: float) -> Applied:
        return await self.submit_future(payload, key, timeout_s)

    def submit_future(self, payload: bytes, key: RequestKey, timeout_s: float) -> asyncio.Future[Applied]:
        """Queue a submission; the future resolves with its ``Applied`` answer,
        or fails with a ConsensusError (CommitTimeout, NoLeader, ...) at the
        deadline."""
        fut: asyncio.Future[Applied] = (self._aio_loop or asyncio.get_running_loop()).create_future()
        self.submit_waiter(payload, key, timeout_s, fut)
        return fut

    def submit_waiter(self, payload: bytes, key: RequestKey, timeout_s: float, waiter: Waiter) -> None:
        """Queue a submission answered through ``waiter``: a future, or an
        object that answers at once when called (the streams' way: no future
        and no callback scheduled through the loop per submission). No task
        or timer per submission either: the deadline goes into a heap that
        the ticker checks (``_expire_due``)."""
        if self._stopped:
            waiter.set_exception(ShuttingDown("node is shutting down"))
            return
        if self.fatal is not None:
            waiter.set_exception(StorageError(f"node stopped: {self.fatal}"))
            return
        if len(payload) > self._max_batch_bytes:
            waiter.set_exception(InvalidEntry(f"entry of {len(payload)} bytes exceeds {self._max_batch_bytes}"))
            return
        earlier = self._storage.get_request(key.client_id, key.request_id)
        if earlier is not None:
            waiter.set_result(Applied(key, earlier[0], earlier[1], True))
            return
        waiting = self._waiting.get(key)
        if waiting is None and len(self._waiting) >= self._max_pending:
            self._metrics.proposals_failed.labels("overloaded").inc()
            waiter.set_exception(Overloaded(
                f"{len(self._waiting)} submissions are already waiting for commit on this node; retry later"
            ))
            return
        if waiting is None:
            self._waiting[key] = _Waiting(payload, [waiter])
            self._queue.append(key)
        else:
            waiting.waiters.append(waiter)
        self._deadline_seq += 1
        heapq.heappush(
            self._deadlines,
            ((self._aio_loop or asyncio.get_running_loop()).time() + timeout_s, self._deadline_seq, key,
             waiter, timeout_s),
        )
        self._wake.set()

    def _expire_due(self) -> None:
        """Fail the submissions whose deadline has passed (at tick precision)."""
        deadlines = self._deadlines
        if not deadlines:
            return
        now = (self._aio_loop or asyncio.get_running_loop()).time()
        while deadlines and deadlines[0][0] <= now:
            _, _, key, fut, timeout_s = heapq.heappop(deadlines)
            if not fut.done():
                self._expire(key, fut, timeout_s)

    def _expire(self, key: RequestKey, fut: Waiter, timeout_s: float) -> None:
        if fut.done():
            return
        waiting = self._waiting.get(key)
        if waiting is not None and fut in waiting.waiters:
            waiting.waiters.remove(fut)
            if not waiting.waiters:
                del self._waiting[key]
        reason = "no_leader" if not self._core.leader_id else "timeout"
        self._metrics.proposals_failed.labels(reason).inc()
        if reason == "no_leader":
            fut.set_exception(NoLeader("no leader elected within the deadline; retry"))
        else:
            fut.set_exception(CommitTimeout(f"not committed within {timeout_s:.3f}s; retry"))

    # ------------------------------------------------------------ the loop

    async def _ticker(self) -> None:
        next_at = time.monotonic()
        while not self._stopped:
            next_at += self._tick_s
            delay = next_at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                # Fell behind (a stalled process): do not burst ticks, which
                # would fire elections at once, but let the core's clock
                # jump, so a leader lease does not outlive the stall.
                self._skipped_ticks += int(-delay / self._tick_s)
                next_at = time.monotonic()
            self._ticks += 1
            self._wake.set()
            self._expire_due()

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

    async def _step_once(self) -> None:
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
        self._run_calls()
        self._track_leader()
        if ticks and self._waiting:
            self._repropose_stale()
        if ticks:
            self._reads.retry_stale()
        self._propose_queued()
        self._ask_reads()
        while core.has_ready():
            rd = core.ready()
            started = time.perf_counter()
            if rd.snapshot is not None:
                await self._install_snapshot(rd.snapshot)
            messages = rd.messages
            if rd.entries and core.role == Role.LEADER:
                # Raft §10.2.1: a leader may send AppendEntries before its own
                # write is durable; the core counts its own vote only after it.
                early = [m for m in messages if m.type == MessageType.APPEND]
                messages = [m for m in messages if m.type != MessageType.APPEND]
                self._transport.send(early)
            synced = self._storage.needs_sync(rd.hard_state, rd.entries)
            if synced and core.role == Role.LEADER:
                # The leader's appends are already on their way: the loop
                # keeps taking client requests and answers while it syncs.
                await asyncio.to_thread(self._storage.save, rd.hard_state, rd.entries)
            else:
                # A follower can answer nothing before the sync, and the
                # sync releases the GIL: done in place it saves a thread
                # hand-off per append (about a fifth of a follower's CPU
                # per entry at low load).
                self._storage.save(rd.hard_state, rd.entries)
            if synced:
                self._metrics.fsync_duration.observe(time.perf_counter() - started)
            if rd.entries:
                self._learn_addresses(rd.entries)
                self._log_bytes += sum(len(e.data) for e in rd.entries)
            snapshots = [m for m in messages if m.type == MessageType.SNAPSHOT]
            if snapshots:
                messages = [m for m in messages if m.type != MessageType.SNAPSHOT]
                for m in snapshots:
                    self._start_snapshot_send(m)
            self._transport.send(messages)
            if rd.entries and messages and rd.committed:
                # A follower's answers to appends are durable now: let the
                # transport write them before this Ready's apply runs, so the
                # leader's commit does not wait for our ledger work.
                await asyncio.sleep(0)
            if rd.committed:
                self._apply(rd.committed)
            core.advance(rd)
            if rd.read_states:
                self._reads.confirmed(rd.read_states, self.machine.applied_index())
            self._metrics.append_duration.observe(time.perf_counter() - started)
            self._track_leader()
            # Inputs that arrived during the sync go into the next round at once.
            if self._inbox or self._ticks:
                inbox, self._inbox = self._inbox, []
                for msg in inbox:
                    core.step(msg)
                ticks, self._ticks = self._ticks, 0
                for _ in range(ticks):
                    core.tick()
            self._run_calls()
            self._propose_queued()
            self._ask_reads()
        self._sync_membership()
        self._maybe_compact()

    def _run_calls(self) -> None:
        """Requests that need the core (membership changes, transfers) and
        snapshot stream results, run here so that one task touches the core."""
        results, self._snapshot_results = self._snapshot_results, []
        for peer, ok in results:
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
            # Re-propose everything in flight to the new leader (idempotent).
            for key, waiting in self._waiting.items():
                if waiting.proposed_term != -1:
                    waiting.proposed_term = -1
                    self._queue.append(key)

    def _propose_queued(self) -> None:
        while self._queue:
            payloads: list[bytes] = []
            size = 0
            taken: list[tuple[RequestKey, _Waiting]] = []
            while self._queue and len(payloads) < self._max_batch_entries:
                key = self._queue[0]
                waiting = self._waiting.get(key)
                if waiting is None or waiting.proposed_term != -1:
                    self._queue.popleft()  # timed out, or already proposed
                    continue
                if payloads and size + len(waiting.payload) > self._max_batch_bytes:
                    break
                self._queue.popleft()
                payloads.append(waiting.payload)
                taken.append((key, waiting))
                size += len(waiting.payload)
            if not payloads:
                return
            try:
                self._core.propose([encode_batch(payloads)])
            except ProposalDropped:
                # No leader yet: keep them queued, in order, for the next round.
                self._queue.extendleft(key for key, _ in reversed(taken))
                return
            term, now = self._core.term, time.monotonic()
            for _, waiting in taken:
                waiting.proposed_term = term
                waiting.proposed_at = now

    def _repropose_stale(self) -> None:
        """A forwarded proposal can be lost on the way to a live leader; after
        an election timeout without its application, propose it again (the
        request key makes a second copy harmless)."""
        stale_before = time.monotonic() - self._stale_after_s
        for key, waiting in self._waiting.items():
            if waiting.proposed_term != -1 and waiting.proposed_at < stale_before:
                waiting.proposed_term = -1
                self._queue.append(key)

    def _apply(self, entries: list) -> None:  # type: ignore[type-arg]
        results: list[Applied] = self.machine.apply(entries)  # type: ignore[assignment]
        applied_count = len(results)
        waiting_by_key = self._waiting
        for result in results:
            if result.duplicate:
                applied_count -= 1
            if not waiting_by_key or result.key is None:
                continue  # a follower's usual case: nobody here waits
            waiting = waiting_by_key.pop(result.key, None)
            if waiting is None:
                continue
            for fut in waiting.waiters:
                if not fut.done():
                    fut.set_result(result)
        self._metrics.proposals_committed.inc(applied_count)
        self._metrics.proposals_applied.inc(applied_count)
        self._reads.applied(self.machine.applied_index())
        self._applied_event.set()
        if self._new_blocks:
            if self.certifier is not None:
                # Signed and pushed in batches by _certify_loop, off the commit path.
                self._to_sign.extend(self._new_blocks)
            self._new_blocks.clear()
            self._notify_block()

    # ------------------------------------------------------------ snapshots

    def _restore_log_start(self) -> SnapshotMeta | None:
        """At start: where the log begins, the point of the last compaction or
        installed snapshot. (A data directory written before compaction was
        recorded has only its snapshot files to say so; the newest one the
        applied state covers is taken then.) Files older than that point can
        serve nobody and are deleted, as are files beyond the applied index:
        received but never installed (a crash in between), the leader sends
        again. The log the point covers is deleted (a compaction cut short)."""
        start = self._storage.compacted()
        if self.snapshots is not None:
            applied = self._storage.applied_index()
            newest = self.snapshots.latest(max_index=applied)
            if newest is not None and (start is None or newest.index > start.index):
                start = newest
            low = start.index if start else applied + 1
            self.snapshots.prune(lambda index: low <= index <= applied)
        if start is not None:
            self._storage.compact_log(start)
            self._metrics.snapshot_index.set(start.index)
        return start

    def _maybe_compact(self) -> None:
        """Raft §7 log compaction. The applied ledger is durable in RocksDB, so
        compacting writes no snapshot file: every ``snapshot_entries``
        applied entries, or once the log in memory holds ``compact_log_bytes``,
        the log is cut ``snapshot_keep_entries`` behind the applied index, or
        closer if those would hold more than half the bytes (a tail for
        followers that are only a little behind). Never past a snapshot file
        being written or sent: a follower installing it needs the entries
        after it."""
        if self.snapshots is None:
            return
        applied = self.machine.applied_index()
        by_count = applied - self._snapshot_keep - self._compacted >= self._snapshot_entries
        by_bytes = self._log_bytes >= self._compact_bytes
        if not (by_count or by_bytes) or applied < self._compact_retry_at:
            return  # the common case, checked first: a few comparisons per round
        core = self._core
        target = core.compaction_index(self._snapshot_keep, self._compact_bytes // 2)
        for meta in self._busy_metas():
            target = min(target, meta.index)
        if target <= self._compacted or (not by_bytes and target - self._compacted < self._snapshot_entries):
            self._compact_retry_at = applied + 64  # a snapshot being sent holds it back: not every round
            return
        meta = core.compact(target)
        self._storage.compact_log(meta)
        self._compacted = meta.index
        self._log_bytes = core.log_bytes
        self._metrics.snapshot_index.set(meta.index)
        busy = {m.index for m in self._busy_metas()}
        self.snapshots.prune(lambda index: index >= meta.index or index in busy)

    def _busy_metas(self) -> list[SnapshotMeta]:
        """Snapshot files being written or streamed to a peer."""
        metas = list(self._sending_meta.values())
        if self._snapshot_task is not None and self._snapshot_meta is not None:
            metas.append(self._snapshot_meta)
        return metas

    def _take_snapshot(self) -> asyncio.Task[SnapshotMeta]:
        """Write a snapshot file of the applied state as of now (a consistent
        RocksDB view, read by a thread while the ledger moves on); one at a
        time: while one is being written, that one is returned."""
        assert self.snapshots is not None
        if self._snapshot_task is not None:
            return self._snapshot_task
        applied = self._core.status().applied_index
        meta = self._core.snapshot_meta(applied)
        self._storage.sync()  # the applied state the view holds is durable
        view = self._storage.state_view()
        self._snapshot_meta = meta
        task = asyncio.create_task(self._write_snapshot(meta, view), name="snapshot")
        task.add_done_callback(lambda t: t.cancelled() or t.exception())  # logged and counted there
        self._snapshot_task = task
        return task

    async def _write_snapshot(self, meta: SnapshotMeta, view: StateView) -> SnapshotMeta:
        assert self.snapshots is not None
        started = time.perf_counter()
        try:
            size = await asyncio.to_thread(self.snapshots.save, meta, self._storage.state_records(view))
        except Exception as exc:  # a full disk: the peer's send fails and is retried
            log.error("snapshot at %d failed: %s", meta.index, exc)
            self._metrics.snapshot_failures.labels("save").inc()
            raise
        finally:
            self._snapshot_task = None
            self._snapshot_meta = None
        self._metrics.snapshots.labels("saved").inc()
        self._metrics.snapshot_bytes.set(size)
        self._metrics.snapshot_duration.labels("save").observe(time.perf_counter() - started)
        log.info("snapshot at index %d: %d bytes", meta.index, size)
        return meta

    def _start_snapshot_send(self, msg: Message) -> None:
        """Stream a snapshot to the peer a SNAPSHOT message names; the core
        hears back exactly once (``snapshot_status``). Any snapshot at or
        after the one the core names will do (it covers the compacted
        prefix, and the log holds what follows it): the newest stored file
        if there is one, or else one written now, on demand."""
        assert msg.snapshot is not None and self.snapshots is not None
        old = self._sending.get(msg.dst)
        if old is not None and not old.done():
            old.cancel()  # its status is reported by its own finally
        applied = self._core.status().applied_index
        stored = self.snapshots.latest(max_index=applied)
        if stored is not None and stored.index >= msg.snapshot.index:
            meta, writing = stored, None
        else:
            writing = self._take_snapshot()
            assert self._snapshot_meta is not None
            meta = self._snapshot_meta
        self._sending_meta[msg.dst] = meta
        self._sending[msg.dst] = asyncio.create_task(
            self._send_snapshot(replace(msg, snapshot=meta), writing), name=f"snap-{msg.dst}"
        )

    async def _send_snapshot(self, msg: Message, writing: asyncio.Task[SnapshotMeta] | None) -> None:
        assert msg.snapshot is not None
        meta, ok = msg.snapshot, False
        started = time.perf_counter()
        try:
            if writing is not None:
                await asyncio.shield(writing)
            if self.snapshots is None or not self.snapshots.has(meta) or not isinstance(
                self._transport, GrpcTransport
            ):
                log.warning("snapshot %d for %s is not stored", meta.index, msg.dst)
                return
            store, size = self.snapshots, self.snapshots.size_of(meta)

            async def chunks() -> Any:
                offset = 0
                while True:
                    data = await asyncio.to_thread(store.read_chunk, meta, offset, self._chunk_bytes)
                    done = offset + len(data) >= size
                    yield replace(msg, offset=offset, data=data, done=done)
                    offset += len(data)
                    if done:
                        return

            ok = await self._transport.send_snapshot(msg.dst, chunks())
            if ok:
                self._metrics.snapshots.labels("sent").inc()
                self._metrics.snapshot_duration.labels("send").observe(time.perf_counter() - started)
                log.info("snapshot %d sent to %s (%d bytes)", meta.index, msg.dst, size)
            else:
                self._metrics.snapshot_failures.labels("send").inc()
        except Exception as exc:  # writing it failed (logged there)
            log.warning("snapshot for %s not sent: %s", msg.dst, exc)
        finally:
            self._snapshot_results.append((msg.dst, ok))
            self._sending_meta.pop(msg.dst, None)
            self._wake.set()

    def snapshot_received(self, msg: Message, seconds: float) -> None:
        """The receiver stored a complete, verified snapshot: the core decides
        whether to take it (the final chunk, without its data)."""
        self._metrics.snapshots.labels("received").inc()
        self._metrics.snapshot_duration.labels("receive").observe(seconds)
        self.deliver([replace(msg, data=b"", offset=0, done=True)])

    async def _install_snapshot(self, meta: SnapshotMeta) -> None:
        """Ready.snapshot: replace the applied state and the log with the
        received snapshot (verified and stored by the receiver), atomically."""
        if self.snapshots is None:
            raise StorageError("a snapshot arrived but this node keeps no snapshots")
        store, storage = self.snapshots, self._storage
        started = time.perf_counter()
        if self._snapshot_task is not None:
            # Our own snapshot reads the state being replaced: let it finish.
            with contextlib.suppress(Exception):
                await asyncio.shield(self._snapshot_task)

        def install() -> None:
            with open(store.path_of(meta), "rb") as f:
                got, records = read_snapshot(f, store.max_snapshot_bytes)
                if got != meta:
                    raise StorageError(f"stored snapshot holds {got}, not {meta}")
                storage.install_snapshot(meta, records)

        await asyncio.to_thread(install)
        self.machine.reload()
        self._build_certifier()
        self.addresses.update(storage.addresses())
        store.prune(lambda index: index == meta.index)
        self._compacted = meta.index
        self._log_bytes = self._core.log_bytes
        self._metrics.snapshots.labels("installed").inc()
        self._metrics.snapshot_bytes.set(store.size_of(meta))
        self._metrics.snapshot_duration.labels("install").observe(time.perf_counter() - started)
        self._metrics.snapshot_index.set(meta.index)
        log.info("installed snapshot at index %d (term %d)", meta.index, meta.term)
        # Submissions the snapshot covers get their first answer now.
        for key in list(self._waiting):
            earlier = storage.get_request(key.client_id, key.request_id)
            if earlier is not None:
                for fut in self._waiting.pop(key).waiters:
                    if not fut.done():
                        fut.set_result(Applied(key, earlier[0], earlier[1], True))
        self._reads.applied(self.machine.applied_index())
        self._applied_event.set()
        self._notify_block()

    # ------------------------------------------------------------ membership

    def _learn_addresses(self, entries: list[Entry]) -> None:
        for entry in entries:
            if entry.type is not EntryType.CONFIG:
                continue
            try:
                _, change = decode_config(entry.data)
            except ConfigDecodeError:
                continue
            address = decode_member_context(change.context)
            if change.kind is ConfChangeKind.ADD_LEARNER and address:
                self.addresses[change.node_id] = address

    def _on_config(self, change: ConfChange) -> None:
        self._metrics.membership_changes.labels(change.kind.value).inc()
        if change.kind is ConfChangeKind.PROMOTE:
            self._metrics.promotions.inc()

    def members(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(voters, learners) of the configuration in effect here."""
        s = self._core.status()
        return s.voters, s.learners

    def knows(self, node_id: str) -> bool:
        voters, learners = self._membership
        return node_id in voters or node_id in learners or node_id in self.addresses

    def _sync_membership(self) -> None:
        current = self.members()
        if current == self._membership:
            return
        self._membership = current
        voters, learners = current
        self._metrics.voters.set(len(voters))
        self._metrics.learners.set(len(learners))
        if self.certifier is not None:
            self.certifier.set_voters(voters)
        if isinstance(self._transport, GrpcTransport):
            me = self.config.node_id
            wanted = {n: self.addresses[n] for n in (*voters, *learners) if n != me and n in self.addresses}
            missing = [n for n in (*voters, *learners) if n != me and n not in self.addresses]
            if missing:
                log.warning("no address known for members %s", missing)
            self._transport.set_peers(wanted)

    def _build_certifier(self) -> None:
        if self._node_key is None or not isinstance(self._transport, GrpcTransport):
            return
        self.certifier = Certifier(
            self.config.node_id, self._cluster_id, self._node_key, self._storage, self.machine,
            self._core.voters, self._metrics,
        )

    async def change_membership(self, change: ConfChange, address: str = "") -> int:
        """Leader only: append a CONFIG entry and wait for it to be applied here."""
        def propose() -> int:
            core = self._core
            if core.role is not Role.LEADER:
                raise NotLeader(f"not the leader (leader: {core.leader_id or 'unknown'})", core.leader_id)
            if address:
                self.addresses[change.node_id] = address
            try:
                return core.propose_conf_change(change)
            except ConfChangePending as exc:
                raise ChangePending(str(exc)) from exc
            except ConfChangeInvalid as exc:
                raise MembershipRefused(str(exc)) from exc
            except raft_types.ProposalDropped as exc:
                raise ChangePending(str(exc)) from exc

        index: int = await self._call(propose)
        if not await self.wait_applied(index, self._stale_after_s * 10):
            raise CommitTimeout(f"membership change at index {index} not applied in time; check status")
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
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self._core.leader_id != target:
            await asyncio.sleep(self._tick_s)
        return self._core.leader_id

    async def wait_applied(self, index: int, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while self.machine.applied_index() < index:
            remaining = deadline - time.monotonic()
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

    # ------------------------------------------------------------ certificates

    def _sign_applied(self) -> None:
        """Sign the blocks applied since the last signing; the signatures go
        to the peers with the next push."""
        if self._to_sign and self.certifier is not None:
            blocks, self._to_sign = self._to_sign, []
            self._to_push.extend(self.certifier.sign_blocks(blocks))

    def _push_signatures(self) -> None:
        self._sign_applied()
        if self._to_push and isinstance(self._transport, GrpcTransport):
            signed, self._to_push = self._to_push, []
            self._transport.share_signatures(signed)

    def receive_signatures(self, items: Iterable[pb.SignedBlock]) -> None:
        """Peers' block signatures. Our own go first: a height we signed
        needs one peer signature less, and each one not needed is a verify
        saved. (Signed now, pushed with the next round: no extra RPC.)"""
        if self.certifier is None:
            return
        self._sign_applied()
        self.certifier.receive(items)

    async def _certify_loop(self) -> None:
        """Sign applied blocks and push the signatures to the peers in batches
        (every SIGN_INTERVAL_S: one RPC per peer for many blocks, not one per
        block); record this node's key in the ledger once; and pull the
        signatures of blocks whose certification has stalled (a push can be
        lost), rather than of every block still in flight."""
        assert self.certifier is not None and isinstance(self._transport, GrpcTransport)
        transport = self._transport
        registered = False
        rounds = max(1, round(self._certify_interval_s / SIGN_INTERVAL_S))
        stalled_at = (-1, 0)  # (certified height, rounds it has not moved while lagging)
        tick = 0
        while not self._stopped:
            await asyncio.sleep(SIGN_INTERVAL_S)
            self._push_signatures()
            tick += 1
            if tick % rounds:
                continue
            certifier = self.certifier
            # A key registration already applied (before a removal) would be
            # answered as a duplicate: take the first request id not used yet.
            request_id = int.from_bytes(certifier.public_key[:6], "big") << 8
            while self._storage.get_request(f"node/{self.config.node_id}", request_id) is not None:
                request_id += 1
            registered = registered and self.machine.member_key(self.config.node_id) == certifier.public_key
            if not registered:
                # Registered once the ledger holds our key; a node removed and
                # added again (its key forgotten) registers anew.
                registered = self.machine.member_key(self.config.node_id) == certifier.public_key
                if not registered and self._core.leader_id:
                    entry = pb.LedgerEntry(
                        client_id=f"node/{self.config.node_id}", request_id=request_id,
                        membership_changed=pb.MembershipChanged(members=[certifier.key_registration()]),
                    )
                    fut = self.submit_future(
                        entry.SerializeToString(), RequestKey(entry.client_id, request_id), 5.0
                    )
                    fut.add_done_callback(lambda f: f.cancelled() or f.exception())  # retried next round
            certifier.on_applied()
            gap = certifier.missing()
            if gap is None:
                stalled_at = (-1, 0)
                continue
            height = certifier.certified_height
            stalled_at = (height, stalled_at[1] + 1) if stalled_at[0] == height else (height, 0)
            if stalled_at[1] >= PULL_AFTER_ROUNDS:
                certifier.receive(await transport.fetch_signatures(*gap))

    def _notify_block(self) -> None:
        event, self._block_event = self._block_event, asyncio.Event()
        event.set()

    async def wait_for_height(self, height: int, timeout_s: float) -> bool:
        """Wait until the ledger head reaches ``height`` (False on timeout)."""
        deadline = time.monotonic() + timeout_s
        while self.machine.height < height:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._block_event.wait(), remaining)
        return True

    # ------------------------------------------------------------ status

    def status(self) -> dict[str, object]:
        s = self._core.status()
        return {
            "node_id": s.node_id,
            "role": s.role.value,
            "term": s.term,
            "leader_id": s.leader_id,
            "commit_index": s.commit_index,
            "applied_index": self.machine.applied_index(),
            "last_log_index": s.last_index,
            "block_height": self.machine.height,
            "voters": s.voters,
            "learners": s.learners,
            "snapshot_index": s.snapshot_index,
            "pending_conf_index": s.pending_conf_index,
        }
