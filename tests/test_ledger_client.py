"""SubmitBatcher against a real in-process gRPC server with a scripted Ledger:
messages stay under the byte bound, answers reach their callers by key,
error codes raise SubmitFailed, and a stream the server cuts fails what was
in flight with StreamBroken while the next submit opens a new stream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
import pytest_asyncio

from fleetsuit.grpcutil import insecure_channel
from fleetsuit.ledger_client import StreamBroken, SubmitBatcher, SubmitFailed
from fleetsuit.v1 import consensus_pb2 as pb
from fleetsuit.v1 import consensus_pb2_grpc as pb_grpc


class ScriptedLedger(pb_grpc.LedgerServicer):
    """Answers every request in reverse order of each message; payload b"bad"
    gets an error; payload b"cut" aborts the stream without answering."""

    def __init__(self) -> None:
        self.message_sizes: list[int] = []
        self.streams = 0

    async def SubmitBatches(  # noqa: N802
        self, request_iterator: AsyncIterator[pb.SubmitBatch], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.SubmitBatchAnswers]:
        self.streams += 1
        async for batch in request_iterator:
            self.message_sizes.append(batch.ByteSize())
            answers = []
            for r in reversed(batch.requests):
                if r.entry.app.payload == b"cut":
                    await context.abort(grpc.StatusCode.UNAVAILABLE, "cut")
                error = "INVALID_ENTRY" if r.entry.app.payload == b"bad" else ""
                answers.append(pb.SubmitStreamResponse(
                    client_id=r.entry.client_id, request_id=r.entry.request_id,
                    index=r.entry.request_id + 1000, block_height=1, error_code=error,
                    error_message="scripted" if error else ""))
            yield pb.SubmitBatchAnswers(answers=answers)


@pytest_asyncio.fixture
async def ledger() -> AsyncIterator[tuple[ScriptedLedger, str]]:
    server = grpc.aio.server()
    servicer = ScriptedLedger()
    pb_grpc.add_LedgerServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield servicer, f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


def _app(payload: bytes) -> pb.LedgerEntry:
    return pb.LedgerEntry(app=pb.AppEntry(payload=payload))


@pytest.mark.asyncio
async def test_messages_stay_under_the_byte_bound_and_answers_find_their_callers(
    ledger: tuple[ScriptedLedger, str],
) -> None:
    servicer, address = ledger
    channel = insecure_channel(address)
    batcher = SubmitBatcher(pb_grpc.LedgerStub(channel), client_id="c", max_batch_bytes=100_000)
    try:
        answers = await asyncio.gather(*(batcher.submit(_app(bytes([i]) * 30_000)) for i in range(20)))
        assert [a.request_id for a in answers] == list(range(1, 21))  # each caller its own
        assert all(a.index == a.request_id + 1000 for a in answers)
        assert max(servicer.message_sizes) <= 100_000
        assert len(servicer.message_sizes) >= 6  # 20 × 30 kB cannot fit in fewer
        assert sum(servicer.message_sizes) > 20 * 30_000
    finally:
        await batcher.close()
        await channel.close()


@pytest.mark.asyncio
async def test_an_error_code_fails_only_its_entry(ledger: tuple[ScriptedLedger, str]) -> None:
    _, address = ledger
    channel = insecure_channel(address)
    batcher = SubmitBatcher(pb_grpc.LedgerStub(channel), client_id="c")
    try:
        good, bad = await asyncio.gather(
            batcher.submit(_app(b"good")), batcher.submit(_app(b"bad")), return_exceptions=True
        )
        assert isinstance(good, pb.SubmitStreamResponse) and good.index == good.request_id + 1000
        assert isinstance(bad, SubmitFailed) and bad.code == "INVALID_ENTRY"
    finally:
        await batcher.close()
        await channel.close()


@pytest.mark.asyncio
async def test_a_cut_stream_fails_in_flight_entries_and_the_next_submit_reconnects(
    ledger: tuple[ScriptedLedger, str],
) -> None:
    servicer, address = ledger
    channel = insecure_channel(address)
    batcher = SubmitBatcher(pb_grpc.LedgerStub(channel), client_id="c")
    try:
        results = await asyncio.gather(
            batcher.submit(_app(b"a")), batcher.submit(_app(b"cut")), return_exceptions=True
        )
        assert all(isinstance(r, StreamBroken) for r in results), results
        after = await asyncio.wait_for(batcher.submit(_app(b"after")), 10)
        assert after.index == after.request_id + 1000
        assert servicer.streams == 2
    finally:
        await batcher.close()
        await channel.close()


@pytest.mark.asyncio
async def test_a_closed_batcher_refuses_submissions(ledger: tuple[ScriptedLedger, str]) -> None:
    _, address = ledger
    channel = insecure_channel(address)
    batcher = SubmitBatcher(pb_grpc.LedgerStub(channel))
    await batcher.close()
    with pytest.raises(RuntimeError):
        await batcher.submit(_app(b"late"))
    await channel.close()
