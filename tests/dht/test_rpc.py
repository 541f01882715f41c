"""The dht behind ``fleetsuit.rpc``'s interceptor, over real gRPC on
127.0.0.1:0: a raised dht error leaves as a gRPC status with its stable code
in the trailing metadata, Busy keeps its retry-after hint, and every call is
counted by method and status."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest
import pytest_asyncio
from prometheus_client import CollectorRegistry

from fleetsuit.v1 import dht_pb2, dht_pb2_grpc
from services.dht import convert
from services.dht.config import MIB, DhtConfig
from services.dht.content import content_id_of
from services.dht.errors import NotFound
from services.dht.kv import MemoryKeyValue
from services.dht.metrics import DhtMetrics
from services.dht.node import DhtNode
from services.dht.routing import Contact, node_id_from_name
from services.dht.server import DhtDeps, build_server
from services.dht.store import BlobStore
from tests.dht.test_service import CHUNK, payload, put


@dataclass
class Served:
    config: DhtConfig
    node: DhtNode
    registry: CollectorRegistry
    channel: grpc.aio.Channel

    def handled(self, service: str, method: str, code: str) -> float:
        labels = {"grpc_service": service, "grpc_method": method, "grpc_code": code}
        value = self.registry.get_sample_value("fleetsuit_grpc_server_handled_total", labels)
        return value or 0.0


@pytest_asyncio.fixture
async def served() -> AsyncIterator[Served]:
    config = DhtConfig(
        node_id="served", listen="127.0.0.1:0", chunk_bytes=CHUNK,
        upload_bytes_per_s=MIB, upload_burst_bytes=CHUNK,
    ).validate()  # fmt: skip
    registry = CollectorRegistry()
    deps = DhtDeps(
        store=BlobStore(MemoryKeyValue(), 64 * MIB),
        metrics=DhtMetrics(registry),
        rng=random.Random(0),
    )
    server, port = build_server(config, deps)
    await server.start()
    assert deps.node is not None
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Served(config, deps.node, registry, channel)
    finally:
        await channel.close()
        await server.stop(None)
        await deps.node.close()


def trailing(exc: grpc.aio.AioRpcError) -> dict[str, str]:
    return {key: str(value) for key, value in exc.trailing_metadata() or ()}


@pytest.mark.asyncio
async def test_not_found_leaves_as_a_status_with_its_code_in_the_trailing_metadata(
    served: Served,
) -> None:
    stub = dht_pb2_grpc.DhtStub(served.channel)
    cid = content_id_of(b"nobody has this")
    with pytest.raises(grpc.aio.AioRpcError) as unary:
        await stub.Stat(dht_pb2.BlobStatRequest(content_id=cid))
    assert unary.value.code() == grpc.StatusCode.NOT_FOUND
    assert trailing(unary.value)[convert.ERROR_CODE_KEY] == "DHT_NOT_FOUND"
    assert (unary.value.details() or "").startswith("DHT_NOT_FOUND: ")
    with pytest.raises(grpc.aio.AioRpcError) as streamed:
        async for _msg in stub.Get(dht_pb2.BlobGetRequest(content_id=cid)):
            pass
    assert streamed.value.code() == grpc.StatusCode.NOT_FOUND
    assert trailing(streamed.value)[convert.ERROR_CODE_KEY] == "DHT_NOT_FOUND"


@pytest.mark.asyncio
async def test_a_malformed_request_is_invalid_argument_with_its_code(served: Served) -> None:
    stub = dht_pb2_grpc.DhtStub(served.channel)
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await stub.Pin(dht_pb2.BlobPinRequest(content_id="md5:abc"))
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert trailing(bad.value)[convert.ERROR_CODE_KEY] == "DHT_INVALID_CONTENT_ID"
    peer = dht_pb2_grpc.DhtPeerStub(served.channel)
    with pytest.raises(grpc.aio.AioRpcError) as short_key:
        await peer.FindNode(dht_pb2.DhtFindNodeRequest(target=b"short"))
    assert short_key.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert trailing(short_key.value)[convert.ERROR_CODE_KEY] == "DHT_INVALID_ARGUMENT"


@pytest.mark.asyncio
async def test_busy_keeps_its_retry_after_hint_beside_its_code(served: Served) -> None:
    node = served.node
    # Every upload slot taken, with half a second of uploads reserved ahead.
    node._uploads = served.config.max_uploads
    assert node._upload_limit is not None
    node._upload_limit.reserve(CHUNK + MIB // 2, now=node.clock())
    asker = Contact(node_id_from_name("asker"), "127.0.0.1:1")
    peer = dht_pb2_grpc.DhtPeerStub(served.channel)
    with pytest.raises(grpc.aio.AioRpcError) as busy:
        await peer.FetchChunk(
            dht_pb2.DhtFetchChunkRequest(
                sender=convert.contact_to_pb(asker), key=bytes(32), index=0
            )
        )
    assert busy.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    metadata = trailing(busy.value)
    assert metadata[convert.ERROR_CODE_KEY] == "DHT_BUSY"
    assert 0 < int(metadata[convert.RETRY_AFTER_KEY]) <= 500
    assert served.handled("fleetsuit.v1.DhtPeer", "FetchChunk", "RESOURCE_EXHAUSTED") == 1


@pytest.mark.asyncio
async def test_every_call_is_counted_by_method_and_status(served: Served) -> None:
    stub = dht_pb2_grpc.DhtStub(served.channel)
    data = payload(3 * CHUNK, seed=2)
    cid = await put(stub, data)
    got = b"".join([m.data async for m in stub.Get(dht_pb2.BlobGetRequest(content_id=cid))])
    assert got == data
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.Stat(dht_pb2.BlobStatRequest(content_id=content_id_of(b"nobody")))
    assert served.handled("fleetsuit.v1.Dht", "Put", "OK") == 1
    assert served.handled("fleetsuit.v1.Dht", "Get", "OK") == 1
    assert served.handled("fleetsuit.v1.Dht", "Stat", "NOT_FOUND") == 1
    seconds = served.registry.get_sample_value(
        "fleetsuit_grpc_server_handling_seconds_count",
        {"grpc_service": "fleetsuit.v1.Dht", "grpc_method": "Get"},
    )
    assert seconds == 1


def test_an_error_passed_on_from_peer_to_peer_is_not_prefixed_twice() -> None:
    failed = grpc.aio.AioRpcError(
        grpc.StatusCode.NOT_FOUND,
        grpc.aio.Metadata(),
        grpc.aio.Metadata((convert.ERROR_CODE_KEY, "DHT_NOT_FOUND")),
        details="DHT_NOT_FOUND: chunk 3 of sha256:ab is not here yet",
    )
    error = convert.error_from_rpc(failed)
    assert isinstance(error, NotFound)
    assert str(error) == "chunk 3 of sha256:ab is not here yet"
    assert error.code == "DHT_NOT_FOUND"
