"""Submissions waiting for their application (the runtime's side of
client requests; one task touches them, so no locks).

A submission is keyed by its ``RequestKey`` and answered when the ledger
applies that key here, however it got there: proposed by this node,
forwarded by a follower, or proposed again after a leader change (the key
makes a second copy harmless). Deadlines sit in one heap checked every tick,
not a timer and a callback per submission. A proposal unanswered after two
election timeouts is proposed again: a forwarded proposal can be lost on the
way to a live leader, and a failover should cost an election, not a client
timeout.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from ..errors import CommitTimeout, InvalidEntry, NoLeader, Overloaded
from ..ledger.codec import encode_batch
from ..ledger.keys import RequestKey
from ..ledger.machine import Applied
from ..ledger.store import LedgerStore
from ..metrics import ConsensusMetrics
from ..raft.node import RaftNode
from ..raft.types import ProposalDropped
from .config import RuntimeConfig


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
    proposed_at: float = 0.0  # clock time of the last proposal


class Submissions:
    def __init__(
        self, config: RuntimeConfig, store: LedgerStore, metrics: ConsensusMetrics, clock: Callable[[], float]
    ) -> None:
        self._config = config
        self._store = store
        self._metrics = metrics
        self._clock = clock
        self._queue: deque[RequestKey] = deque()  # keys waiting to be proposed
        self._waiting: dict[RequestKey, _Waiting] = {}
        self._deadlines: list[tuple[float, int, RequestKey, Waiter, float]] = []
        self._seq = 0

    def __len__(self) -> int:
        return len(self._waiting)

    def add(self, payload: bytes, key: RequestKey, timeout_s: float, waiter: Waiter) -> bool:
        """Queue a submission; False when it was answered at once (an
        earlier application of the same key, or a refusal)."""
        if len(payload) > self._config.max_batch_bytes:
            waiter.set_exception(
                InvalidEntry(f"entry of {len(payload)} bytes exceeds {self._config.max_batch_bytes}")
            )
            return False
        earlier = self._store.get_request(key)
        if earlier is not None:
            waiter.set_result(Applied(key, earlier[0], earlier[1], True))
            return False
        waiting = self._waiting.get(key)
        if waiting is None and len(self._waiting) >= self._config.max_pending:
            self._metrics.proposals_failed.labels("overloaded").inc()
            waiter.set_exception(Overloaded(
                f"{len(self._waiting)} submissions are already waiting for commit on this node; retry later"
            ))
            return False
        if waiting is None:
            self._waiting[key] = _Waiting(payload, [waiter])
            self._queue.append(key)
        else:
            waiting.waiters.append(waiter)
        self._seq += 1
        heapq.heappush(self._deadlines, (self._clock() + timeout_s, self._seq, key, waiter, timeout_s))
        return True

    def expire_due(self, has_leader: bool) -> None:
        """Fail the submissions whose deadline has passed (at tick precision)."""
        deadlines = self._deadlines
        now = self._clock()
        while deadlines and deadlines[0][0] <= now:
            _, _, key, waiter, timeout_s = heapq.heappop(deadlines)
            if waiter.done():
                continue
            waiting = self._waiting.get(key)
            if waiting is not None and waiter in waiting.waiters:
                waiting.waiters.remove(waiter)
                if not waiting.waiters:
                    del self._waiting[key]
            if not has_leader:
                self._metrics.proposals_failed.labels("no_leader").inc()
                waiter.set_exception(NoLeader("no leader elected within the deadline; retry"))
            else:
                self._metrics.proposals_failed.labels("timeout").inc()
                waiter.set_exception(CommitTimeout(f"not committed within {timeout_s:.3f}s; retry"))

    def leader_changed(self) -> None:
        """Everything in flight is proposed again to the new leader (idempotent)."""
        for key, waiting in self._waiting.items():
            if waiting.proposed_term != -1:
                waiting.proposed_term = -1
                self._queue.append(key)

    def repropose_stale(self) -> None:
        if not self._waiting:
            return
        stale_before = self._clock() - self._config.stale_after_s
        for key, waiting in self._waiting.items():
            if waiting.proposed_term != -1 and waiting.proposed_at < stale_before:
                waiting.proposed_term = -1
                self._queue.append(key)

    def propose(self, core: RaftNode) -> None:
        """Propose what is queued, in order, as few Raft entries as the
        batch bounds allow."""
        max_entries, max_bytes = self._config.max_batch_entries, self._config.max_batch_bytes
        while self._queue:
            payloads: list[bytes] = []
            size = 0
            taken: list[tuple[RequestKey, _Waiting]] = []
            while self._queue and len(payloads) < max_entries:
                key = self._queue[0]
                waiting = self._waiting.get(key)
                if waiting is None or waiting.proposed_term != -1:
                    self._queue.popleft()  # timed out, or already proposed
                    continue
                if payloads and size + len(waiting.payload) > max_bytes:
                    break
                self._queue.popleft()
                payloads.append(waiting.payload)
                taken.append((key, waiting))
                size += len(waiting.payload)
            if not payloads:
                return
            try:
                core.propose([encode_batch(payloads)])
            except ProposalDropped:
                # No leader yet: keep them queued, in order, for the next round.
                self._queue.extendleft(key for key, _ in reversed(taken))
                return
            term, now = core.term, self._clock()
            for _, waiting in taken:
                waiting.proposed_term = term
                waiting.proposed_at = now

    def answer(self, results: list[Applied]) -> None:
        """The ledger applied these: answer whoever waits here."""
        waiting_by_key = self._waiting
        if not waiting_by_key:
            return  # a follower's usual case: nobody here waits
        for result in results:
            if result.key is None:
                continue
            waiting = waiting_by_key.pop(result.key, None)
            if waiting is None:
                continue
            for waiter in waiting.waiters:
                if not waiter.done():
                    waiter.set_result(result)

    def answer_from_store(self) -> None:
        """After a snapshot was installed: the submissions it covers get
        their first answer now."""
        for key in list(self._waiting):
            earlier = self._store.get_request(key)
            if earlier is not None:
                for waiter in self._waiting.pop(key).waiters:
                    if not waiter.done():
                        waiter.set_result(Applied(key, earlier[0], earlier[1], True))

    def fail_all(self, exc: BaseException) -> None:
        for waiting in self._waiting.values():
            for waiter in waiting.waiters:
                if not waiter.done():
                    waiter.set_exception(exc)
        self._waiting.clear()
        self._queue.clear()
