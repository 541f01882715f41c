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

What an answer promises (the client's side of idempotency):

- The key names one entry, by content (``entry_digest``): a key applied, or
  waiting here, with other bytes is answered ``IdempotencyKeyReused``; a
  retry with the same bytes gets the first application's answer, and a
  refused entry's retry gets the same refusal (the typed error).
- A deadline (or a stop) is answered by what this node knows of the entry:
  never handed to the Raft core (no leader would take it), it entered no log
  and never will, and the error is definite (``NoLeader``); handed to the
  core at least once (appended here as leader, or forwarded to a leader), it
  may still commit, and the answer is ``OutcomeUnknown``. "Definite" speaks
  for this attempt only: after an unknown outcome, only the ledger's answer
  to a resubmission with the same key settles the entry's fate.

This module does not decide what is applied (``ledger/machine.py``) nor
check releases before proposal (the Ledger API's ``release_check``).
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from ..errors import (
    ConsensusError,
    IdempotencyKeyReused,
    InvalidEntry,
    NoLeader,
    OutcomeUnknown,
    Overloaded,
    refusal,
)
from ..ledger.codec import encode_batch
from ..ledger.keys import RequestKey, entry_digest
from ..ledger.machine import Applied
from ..ledger.store import LedgerStore
from ..metrics import ConsensusMetrics
from ..raft.node import RaftNode
from ..raft.types import ProposalDropped
from .config import RuntimeConfig

KEY_REUSED = IdempotencyKeyReused.code


class Waiter(Protocol):
    """Who hears a submission's answer: an asyncio future, or an object with
    the same three methods that passes the answer on at once."""

    def done(self) -> bool: ...
    def set_result(self, result: Applied, /) -> None: ...
    def set_exception(self, exception: BaseException, /) -> None: ...


@dataclass(slots=True)
class _Waiting:
    payload: bytes
    waiters: list[Waiter] = field(default_factory=list)
    _digest: bytes = b""  # entry_digest(payload), computed when first needed
    proposed_term: int = -1  # term in which it was last proposed (-1: not yet, or again)
    proposed_at: float = 0.0  # clock time of the last proposal
    # Handed to the Raft core at least once (appended as leader, or forwarded
    # to one): from then on it may commit whatever this node sees next.
    proposed: bool = False

    @property
    def digest(self) -> bytes:
        if not self._digest:
            self._digest = entry_digest(self.payload)
        return self._digest


def _describe(key: RequestKey | None) -> str:
    return "the request" if key is None else f"request ({key.client_id!r}, {key.request_id})"


def _verdict(result: Applied, digest: bytes) -> Applied | ConsensusError:
    """What a submission of bytes with ``digest`` is answered, given the
    ledger's ``result`` for its key: the result itself when that entry is
    this one and in effect, else the typed error."""
    if result.digest != digest:
        return IdempotencyKeyReused(
            f"{_describe(result.key)} was already used for another entry, applied at index "
            f"{result.index} (block {result.block_height}, position {result.position}); "
            "nothing of this one was applied"
        )
    if not result.outcome:
        return result
    if result.outcome == KEY_REUSED:
        return IdempotencyKeyReused(result.message or f"{_describe(result.key)} was used for another entry")
    return refusal(result.outcome, result.message)


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

    def known(self, key: RequestKey) -> bool:
        """Whether ``key`` was applied here, or waits here."""
        return key in self._waiting or self._store.get_request(key) is not None

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
            _hand(waiter, self._settle(earlier, entry_digest(payload)))
            return False
        waiting = self._waiting.get(key)
        if waiting is None:
            if len(self._waiting) >= self._config.max_pending:
                self._metrics.proposals_failed.labels("overloaded").inc()
                waiter.set_exception(Overloaded(
                    f"{len(self._waiting)} submissions are already waiting for commit on this node; retry later"
                ))
                return False
            self._waiting[key] = _Waiting(payload, [waiter])
            self._queue.append(key)
        elif waiting.payload != payload:
            waiter.set_exception(IdempotencyKeyReused(
                f"{_describe(key)} is waiting for commit on this node with another entry; "
                "nothing of this one was submitted"
            ))
            return False
        else:
            waiting.waiters.append(waiter)
        self._seq += 1
        heapq.heappush(self._deadlines, (self._clock() + timeout_s, self._seq, key, waiter, timeout_s))
        return True

    def expire_due(self, has_leader: bool) -> None:
        """Fail the submissions whose deadline has passed (at tick precision):
        definitely when the entry never left this node, else with an
        unknown outcome."""
        deadlines = self._deadlines
        now = self._clock()
        while deadlines and deadlines[0][0] <= now:
            _, _, key, waiter, timeout_s = heapq.heappop(deadlines)
            if waiter.done():
                continue
            waiting = self._waiting.get(key)
            # A waiter not done is in its key's waiting list; were it not,
            # "unknown" is the answer that cannot mislead.
            proposed = waiting is None or waiting.proposed
            if waiting is not None and waiter in waiting.waiters:
                waiting.waiters.remove(waiter)
                if not waiting.waiters:
                    del self._waiting[key]
            if proposed:
                self._metrics.proposals_failed.labels("outcome_unknown").inc()
                waiter.set_exception(OutcomeUnknown(
                    f"not applied within {timeout_s:.3f}s"
                    f"{'' if has_leader else ' (no leader now)'}; it was proposed and may still commit; "
                    "resubmit with the same key"
                ))
            elif not has_leader:
                self._metrics.proposals_failed.labels("no_leader").inc()
                waiter.set_exception(NoLeader(
                    f"no leader elected within {timeout_s:.3f}s; it never left this node; retry"
                ))
            else:
                # A leader known, yet no proposal taken (a leadership transfer
                # held them all deadline long): nothing left this node either.
                self._metrics.proposals_failed.labels("no_leader").inc()
                waiter.set_exception(NoLeader(
                    f"the leader took no proposal within {timeout_s:.3f}s; it never left this node; retry"
                ))

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
                waiting.proposed = True

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
            # The usual case first: this entry (its very bytes), applied and
            # in effect; hashing is for the rest.
            entry = result.entry
            answer = (result if not result.outcome and (entry is waiting.payload or entry == waiting.payload)
                      else self._settle(result, waiting.digest))
            for waiter in waiting.waiters:
                if not waiter.done():
                    _hand(waiter, answer)

    def answer_from_store(self) -> None:
        """After a snapshot was installed: the submissions it covers get
        their first answer now."""
        for key in list(self._waiting):
            earlier = self._store.get_request(key)
            if earlier is not None:
                waiting = self._waiting.pop(key)
                answer = self._settle(earlier, waiting.digest)
                for waiter in waiting.waiters:
                    if not waiter.done():
                        _hand(waiter, answer)

    def _settle(self, result: Applied, digest: bytes) -> Applied | ConsensusError:
        if result.outcome == KEY_REUSED and result.digest == digest and result.key is not None:
            # This entry's bytes are the first application's (whose digest a
            # refused copy carries): the copy was someone else's submission,
            # and this one's answer is the first application's.
            first = self._store.get_request(result.key)
            if first is not None and first.outcome != KEY_REUSED:
                result = first
        return _verdict(result, digest)

    def fail_all(self, exc: ConsensusError) -> None:
        """Answer everything waiting (the node stops): ``exc`` when the entry
        never left this node, else an unknown outcome."""
        for key, waiting in self._waiting.items():
            error = exc
            if waiting.proposed and exc.definite:
                error = OutcomeUnknown(
                    f"{exc}; {_describe(key)} was proposed and may still commit; resubmit with the same key"
                )
            for waiter in waiting.waiters:
                if not waiter.done():
                    waiter.set_exception(error)
        self._waiting.clear()
        self._queue.clear()


def _hand(waiter: Waiter, answer: Applied | ConsensusError) -> None:
    if isinstance(answer, ConsensusError):
        waiter.set_exception(answer)
    else:
        waiter.set_result(answer)
