"""SubmitBatcher reports what the node says of each entry: its error code
and whether the outcome is known (``outcome_unknown`` on the answer):
OUTCOME_UNKNOWN may still commit, IDEMPOTENCY_KEY_REUSED and NO_LEADER
never will. Against a scripted SubmitBatches on a real in-process server."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
import pytest_asyncio

from fleetsuit.grpcutil import insecure_channel
from fleetsuit.ledger_client import SubmitBatcher, SubmitFailed
from fleetsuit.v1 import consensus_pb2 as pb
from fleetsuit.v1 import consensus_pb2_grpc as pb_grpc

# payload -> (error code, outcome unknown)
SCRIPT = {
    b"slow": ("OUTCOME_UNKNOWN", True),
    b"reused": ("IDEMPOTENCY_KEY_REUSED", False),
    b"leaderless": ("NO_LEADER", False),
}


class ScriptedLedger(pb_grpc.LedgerServicer):
    async def SubmitBatches(  # noqa: N802
        self, request_iterator: AsyncIterator[pb.SubmitBatch], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.SubmitBatchAnswers]:
        async for batch in request_iterator:
            answers = []
            for r in batch.requests:
                code, unknown = SCRIPT.get(r.entry.app.payload, ("", False))
                answers.append(pb.SubmitStreamResponse(
                    client_id=r.entry.client_id, request_id=r.entry.request_id, index=5, block_height=2,
                    error_code=code, error_message="scripted" if code else "", outcome_unknown=unknown))
            yield pb.SubmitBatchAnswers(answers=answers)


@pytest_asyncio.fixture
async def endpoint() -> AsyncIterator[str]:
    server = grpc.aio.server()
    pb_grpc.add_LedgerServicer_to_server(ScriptedLedger(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


@pytest.mark.asyncio
@pytest.mark.parametrize(("payload", "code", "definite"), [
    (b"slow", "OUTCOME_UNKNOWN", False),
    (b"reused", "IDEMPOTENCY_KEY_REUSED", True),
    (b"leaderless", "NO_LEADER", True),
])
async def test_a_failed_entry_carries_its_code_and_whether_its_outcome_is_known(
    endpoint: str, payload: bytes, code: str, definite: bool
) -> None:
    async with insecure_channel(endpoint) as channel:
        batcher = SubmitBatcher(pb_grpc.LedgerStub(channel), client_id="ci")
        try:
            with pytest.raises(SubmitFailed) as caught:
                await batcher.submit(pb.LedgerEntry(request_id=1, app=pb.AppEntry(payload=payload)))
            ok = await batcher.submit(pb.LedgerEntry(request_id=2, app=pb.AppEntry(payload=b"fine")))
        finally:
            await batcher.close()
    assert (caught.value.code, caught.value.message, caught.value.definite) == (code, "scripted", definite)
    assert str(caught.value) == f"{code}: scripted"
    assert ok.index == 5 and not ok.error_code
