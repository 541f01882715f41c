"""The Ledger API's submissions over a real gRPC server (127.0.0.1:0, the
service's interceptor and error table) with a scripted node: an answer
names the entry's position; an error says, in the trailing metadata
``fleetsuit-outcome`` (unary) or ``outcome_unknown`` (stream), whether the
entry may still commit; a release entry is checked before it is submitted,
but not a resubmission of its key; trust anchors are written by the nodes
only."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from typing import TypeVar, cast

import grpc
import pytest

from fleetsuit.grpcutil import insecure_channel
from fleetsuit.rpc import new_server
from fleetsuit.v1 import consensus_pb2 as pb
from fleetsuit.v1 import consensus_pb2_grpc as pb_grpc
from services.consensus.config import ConsensusConfig
from services.consensus.convert import ERRORS
from services.consensus.errors import (
    ConsensusError,
    IdempotencyKeyReused,
    NoLeader,
    OutcomeUnknown,
    UntrustedKey,
)
from services.consensus.ledger.keys import RequestKey
from services.consensus.ledger.machine import Applied
from services.consensus.ledger_api import LedgerServicer, ReleaseCheck
from services.consensus.runtime import ConsensusNode, Waiter

T = TypeVar("T")
BOUND_S = 10.0


class _Known:
    def __init__(self) -> None:
        self.keys: set[RequestKey] = set()

    def known(self, key: RequestKey) -> bool:
        return key in self.keys


class ScriptedNode:
    """Answers each request id as scripted: an ``Applied`` or an error."""

    def __init__(self) -> None:
        self.script: dict[int, Applied | ConsensusError] = {}
        self.submitted: list[RequestKey] = []
        self.submissions = _Known()

    def _answer(self, key: RequestKey) -> Applied | ConsensusError:
        self.submitted.append(key)
        return self.script.get(key.request_id, Applied(key, 10 + key.request_id, 4, False, key.request_id))

    async def submit(self, payload: bytes, key: RequestKey, timeout_s: float) -> Applied:
        answer = self._answer(key)
        if isinstance(answer, ConsensusError):
            raise answer
        return answer

    def submit_waiter(self, payload: bytes, key: RequestKey, timeout_s: float, waiter: Waiter) -> None:
        answer = self._answer(key)
        if isinstance(answer, ConsensusError):
            waiter.set_exception(answer)
        else:
            waiter.set_result(answer)


class Refuse:
    """A release check refusing the sequence numbers in ``refused``."""

    def __init__(self, *refused: int) -> None:
        self.refused = set(refused)
        self.asked: list[int] = []

    async def __call__(self, entry: pb.LedgerEntry) -> None:
        self.asked.append(entry.request_id)
        if entry.release_published.sequence_number in self.refused:
            raise UntrustedKey("not signed by a trust anchor of fw")


async def bounded(aw: Awaitable[T]) -> T:
    return await asyncio.wait_for(aw, BOUND_S)


@asynccontextmanager
async def serving(node: ScriptedNode, check: ReleaseCheck | None = None) -> AsyncIterator[pb_grpc.LedgerStub]:
    config = ConsensusConfig(node_id="n1", listen="127.0.0.1:0", data_dir="unused")
    server, _ = new_server("consensus", ERRORS, None)
    servicer = LedgerServicer(cast(ConsensusNode, node), config, release_check=check)
    pb_grpc.add_LedgerServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with insecure_channel(f"127.0.0.1:{port}") as channel:
            yield pb_grpc.LedgerStub(channel)
    finally:
        await server.stop(None)


def app(rid: int) -> pb.SubmitRequest:
    return pb.SubmitRequest(entry=pb.LedgerEntry(client_id="c", request_id=rid, app=pb.AppEntry(payload=b"x")))


def release(rid: int, sequence_number: int) -> pb.SubmitRequest:
    entry = pb.LedgerEntry(client_id="c", request_id=rid)
    entry.release_published.component = "fw"
    entry.release_published.sequence_number = sequence_number
    return pb.SubmitRequest(entry=entry)


async def refusal(stub: pb_grpc.LedgerStub, request: pb.SubmitRequest) -> tuple[grpc.StatusCode, dict[str, str]]:
    """The status and trailing metadata of a refused unary Submit."""
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await bounded(stub.Submit(request))
    trailing = failed.value.trailing_metadata() or ()
    return failed.value.code(), {str(k): str(v) for k, v in trailing}


@pytest.mark.asyncio
async def test_an_answer_names_the_entry_position_in_its_block() -> None:
    node = ScriptedNode()
    async with serving(node) as stub:
        answer = await bounded(stub.Submit(app(3)))
    assert (answer.index, answer.block_height, answer.position, answer.duplicate) == (13, 4, 3, False)


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("error", "status", "outcome"),
    [
        (OutcomeUnknown("not applied within 5.000s; it was proposed and may still commit"),
         grpc.StatusCode.UNAVAILABLE, "unknown"),
        (NoLeader("no leader elected within 5.000s; it never left this node; retry"),
         grpc.StatusCode.UNAVAILABLE, "definite"),
        (IdempotencyKeyReused("request ('c', 1) was already used for another entry"),
         grpc.StatusCode.ALREADY_EXISTS, "definite"),
        (UntrustedKey("signed by an unknown key"), grpc.StatusCode.FAILED_PRECONDITION, "definite"),
    ],
)
async def test_a_unary_error_says_whether_the_entry_may_still_commit(
    error: ConsensusError, status: grpc.StatusCode, outcome: str
) -> None:
    node = ScriptedNode()
    node.script[1] = error
    async with serving(node) as stub:
        code, trailing = await refusal(stub, app(1))
    assert code is status
    assert trailing["fleetsuit-error-code"] == error.code and trailing["fleetsuit-outcome"] == outcome


@pytest.mark.asyncio
async def test_a_stream_answer_says_whether_the_entry_may_still_commit() -> None:
    node = ScriptedNode()
    node.script[1] = OutcomeUnknown("may still commit")
    node.script[2] = NoLeader("it never left this node")

    async def requests() -> AsyncIterator[pb.SubmitRequest]:
        for rid in (1, 2, 3):
            yield app(rid)

    async with serving(node) as stub:
        answers = {a.request_id: a async for a in stub.SubmitStream(requests())}
    assert (answers[1].error_code, answers[1].outcome_unknown) == ("OUTCOME_UNKNOWN", True)
    assert (answers[2].error_code, answers[2].outcome_unknown) == ("NO_LEADER", False)
    assert (answers[3].error_code, answers[3].index, answers[3].position) == ("", 13, 3)


@pytest.mark.asyncio
async def test_every_release_submission_is_checked_before_it_is_submitted() -> None:
    node, check = ScriptedNode(), Refuse(5)
    async with serving(node, check) as stub:
        code, trailing = await refusal(stub, release(1, 5))
        assert code is grpc.StatusCode.FAILED_PRECONDITION and trailing["fleetsuit-error-code"] == "UNTRUSTED_KEY"
        assert trailing["fleetsuit-outcome"] == "definite" and node.submitted == []
        await bounded(stub.Submit(release(2, 6)))
        await bounded(stub.Submit(app(3)))  # not a release: not checked
        assert check.asked == [1, 2] and node.submitted == [RequestKey("c", 2), RequestKey("c", 3)]
        # A resubmission is checked too (the checker passes a retry of a
        # release in effect, and refuses one that was revoked since).
        node.submissions.keys.add(RequestKey("c", 4))
        code, _ = await refusal(stub, release(4, 5))
        assert code is grpc.StatusCode.FAILED_PRECONDITION and check.asked == [1, 2, 4]


@pytest.mark.asyncio
async def test_a_stream_answers_a_refused_release_in_band() -> None:
    node, check = ScriptedNode(), Refuse(5)

    async def requests() -> AsyncIterator[pb.SubmitRequest]:
        yield release(1, 5)
        yield release(2, 6)

    async with serving(node, check) as stub:
        answers = {a.request_id: a async for a in stub.SubmitStream(requests())}
    assert (answers[1].error_code, answers[1].outcome_unknown) == ("UNTRUSTED_KEY", False)
    assert (answers[2].error_code, answers[2].index) == ("", 12)
    assert node.submitted == [RequestKey("c", 2)]


@pytest.mark.asyncio
async def test_trust_anchors_are_written_by_the_nodes_only() -> None:
    node = ScriptedNode()
    entry = pb.LedgerEntry(client_id="c", request_id=1)
    entry.trust_anchors_set.SetInParent()
    async with serving(node) as stub:
        code, trailing = await refusal(stub, pb.SubmitRequest(entry=entry))
    assert code is grpc.StatusCode.INVALID_ARGUMENT and trailing["fleetsuit-error-code"] == "INVALID_ENTRY"
    assert node.submitted == []


class Hang:
    """A release check that never finishes (a node cut off from the majority
    waiting on its read barrier)."""

    async def __call__(self, entry: pb.LedgerEntry) -> None:
        await asyncio.Event().wait()


@pytest.mark.asyncio
async def test_checks_that_outlast_the_submissions_deadline_are_a_definite_check_unavailable() -> None:
    node = ScriptedNode()
    request = release(1, 5)
    request.timeout_ms = 200
    async with serving(node, Hang()) as stub:
        code, trailing = await refusal(stub, request)
    assert code is grpc.StatusCode.UNAVAILABLE and trailing["fleetsuit-error-code"] == "CHECK_UNAVAILABLE"
    assert trailing["fleetsuit-outcome"] == "definite" and node.submitted == []
