"""A Ledger server that answers every Submit at once, committing nothing: the
ceiling of Python gRPC itself on this machine, measured beside fleetsuit and
etcd so the consensus figures can be read against it.

``python -m bench.noop_ledger PORT`` serves until SIGTERM.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator

import grpc

from fleetsuit.rpc import new_server
from fleetsuit.v1 import consensus_pb2 as pb
from fleetsuit.v1 import consensus_pb2_grpc as pb_grpc


class NoopLedger(pb_grpc.LedgerServicer):
    async def Submit(self, request: pb.SubmitRequest, context: grpc.aio.ServicerContext) -> pb.SubmitResponse:  # noqa: N802
        return pb.SubmitResponse(index=1, block_height=1)

    async def SubmitStream(  # noqa: N802
        self, request_iterator: AsyncIterator[pb.SubmitRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.SubmitStreamResponse]:
        async for request in request_iterator:
            yield pb.SubmitStreamResponse(request_id=request.entry.request_id, index=1, block_height=1)

    async def SubmitBatches(  # noqa: N802
        self, request_iterator: AsyncIterator[pb.SubmitBatch], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.SubmitBatchAnswers]:
        async for batch in request_iterator:
            yield pb.SubmitBatchAnswers(answers=[
                pb.SubmitStreamResponse(client_id=r.entry.client_id, request_id=r.entry.request_id,
                                        index=1, block_height=1)
                for r in batch.requests
            ])

    async def Status(self, request: pb.StatusRequest, context: grpc.aio.ServicerContext) -> pb.StatusResponse:  # noqa: N802
        return pb.StatusResponse(node_id="noop", role="leader", leader_id="noop")


async def serve(port: int) -> None:
    server, _health = new_server("noop-ledger", {}, None)
    pb_grpc.add_LedgerServicer_to_server(NoopLedger(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(0.5)


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1])))
