"""The runtime's ReadIndex bookkeeping (dissertation §6.4), driven by hand:
the test plays the Raft loop (take_queued, asked, confirmed, applied,
retry_stale) and moves a fake clock. Only the deadline test runs the event
loop's timer, with a short real timeout."""

from __future__ import annotations

import asyncio

import pytest

from services.consensus.errors import ReadTimeout, ShuttingDown
from services.consensus.raft.types import ReadState
from services.consensus.runtime.reads import ReadTracker

RETRY_AFTER_S = 1.0
LONG_S = 60.0  # a deadline no test reaches


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def tracker_and_clock() -> tuple[ReadTracker, FakeClock]:
    clock = FakeClock()
    return ReadTracker(RETRY_AFTER_S, clock=clock), clock


def ask_queued(tracker: ReadTracker) -> list[tuple[bytes, asyncio.Future[int]]]:
    """What the Raft loop does each round: hand every queued read to the core."""
    taken = tracker.take_queued()
    for context, fut in taken:
        tracker.asked(context, fut)
    return taken


@pytest.mark.asyncio
async def test_a_read_resolves_once_confirmed_and_applied_with_its_index() -> None:
    tracker, _ = tracker_and_clock()
    fut = tracker.add(LONG_S)
    [(context, taken)] = ask_queued(tracker)
    assert taken is fut
    assert not fut.done()  # asked, not yet confirmed
    tracker.confirmed([ReadState(7, context)], applied=7)
    assert fut.done()
    assert fut.result() == 7


@pytest.mark.asyncio
async def test_applied_alone_does_not_resolve_an_unconfirmed_read() -> None:
    tracker, _ = tracker_and_clock()
    fut = tracker.add(LONG_S)
    ask_queued(tracker)
    tracker.applied(1_000)
    assert not fut.done()


@pytest.mark.asyncio
async def test_a_confirmed_read_waits_until_applied_reaches_its_index() -> None:
    tracker, _ = tracker_and_clock()
    fut = tracker.add(LONG_S)
    [(context, _)] = ask_queued(tracker)
    tracker.confirmed([ReadState(10, context)], applied=8)
    assert not fut.done()
    tracker.applied(9)
    assert not fut.done()
    tracker.applied(12)  # applied may jump past the read index
    assert fut.result() == 10  # the read index, not the applied index


@pytest.mark.asyncio
async def test_reads_confirmed_together_resolve_as_applied_passes_each_index() -> None:
    tracker, _ = tracker_and_clock()
    low, high = tracker.add(LONG_S), tracker.add(LONG_S)
    (ctx_low, _), (ctx_high, _) = ask_queued(tracker)
    tracker.confirmed([ReadState(5, ctx_low), ReadState(9, ctx_high)], applied=4)
    tracker.applied(5)
    assert low.result() == 5
    assert not high.done()
    tracker.applied(9)
    assert high.result() == 9


@pytest.mark.asyncio
async def test_each_read_is_handed_out_under_its_own_context() -> None:
    tracker, _ = tracker_and_clock()
    futs = [tracker.add(LONG_S) for _ in range(3)]
    taken = tracker.take_queued()
    assert [f for _, f in taken] == futs
    assert len({c for c, _ in taken}) == 3
    assert tracker.take_queued() == []  # handed out once


@pytest.mark.asyncio
async def test_a_read_state_for_an_unknown_context_is_ignored() -> None:
    tracker, _ = tracker_and_clock()
    fut = tracker.add(LONG_S)
    [(context, _)] = ask_queued(tracker)
    tracker.confirmed([ReadState(3, b"not-asked")], applied=3)
    assert not fut.done()
    tracker.confirmed([ReadState(3, context)], applied=3)
    assert fut.result() == 3


@pytest.mark.asyncio
async def test_a_second_read_state_for_the_same_context_is_ignored() -> None:
    tracker, _ = tracker_and_clock()
    fut = tracker.add(LONG_S)
    [(context, _)] = ask_queued(tracker)
    tracker.confirmed([ReadState(4, context)], applied=3)
    tracker.confirmed([ReadState(2, context)], applied=3)  # a duplicate answer
    assert not fut.done()  # not resolved at the duplicate's lower index
    tracker.applied(4)
    assert fut.result() == 4


@pytest.mark.asyncio
async def test_a_read_asked_within_retry_after_is_not_retried() -> None:
    tracker, clock = tracker_and_clock()
    tracker.add(LONG_S)
    ask_queued(tracker)
    clock.now += RETRY_AFTER_S  # not yet older than retry_after
    tracker.retry_stale()
    assert tracker.take_queued() == []


@pytest.mark.asyncio
async def test_a_stale_read_is_asked_again_under_a_new_context() -> None:
    tracker, clock = tracker_and_clock()
    fut = tracker.add(LONG_S)
    [(old, _)] = ask_queued(tracker)
    clock.now += RETRY_AFTER_S + 0.01
    tracker.retry_stale()
    assert tracker.queued == [fut]
    [(new, again)] = ask_queued(tracker)
    assert again is fut
    assert new != old
    # A late answer to the lost round does not count (the leader may have
    # changed since); the answer under the new context does.
    tracker.confirmed([ReadState(6, old)], applied=6)
    assert not fut.done()
    tracker.confirmed([ReadState(8, new)], applied=8)
    assert fut.result() == 8


@pytest.mark.asyncio
async def test_only_reads_asked_before_the_cutoff_are_retried() -> None:
    tracker, clock = tracker_and_clock()
    early = tracker.add(LONG_S)
    ask_queued(tracker)
    clock.now += RETRY_AFTER_S / 2
    late = tracker.add(LONG_S)
    [(late_ctx, _)] = ask_queued(tracker)
    clock.now += RETRY_AFTER_S / 2 + 0.01
    tracker.retry_stale()
    assert tracker.queued == [early]
    tracker.confirmed([ReadState(2, late_ctx)], applied=2)
    assert late.result() == 2


@pytest.mark.asyncio
async def test_the_deadline_fails_the_read_with_read_timeout() -> None:
    tracker = ReadTracker(RETRY_AFTER_S)
    fut = tracker.add(0.02)
    [(context, _)] = ask_queued(tracker)
    with pytest.raises(ReadTimeout):
        await asyncio.wait_for(fut, timeout=5.0)
    # A late confirmation of an expired read is dropped, not set twice.
    tracker.confirmed([ReadState(1, context)], applied=1)
    assert isinstance(fut.exception(), ReadTimeout)


@pytest.mark.asyncio
async def test_a_read_that_resolves_in_time_is_not_failed_by_its_deadline() -> None:
    tracker = ReadTracker(RETRY_AFTER_S)
    fut = tracker.add(0.02)
    [(context, _)] = ask_queued(tracker)
    tracker.confirmed([ReadState(1, context)], applied=1)
    await asyncio.sleep(0.05)  # past the deadline: its timer was cancelled
    assert fut.result() == 1


@pytest.mark.asyncio
async def test_a_cancelled_read_is_skipped_and_never_set() -> None:
    tracker, clock = tracker_and_clock()
    gone, kept = tracker.add(LONG_S), tracker.add(LONG_S)
    gone.cancel()
    assert [f for _, f in tracker.take_queued()] == [kept]

    # Cancelled once asked: the answer for it is dropped without error.
    fut = tracker.add(LONG_S)
    [(context, _)] = ask_queued(tracker)
    fut.cancel()
    tracker.confirmed([ReadState(3, context)], applied=3)
    assert fut.cancelled()

    # Cancelled once confirmed: applied() passes over it.
    fut = tracker.add(LONG_S)
    [(context, _)] = ask_queued(tracker)
    tracker.confirmed([ReadState(5, context)], applied=4)
    fut.cancel()
    tracker.applied(5)
    assert fut.cancelled()

    # Cancelled once asked and then stale: not asked again.
    fut = tracker.add(LONG_S)
    ask_queued(tracker)
    fut.cancel()
    clock.now += RETRY_AFTER_S + 0.01
    tracker.retry_stale()
    assert tracker.take_queued() == []


@pytest.mark.asyncio
async def test_fail_all_fails_reads_in_every_stage_and_forgets_them() -> None:
    tracker, clock = tracker_and_clock()
    confirmed = tracker.add(LONG_S)
    asked = tracker.add(LONG_S)
    (confirmed_ctx, _), (asked_ctx, _) = ask_queued(tracker)
    tracker.confirmed([ReadState(9, confirmed_ctx)], applied=1)
    queued = tracker.add(LONG_S)
    already_done = tracker.add(LONG_S)
    already_done.cancel()

    exc = ShuttingDown("node is shutting down")
    tracker.fail_all(exc)
    for fut in (queued, asked, confirmed):
        assert fut.exception() is exc
    assert already_done.cancelled()

    # Nothing is left in any stage: no read is handed out, retried or resolved.
    assert tracker.queued == []
    assert tracker._asked == {}
    assert tracker._confirmed == []
    clock.now += RETRY_AFTER_S + 0.01
    tracker.retry_stale()
    assert tracker.take_queued() == []
    tracker.confirmed([ReadState(9, asked_ctx)], applied=9)  # late answers: no error

    # The tracker still serves reads afterwards.
    fut = tracker.add(LONG_S)
    [(context, _)] = ask_queued(tracker)
    tracker.confirmed([ReadState(10, context)], applied=10)
    assert fut.result() == 10
