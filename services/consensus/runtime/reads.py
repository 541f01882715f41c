"""The runtime's side of linearizable reads (dissertation §6.4, ReadIndex).

A read gets a fresh context and waits in three stages: queued (to be handed
to the core by the Raft loop), asked (the core will answer with a
``ReadState`` once leadership is confirmed), and confirmed (waiting until the
state machine applied the read index). A read asked but unanswered for a
while (a lost message, a leader change) is asked again under a new context.
Runs on the event loop of the Raft loop; no locks. The clock that dates
asked reads is a parameter (``time.monotonic`` by default) so tests can drive
retries with a fake one; deadlines run on the event loop's timer.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable

from ..errors import ReadTimeout
from ..raft.types import ReadState


class ReadTracker:
    def __init__(self, retry_after_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._retry_after_s = retry_after_s
        self._clock = clock
        self._ids = itertools.count(1)
        self.queued: list[asyncio.Future[int]] = []
        self._asked: dict[bytes, tuple[asyncio.Future[int], float]] = {}
        self._confirmed: list[tuple[int, asyncio.Future[int]]] = []

    def add(self, timeout_s: float) -> asyncio.Future[int]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[int] = loop.create_future()
        self.queued.append(fut)
        timer = loop.call_later(timeout_s, self._expire, fut, timeout_s)
        fut.add_done_callback(lambda _f: timer.cancel())
        return fut

    @staticmethod
    def _expire(fut: asyncio.Future[int], timeout_s: float) -> None:
        if not fut.done():
            fut.set_exception(ReadTimeout(f"read not confirmed within {timeout_s:.3f}s; retry"))

    def take_queued(self) -> list[tuple[bytes, asyncio.Future[int]]]:
        """Reads to hand to the core now, each with a new context."""
        out = []
        for fut in self.queued:
            if not fut.done():
                out.append((next(self._ids).to_bytes(8, "big"), fut))
        self.queued = []
        return out

    def asked(self, context: bytes, fut: asyncio.Future[int]) -> None:
        self._asked[context] = (fut, self._clock())

    def retry_stale(self) -> None:
        before = self._clock() - self._retry_after_s
        for context, (fut, at) in list(self._asked.items()):
            if fut.done():
                del self._asked[context]
            elif at < before:
                del self._asked[context]
                self.queued.append(fut)

    def confirmed(self, states: list[ReadState], applied: int) -> None:
        for state in states:
            item = self._asked.pop(state.context, None)
            if item is not None and not item[0].done():
                self._confirmed.append((state.index, item[0]))
        self.applied(applied)

    def applied(self, applied: int) -> None:
        if not self._confirmed:
            return
        keep = []
        for index, fut in self._confirmed:
            if fut.done():
                continue
            if index <= applied:
                fut.set_result(index)
            else:
                keep.append((index, fut))
        self._confirmed = keep

    def fail_all(self, exc: BaseException) -> None:
        futs = [*self.queued, *(f for f, _ in self._asked.values()), *(f for _, f in self._confirmed)]
        for fut in futs:
            if not fut.done():
                fut.set_exception(exc)
        self.queued, self._asked, self._confirmed = [], {}, []
