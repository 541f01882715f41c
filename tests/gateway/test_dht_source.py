"""The payload cache's dht source against real dht services (gRPC on
127.0.0.1, in this process)."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from prometheus_client import CollectorRegistry

from services.gateway.cache import BlobSource, BlobUnavailable, PayloadCache
from services.gateway.dht_source import EMPTY_CID, DhtBlobSource
from tests.dht.test_service import Cluster, payload, put
from tests.gateway.test_cache import cid_of, metric

MIB = 1024 * 1024


@pytest_asyncio.fixture
async def cluster() -> AsyncIterator[Cluster]:
    c = Cluster()
    try:
        yield c
    finally:
        await c.close()


async def _read_all(source: DhtBlobSource, cid: str, offset: int) -> bytes:
    return b"".join([piece async for piece in source.read(cid, offset)])


@pytest.mark.asyncio
async def test_a_3_mib_payload_goes_from_the_dht_into_the_cache(
    cluster: Cluster, tmp_path: Path
) -> None:
    node = await cluster.add()
    data = payload(3 * MIB, seed=5)
    cid = await put(cluster.stub(node), data)
    source = DhtBlobSource(node.contact.address)
    try:
        as_port: BlobSource = source
        assert await as_port.size(cid) == len(data)
        registry = CollectorRegistry()
        cache = PayloadCache(tmp_path, 8 * MIB, source, registry)
        path = await cache.ensure(cid)
        assert path.read_bytes() == data
        assert metric(registry, "fleetsuit_gateway_cache_fetch_bytes_total") == len(data)
        assert await _read_all(source, cid, 2 * MIB + 7) == data[2 * MIB + 7 :]
    finally:
        await source.close()


@pytest.mark.asyncio
async def test_a_payload_held_by_another_node_is_found(cluster: Cluster, tmp_path: Path) -> None:
    holder = await cluster.add()
    gateway_node = await cluster.add()
    data = payload(300_000, seed=6)
    cid = await put(cluster.stub(holder), data)
    source = DhtBlobSource(gateway_node.contact.address)
    try:
        cache = PayloadCache(tmp_path, 8 * MIB, source)
        assert (await cache.ensure(cid)).read_bytes() == data
    finally:
        await source.close()


@pytest.mark.asyncio
async def test_an_unknown_payload_is_unavailable(cluster: Cluster) -> None:
    node = await cluster.add()
    source = DhtBlobSource(node.contact.address)
    try:
        unknown = cid_of(b"never stored")
        with pytest.raises(BlobUnavailable, match="NOT_FOUND"):
            await source.size(unknown)
        with pytest.raises(BlobUnavailable):
            await _read_all(source, unknown, 0)
        assert await source.size(EMPTY_CID) == 0
    finally:
        await source.close()


@pytest.mark.asyncio
async def test_a_dht_that_is_down_is_unavailable() -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    source = DhtBlobSource(f"127.0.0.1:{port}", stat_timeout_s=5.0)
    try:
        with pytest.raises(BlobUnavailable, match="UNAVAILABLE"):
            await source.size(cid_of(b"x"))
        with pytest.raises(BlobUnavailable, match="UNAVAILABLE"):
            await _read_all(source, cid_of(b"x"), 0)
    finally:
        await source.close()
