"""The submissions of one SubmitStream / SubmitBatches call, with a scripted
node: answers are queued as the runtime answers each entry's waiter, a typed error answers an
invalid entry at once, and a client that does not read its answers stops
being read once the stream's limit of outstanding entries is reached."""

from __future__ import annotations

import asyncio

import pytest

from fleetsuit.v1 import consensus_pb2 as pb
from services.consensus.errors import CommitTimeout, InvalidEntry
from services.consensus.ledger.keys import RequestKey
from services.consensus.ledger.machine import Applied
from services.consensus.ledger_api import SubmissionStream as _Submissions
from services.consensus.runtime import Waiter


class ScriptedNode:
    """Keeps each submission's waiter; a test answers them as the runtime would."""

    def __init__(self) -> None:
        self.waiters: dict[RequestKey, Waiter] = {}

    def submit_waiter(self, payload: bytes, key: RequestKey, timeout_s: float, waiter: Waiter) -> None:
        self.waiters[key] = waiter


def _prepare(request: pb.SubmitRequest) -> tuple[bytes, float]:
    if not request.entry.HasField("app"):
        raise InvalidEntry("no kind")
    return request.entry.SerializeToString(), 1.0


def _request(rid: int, valid: bool = True) -> pb.SubmitRequest:
    entry = pb.LedgerEntry(client_id="c", request_id=rid)
    if valid:
        entry.app.payload = b"x"
    return pb.SubmitRequest(entry=entry)


async def _blocked(pump: _Submissions) -> bool:
    try:
        await asyncio.wait_for(pump.room(), 0.05)
    except TimeoutError:
        return True
    return False


@pytest.mark.asyncio
async def test_answers_follow_resolution_and_invalid_entries_answer_at_once() -> None:
    node = ScriptedNode()
    pump = _Submissions(node, _prepare, "stream")  # type: ignore[arg-type]
    pump.submit(_request(1))
    pump.submit(_request(2, valid=False))
    pump.submit(_request(3))
    assert (await pump.answers.get()).error_code == "INVALID_ENTRY"  # type: ignore[union-attr]
    node.waiters[RequestKey("c", 3)].set_result(Applied(RequestKey("c", 3), 9, 4, False))
    node.waiters[RequestKey("c", 1)].set_exception(CommitTimeout("late"))
    await asyncio.sleep(0)
    three, one = await pump.answers.get(), await pump.answers.get()
    assert three is not None and (three.request_id, three.index, three.block_height) == (3, 9, 4)
    assert one is not None and (one.request_id, one.error_code) == (1, "COMMIT_TIMEOUT")
    pump.done_reading()
    assert await pump.answers.get() is None  # nothing pending: the call ends


@pytest.mark.asyncio
async def test_a_client_that_does_not_read_stops_being_read_at_the_limit() -> None:
    node = ScriptedNode()
    pump = _Submissions(node, _prepare, "stream", limit=3)  # type: ignore[arg-type]
    for rid in (1, 2):
        await pump.room()
        pump.submit(_request(rid))
    assert not await _blocked(pump)
    pump.submit(_request(3))
    assert await _blocked(pump)  # three pending
    node.waiters[RequestKey("c", 1)].set_result(Applied(RequestKey("c", 1), 5, 1, False))
    await asyncio.sleep(0)
    assert await _blocked(pump)  # two pending and one answer not yet sent
    pump.answers.get_nowait()
    pump.taken()  # the stream sent it
    assert not await _blocked(pump)


@pytest.mark.asyncio
async def test_an_entry_is_answered_once_even_if_its_waiter_is_answered_twice() -> None:
    """A deadline that fires just before the entry applies: the stream
    carries the first answer only, and the entry stops counting as pending."""
    node = ScriptedNode()
    pump = _Submissions(node, _prepare, "stream")  # type: ignore[arg-type]
    pump.submit(_request(1))
    waiter = node.waiters[RequestKey("c", 1)]
    assert not waiter.done()
    waiter.set_exception(CommitTimeout("late"))
    waiter.set_result(Applied(RequestKey("c", 1), 5, 1, False))
    assert waiter.done()
    first = await pump.answers.get()
    assert first is not None and first.error_code == "COMMIT_TIMEOUT"
    pump.done_reading()
    assert await pump.answers.get() is None  # no second answer, nothing pending
