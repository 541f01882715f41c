"""The dht service over real gRPC on 127.0.0.1, several nodes in one process."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
import pytest
from prometheus_client import CollectorRegistry

from fleetsuit.v1 import dht_pb2, dht_pb2_grpc
from services.dht.config import DhtConfig
from services.dht.content import content_id_of, parse_id
from services.dht.kv import MemoryKeyValue
from services.dht.metrics import DhtMetrics
from services.dht.node import DhtNode
from services.dht.routing import Contact
from services.dht.server import DhtDeps, build_server
from services.dht.store import BlobStore
from services.dht.transport import PeerTransport

CHUNK = 64 * 1024


class Cluster:
    def __init__(self) -> None:
        self.servers: list[grpc.aio.Server] = []
        self.nodes: list[DhtNode] = []
        self.kvs: list[MemoryKeyValue] = []
        self.channels: list[grpc.aio.Channel] = []

    async def add(
        self,
        max_disk_bytes: int = 64 * 1024 * 1024,
        transport_factory: Callable[[Contact], PeerTransport] | None = None,
    ) -> DhtNode:
        i = len(self.nodes)
        seeds = tuple(n.contact.address for n in self.nodes[:1])
        config = DhtConfig(
            node_id=f"n{i}",
            listen="127.0.0.1:0",
            seeds=seeds,
            chunk_bytes=CHUNK,
            max_disk_bytes=max_disk_bytes,
            repair_interval_ms=200,
            rpc_timeout_ms=1000,
        ).validate()
        kv = MemoryKeyValue()
        deps = DhtDeps(
            store=BlobStore(kv, max_disk_bytes),
            metrics=DhtMetrics(CollectorRegistry()),
            rng=random.Random(i),
            transport_factory=transport_factory,
        )
        server, _port = build_server(config, deps)
        await server.start()
        assert deps.node is not None
        await deps.node.bootstrap()
        self.servers.append(server)
        self.nodes.append(deps.node)
        self.kvs.append(kv)
        return deps.node

    def stub(self, node: DhtNode) -> dht_pb2_grpc.DhtStub:
        channel = grpc.aio.insecure_channel(node.contact.address)
        self.channels.append(channel)
        return dht_pb2_grpc.DhtStub(channel)

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()
        for node in self.nodes:
            await node.close()
        for server in self.servers:
            await server.stop(0)


async def wait_for(cond: Callable[[], Awaitable[bool]], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await cond():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


async def put(stub: dht_pb2_grpc.DhtStub, data: bytes, piece: int = 100_000) -> str:
    async def requests() -> AsyncIterator[dht_pb2.BlobPutRequest]:
        for i in range(0, len(data), piece):
            yield dht_pb2.BlobPutRequest(data=data[i : i + piece])

    reply = await stub.Put(requests())
    return str(reply.content_id)


async def get(stub: dht_pb2_grpc.DhtStub, cid: str, offset: int = 0) -> bytes:
    out = bytearray()
    async for msg in stub.Get(dht_pb2.BlobGetRequest(content_id=cid, offset=offset)):
        assert msg.offset == offset + len(out)
        out += msg.data
    return bytes(out)


def payload(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


@pytest.mark.asyncio
async def test_put_get_stat_and_idempotent_put(cluster: Cluster) -> None:
    node = await cluster.add()
    stub = cluster.stub(node)
    data = payload(5 * CHUNK + 123)
    cid = await put(stub, data)
    assert cid == content_id_of(data)
    assert await put(stub, data, piece=7777) == cid
    assert await get(stub, cid) == data
    stat = await stub.Stat(dht_pb2.BlobStatRequest(content_id=cid))
    assert (stat.size, stat.local, stat.chunk_count) == (len(data), True, 6)
    assert await put(stub, b"") == content_id_of(b"")
    assert await get(stub, content_id_of(b"")) == b""


@pytest.mark.asyncio
async def test_get_resumes_from_any_offset(cluster: Cluster) -> None:
    node = await cluster.add()
    stub = cluster.stub(node)
    data = payload(10 * CHUNK + 5, seed=3)
    cid = await put(stub, data)
    received = bytearray()
    call = stub.Get(dht_pb2.BlobGetRequest(content_id=cid))
    async for msg in call:  # interrupted halfway
        received += msg.data
        if len(received) >= len(data) // 2:
            call.cancel()
            break
    assert len(received) < len(data)
    rest = await get(stub, cid, offset=len(received))
    assert bytes(received) + rest == data
    for offset in (1, CHUNK - 1, CHUNK, 7 * CHUNK + 9, len(data)):
        assert await get(stub, cid, offset) == data[offset:]


@pytest.mark.asyncio
async def test_errors_have_status_codes(cluster: Cluster) -> None:
    node = await cluster.add(max_disk_bytes=3 * CHUNK)
    stub = cluster.stub(node)
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await stub.Stat(dht_pb2.BlobStatRequest(content_id="md5:abc"))
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await get(stub, content_id_of(b"nobody has this"))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    kept = payload(CHUNK, 1)
    cid = await put(stub, kept)
    await stub.Pin(dht_pb2.BlobPinRequest(content_id=cid))
    with pytest.raises(grpc.aio.AioRpcError) as full:
        await put(stub, payload(4 * CHUNK, 2))
    assert full.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert await get(stub, cid) == kept  # the full store damaged nothing


@pytest.mark.asyncio
async def test_replicas_on_k_nodes_and_fetch_from_any(cluster: Cluster) -> None:
    for _ in range(5):
        await cluster.add()
    for node in cluster.nodes:  # everyone learns everyone (as the repair loop would)
        await node.bootstrap()
    data = payload(9 * CHUNK, seed=5)
    cid = await put(cluster.stub(cluster.nodes[0]), data)
    blob = parse_id(cid)

    async def k_holders() -> bool:
        return sum(n.store.is_complete(blob) for n in cluster.nodes) >= 3

    await wait_for(k_holders, 10, "3 replicas")
    outsider = next(n for n in cluster.nodes if not n.store.is_complete(blob))
    stub = cluster.stub(outsider)
    stat = await stub.Stat(dht_pb2.BlobStatRequest(content_id=cid, lookup=True))
    assert stat.size == len(data) and not stat.local and len(stat.holders) >= 3
    assert await get(stub, cid) == data


@pytest.mark.asyncio
async def test_corrupt_chunk_is_never_served_and_is_refetched(cluster: Cluster) -> None:
    for _ in range(3):
        await cluster.add()
    for node in cluster.nodes:
        await node.bootstrap()
    data = payload(6 * CHUNK, seed=9)
    cid = await put(cluster.stub(cluster.nodes[0]), data)
    blob = parse_id(cid)

    async def all_hold() -> bool:
        return all(n.store.is_complete(blob) for n in cluster.nodes)

    await wait_for(all_hold, 10, "3 replicas")
    victim, kv = cluster.nodes[1], cluster.kvs[1]
    root = victim.store.root(blob)
    assert root is not None
    kv.data[b"c" + root.chunks[2]] = b"\x00" * CHUNK  # bit rot on disk
    assert await get(cluster.stub(victim), cid) == data
    assert victim.metrics.corrupt_chunks.labels("disk")._value.get() == 1
    assert kv.data[b"c" + root.chunks[2]] == data[2 * CHUNK : 3 * CHUNK]
