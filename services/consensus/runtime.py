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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from fleetsuit.v1 import consensus_pb2 as pb

from .certifier import Certifier
from .errors import CommitTimeout, InvalidEntry, NoLeader, ShuttingDown, StorageError
from .ledger.block import BlockData
from .ledger.certify import NodeKey
from .ledger.machine import Applied, LedgerMachine, encode_batch
from .metrics import ConsensusMetrics
from .raft.node import RaftNode
from .raft.roles import RequestKey, Transport
from .raft.types import Message, MessageType, ProposalDropped, RaftConfig, Role
from .storage import RocksStorage
from .transport import GrpcTransport

log = logging.getLogger(__name__)


@dataclass
class _Waiting:
    payload: bytes
    futures: list[asyncio.Future[Applied]]
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
        on_fatal: Callable[[BaseException], None] | None = None,
        cluster_id: str = "",
        node_key: NodeKey | None = None,
        certify_interval_s: float = 0.25,
    ) -> None:
        self.config = raft_config
        self._storage = storage
        self._transport = transport
        self._metrics = metrics
        self._tick_s = tick_s
        self._stale_after_s = tick_s * raft_config.election_ticks * 2
        self._max_batch_entries = max_batch_entries
        self._max_batch_bytes = max_batch_bytes
        self._on_fatal = on_fatal
        self._new_blocks: list[BlockData] = []
        self.machine = LedgerMachine(storage, on_block=self._new_blocks.append, cluster_id=cluster_id)
        self.certifier: Certifier | None = None
        if node_key is not None and isinstance(transport, GrpcTransport):
            self.certifier = Certifier(
                raft_config.node_id, cluster_id, node_key, storage, self.machine, raft_config.peers, metrics
            )
        self._certify_interval_s = certify_interval_s
        hard_state, entries = storage.load()
        self._core = RaftNode(
            raft_config, rng, hard_state=hard_state, log=entries, applied=self.machine.applied_index()
        )
        self._inbox: list[Message] = []
        self._ticks = 0
        self._wake = asyncio.Event()
        self._queue: deque[RequestKey] = deque()  # keys waiting to be proposed
        self._waiting: dict[RequestKey, _Waiting] = {}
        self._leader = ""
        self._stopped = False
        self._new_block = asyncio.Condition()
        self._tasks: list[asyncio.Task[None]] = []
        self.fatal: BaseException | None = None

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
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
        others = sorted(p for p in self.config.peers if p != self.config.node_id)
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
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for waiting in self._waiting.values():
            for fut in waiting.futures:
                if not fut.done():
                    fut.set_exception(ShuttingDown("node is shutting down"))
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
        deadline. No task per submission: a timer handle enforces the deadline."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Applied] = loop.create_future()
        if self._stopped:
            fut.set_exception(ShuttingDown("node is shutting down"))
            return fut
        if self.fatal is not None:
            fut.set_exception(StorageError(f"node stopped: {self.fatal}"))
            return fut
        if len(payload) > self._max_batch_bytes:
            fut.set_exception(InvalidEntry(f"entry of {len(payload)} bytes exceeds {self._max_batch_bytes}"))
            return fut
        earlier = self._storage.get_request(key.client_id, key.request_id)
        if earlier is not None:
            fut.set_result(Applied(key, earlier[0], earlier[1], True))
            return fut
        waiting = self._waiting.get(key)
        if waiting is None:
            self._waiting[key] = _Waiting(payload, [fut])
            self._queue.append(key)
        else:
            waiting.futures.append(fut)
        timer = loop.call_later(timeout_s, self._expire, key, fut, timeout_s)
        fut.add_done_callback(lambda _f: timer.cancel())
        self._metrics.proposals_pending.set(len(self._waiting))
        self._wake.set()
        return fut

    def _expire(self, key: RequestKey, fut: asyncio.Future[Applied], timeout_s: float) -> None:
        if fut.done():
            return
        waiting = self._waiting.get(key)
        if waiting is not None and fut in waiting.futures:
            waiting.futures.remove(fut)
            if not waiting.futures:
                del self._waiting[key]
        self._metrics.proposals_pending.set(len(self._waiting))
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
                next_at = time.monotonic()  # fell behind: do not burst ticks
            self._ticks += 1
            self._wake.set()

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
        for _ in range(ticks):
            core.tick()
        inbox, self._inbox = self._inbox, []
        for msg in inbox:
            core.step(msg)
        self._track_leader()
        if ticks and self._waiting:
            self._repropose_stale()
        self._propose_queued()
        while core.has_ready():
            rd = core.ready()
            started = time.perf_counter()
            messages = rd.messages
            if rd.entries and core.role == Role.LEADER:
                # Raft §10.2.1: a leader may send AppendEntries before its own
                # write is durable; the core counts its own vote only after it.
                early = [m for m in messages if m.type == MessageType.APPEND]
                messages = [m for m in messages if m.type != MessageType.APPEND]
                self._transport.send(early)
            if self._storage.needs_sync(rd.hard_state, rd.entries):
                await asyncio.to_thread(self._storage.save, rd.hard_state, rd.entries)
                self._metrics.fsync_duration.observe(time.perf_counter() - started)
            else:
                self._storage.save(rd.hard_state, rd.entries)
            self._transport.send(messages)
            if rd.committed:
                self._apply(rd.committed)
            core.advance(rd)
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
            self._propose_queued()
        status = core.status()
        self._metrics.term.set(status.term)
        self._metrics.commit_index.set(status.commit_index)

    def _track_leader(self) -> None:
        leader = self._core.leader_id
        if leader != self._leader:
            if leader:
                self._metrics.leader_changes.inc()
            self._leader = leader
            # Re-propose everything in flight to the new leader (idempotent).
            for key, waiting in self._waiting.items():
                if waiting.proposed_term != -1:
                    waiting.proposed_term = -1
                    self._queue.append(key)
        self._metrics.has_leader.set(1 if leader else 0)
        self._metrics.is_leader.set(1 if self._core.role == Role.LEADER else 0)

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
        results = self.machine.apply(entries)
        applied_count = 0
        for result in results:
            assert isinstance(result, Applied)
            applied_count += 0 if result.duplicate else 1
            if result.key is None:
                continue
            waiting = self._waiting.pop(result.key, None)
            if waiting is None:
                continue
            for fut in waiting.futures:
                if not fut.done():
                    fut.set_result(result)
        self._metrics.proposals_committed.inc(applied_count)
        self._metrics.proposals_applied.inc(applied_count)
        self._metrics.applied_index.set(self.machine.applied_index())
        self._metrics.block_height.set(self.machine.height)
        self._metrics.proposals_pending.set(len(self._waiting))
        if self._new_blocks:
            blocks, self._new_blocks[:] = list(self._new_blocks), []
            if self.certifier is not None and isinstance(self._transport, GrpcTransport):
                self._transport.share_signatures(self.certifier.sign_blocks(blocks))
            asyncio.get_running_loop().create_task(self._notify_block())

    # ------------------------------------------------------------ certificates

    async def _certify_loop(self) -> None:
        """Record this node's key in the ledger once, then pull the signatures
        of blocks that still lack a majority (pushes can be lost)."""
        assert self.certifier is not None and isinstance(self._transport, GrpcTransport)
        certifier, transport = self.certifier, self._transport
        registered = False
        request_id = int.from_bytes(certifier.public_key[:7], "big")
        while not self._stopped:
            await asyncio.sleep(self._certify_interval_s)
            if not registered:
                registered = self.machine.member_key(self.config.node_id) is not None
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
            if gap is not None:
                certifier.receive(await transport.fetch_signatures(*gap))

    async def _notify_block(self) -> None:
        async with self._new_block:
            self._new_block.notify_all()

    async def wait_for_height(self, height: int, timeout_s: float) -> bool:
        """Wait until the ledger head reaches ``height`` (False on timeout)."""
        async with self._new_block:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._new_block.wait_for(lambda: self.machine.height >= height), timeout_s
                )
        return self.machine.height >= height

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
        }
