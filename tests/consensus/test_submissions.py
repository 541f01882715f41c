"""Submissions, at two levels.

The runtime's waiting table (``runtime/submissions.py``), with a fake Raft
core and request table: a key names one entry by content (another entry
under a stored or waiting key is IDEMPOTENCY_KEY_REUSED), a refused entry's
answer is its typed refusal (also on a retry, from the request table), and
a deadline or a stop answers definitely only for an entry that never left
the node, OUTCOME_UNKNOWN once it was proposed.

The submissions of one SubmitStream / SubmitBatches call, with a scripted
node: answers are queued as the runtime answers each entry's waiter, a typed error answers an
invalid entry at once, a release entry is checked before it is submitted,
and a client that does not read its answers stops being read once the
stream's limit of outstanding entries is reached."""

from __future__ import annotations

import asyncio

import pytest

from fleetsuit.v1 import consensus_pb2 as pb
from services.consensus.errors import (
    IdempotencyKeyReused,
    InvalidEntry,
    NoLeader,
    OutcomeUnknown,
    ShuttingDown,
    UntrustedKey,
)
from services.consensus.ledger.keys import RequestKey, entry_digest
from services.consensus.ledger.machine import Applied
from services.consensus.ledger_api import SubmissionStream as _Submissions
from services.consensus.metrics import ConsensusMetrics
from services.consensus.raft.types import ProposalDropped, RaftConfig
from services.consensus.runtime import RuntimeConfig, Waiter
from services.consensus.runtime.submissions import Submissions


class _Known:
    def __init__(self) -> None:
        self.keys: set[RequestKey] = set()

    def known(self, key: RequestKey) -> bool:
        return key in self.keys


class ScriptedNode:
    """Keeps each submission's waiter; a test answers them as the runtime would."""

    def __init__(self) -> None:
        self.waiters: dict[RequestKey, Waiter] = {}
        self.submissions = _Known()

    def submit_waiter(self, payload: bytes, key: RequestKey, timeout_s: float, waiter: Waiter) -> None:
        self.waiters[key] = waiter


def _prepare(request: pb.SubmitRequest) -> tuple[bytes, float]:
    if request.entry.WhichOneof("kind") is None:
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
    node.waiters[RequestKey("c", 3)].set_result(Applied(RequestKey("c", 3), 9, 4, False, 2))
    node.waiters[RequestKey("c", 1)].set_exception(OutcomeUnknown("late"))
    await asyncio.sleep(0)
    three, one = await pump.answers.get(), await pump.answers.get()
    assert three is not None and (three.request_id, three.index, three.block_height, three.position) == (3, 9, 4, 2)
    assert not three.outcome_unknown
    assert one is not None and (one.request_id, one.error_code, one.outcome_unknown) == (1, "OUTCOME_UNKNOWN", True)
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
    waiter.set_exception(OutcomeUnknown("late"))
    waiter.set_result(Applied(RequestKey("c", 1), 5, 1, False))
    assert waiter.done()
    first = await pump.answers.get()
    assert first is not None and first.error_code == "OUTCOME_UNKNOWN"
    pump.done_reading()
    assert await pump.answers.get() is None  # no second answer, nothing pending


# ---------------------------------------------------------------- release checks on a stream


def _release(rid: int) -> pb.SubmitRequest:
    entry = pb.LedgerEntry(client_id="c", request_id=rid)
    entry.release_published.component = "fw"
    entry.release_published.sequence_number = rid
    return pb.SubmitRequest(entry=entry)


async def _turns(count: int = 5) -> None:
    """Let the event loop run the tasks ready now, and those they start."""
    for _ in range(count):
        await asyncio.sleep(0)


class _Check:
    """A release check the test lets through, or refuses, entry by entry."""

    def __init__(self) -> None:
        self.asked: list[int] = []
        self.verdicts: dict[int, asyncio.Future[None]] = {}

    async def __call__(self, entry: pb.LedgerEntry) -> None:
        self.asked.append(entry.request_id)
        verdict = asyncio.get_running_loop().create_future()
        self.verdicts[entry.request_id] = verdict
        await verdict


@pytest.mark.asyncio
async def test_a_release_is_submitted_once_its_check_passes_and_a_refusal_is_answered_in_band() -> None:
    node, check = ScriptedNode(), _Check()
    pump = _Submissions(node, _prepare, "stream", limit=2, release_check=check)  # type: ignore[arg-type]
    pump.submit(_release(1))
    pump.submit(_release(2))
    pump.submit(_request(3))  # not a release: not checked
    await _turns()
    assert check.asked == [1, 2] and set(node.waiters) == {RequestKey("c", 3)}
    assert await _blocked(pump)  # entries being checked count as pending
    check.verdicts[1].set_exception(UntrustedKey("not signed by an anchor"))
    check.verdicts[2].set_result(None)
    await _turns()
    refused = await pump.answers.get()
    assert refused is not None and (refused.request_id, refused.error_code) == (1, "UNTRUSTED_KEY")
    assert not refused.outcome_unknown  # refused before proposal: it will never commit
    assert set(node.waiters) == {RequestKey("c", 2), RequestKey("c", 3)}
    node.waiters[RequestKey("c", 2)].set_result(Applied(RequestKey("c", 2), 8, 3, False, 1))
    node.waiters[RequestKey("c", 3)].set_result(Applied(RequestKey("c", 3), 8, 3, False, 2))
    assert [a.request_id for a in (await pump.answers.get(), await pump.answers.get()) if a] == [2, 3]
    pump.done_reading()
    assert await pump.answers.get() is None


@pytest.mark.asyncio
async def test_a_check_still_running_when_the_call_ends_is_dropped() -> None:
    node, check = ScriptedNode(), _Check()
    pump = _Submissions(node, _prepare, "stream", release_check=check)  # type: ignore[arg-type]
    pump.submit(_release(1))
    await asyncio.sleep(0)
    pump.close()
    await asyncio.sleep(0)
    assert check.verdicts[1].cancelled() and node.waiters == {}


# ---------------------------------------------------------------- the runtime's waiting table


class _Box:
    """A waiter that keeps its one answer."""

    def __init__(self) -> None:
        self.result: Applied | None = None
        self.error: BaseException | None = None

    def done(self) -> bool:
        return self.result is not None or self.error is not None

    def set_result(self, result: Applied, /) -> None:
        assert not self.done()
        self.result = result

    def set_exception(self, exception: BaseException, /) -> None:
        assert not self.done()
        self.error = exception


class _Requests:
    """The request table of the ledger store (all Submissions reads)."""

    def __init__(self) -> None:
        self.answers: dict[RequestKey, Applied] = {}

    def get_request(self, key: RequestKey) -> Applied | None:
        return self.answers.get(key)


class _Core:
    """The Raft core as Submissions uses it: propose, or drop without a leader."""

    def __init__(self) -> None:
        self.leader = True
        self.term = 1
        self.proposed: list[bytes] = []

    def propose(self, payloads: list[bytes]) -> list[int]:
        if not self.leader:
            raise ProposalDropped("no leader known")
        self.proposed.extend(payloads)
        return []


KEY = RequestKey("c", 1)
A = pb.LedgerEntry(client_id="c", request_id=1, app=pb.AppEntry(payload=b"A")).SerializeToString()
B = pb.LedgerEntry(client_id="c", request_id=1, app=pb.AppEntry(payload=b"B")).SerializeToString()


class _Table:
    def __init__(self) -> None:
        self.now = 0.0
        self.store = _Requests()
        self.core = _Core()
        self.subs = Submissions(
            RuntimeConfig(RaftConfig(node_id="n1", peers=("n1",))), self.store,  # type: ignore[arg-type]
            ConsensusMetrics(), lambda: self.now,
        )

    def add(self, payload: bytes, timeout_s: float = 1.0) -> tuple[bool, _Box]:
        box = _Box()
        return self.subs.add(payload, KEY, timeout_s, box), box

    def propose(self) -> None:
        self.subs.propose(self.core)  # type: ignore[arg-type]

    def expire(self, after_s: float = 1.0) -> None:
        self.now += after_s
        self.subs.expire_due(self.core.leader)


def _applied(payload: bytes, outcome: str = "", message: str = "", *, duplicate: bool = False) -> Applied:
    return Applied(KEY, 7, 3, duplicate, 2, entry_digest(payload), outcome, message)


def test_a_key_applied_with_other_content_is_refused_and_the_same_content_is_a_duplicate() -> None:
    t = _Table()
    t.store.answers[KEY] = _applied(A, duplicate=True)
    queued, box = t.add(B)
    assert not queued and isinstance(box.error, IdempotencyKeyReused) and box.error.definite
    assert "index 7 (block 3, position 2)" in str(box.error)
    queued, box = t.add(A)
    assert not queued and box.result == _applied(A, duplicate=True)
    assert len(t.subs) == 0


def test_a_key_waiting_with_other_content_is_refused_at_once() -> None:
    t = _Table()
    first_queued, first = t.add(A)
    queued, other = t.add(B)
    assert first_queued and not queued
    assert isinstance(other.error, IdempotencyKeyReused) and "waiting for commit on this node" in str(other.error)
    again_queued, again = t.add(A)  # the same entry joins the wait
    assert again_queued and not first.done() and not again.done()
    t.subs.answer([_applied(A)])
    assert first.result == again.result == _applied(A)


def test_an_applied_entry_of_other_content_under_the_waiting_key_is_key_reuse() -> None:
    """Another client's entry (or an earlier one) under this key was
    applied: this submission is told so, not answered with that entry."""
    t = _Table()
    _, box = t.add(A)
    t.subs.answer([_applied(B)])
    assert isinstance(box.error, IdempotencyKeyReused) and len(t.subs) == 0
    _, box = t.add(A)
    t.subs.answer([_applied(B, "IDEMPOTENCY_KEY_REUSED", "the key c/1 was used for another entry", duplicate=True)])
    assert isinstance(box.error, IdempotencyKeyReused)


def test_a_refused_entry_is_answered_with_its_typed_refusal_also_on_a_retry() -> None:
    t = _Table()
    _, box = t.add(A)
    refused = _applied(A, "UNTRUSTED_KEY", "signed by an unknown key")
    t.subs.answer([refused])
    assert type(box.error) is UntrustedKey and box.error.definite
    assert str(box.error) == "signed by an unknown key"
    t.store.answers[KEY] = refused._replace(duplicate=True)  # the request table keeps the refusal
    queued, retry = t.add(A)
    assert not queued and type(retry.error) is UntrustedKey
    queued, other = t.add(B)  # other content under the key: reuse, not the refusal
    assert not queued and isinstance(other.error, IdempotencyKeyReused)


def test_an_entry_that_never_left_the_node_fails_definitely_at_its_deadline() -> None:
    t = _Table()
    t.core.leader = False
    _, box = t.add(A)
    t.propose()  # dropped: no leader
    assert t.core.proposed == []
    t.expire()
    assert type(box.error) is NoLeader and box.error.definite and "never left this node" in str(box.error)
    assert len(t.subs) == 0
    # A leader known, but the entry still never proposed (say, a transfer held it).
    t.core.leader = True
    _, box = t.add(A)
    t.expire()
    assert type(box.error) is NoLeader and box.error.definite


def test_an_entry_once_proposed_has_an_unknown_outcome_at_its_deadline() -> None:
    """Forwarded (or appended) once, then the leader is lost: the entry may
    still commit, whatever this node sees afterwards."""
    t = _Table()
    _, box = t.add(A)
    t.propose()
    assert len(t.core.proposed) == 1
    t.core.leader = False
    t.subs.leader_changed()  # queued to be proposed again: dropped, no leader
    t.propose()
    t.expire()
    assert type(box.error) is OutcomeUnknown and not box.error.definite
    assert "resubmit with the same key" in str(box.error)


def test_a_stop_answers_definitely_only_what_never_left_the_node() -> None:
    t = _Table()
    _, proposed = t.add(A)
    t.propose()
    t.core.leader = False
    other = _Box()
    t.subs.add(B, RequestKey("c", 2), 1.0, other)
    t.propose()
    t.subs.fail_all(ShuttingDown("node is shutting down"))
    assert type(proposed.error) is OutcomeUnknown and not proposed.error.definite
    assert type(other.error) is ShuttingDown and other.error.definite
    assert len(t.subs) == 0
