"""The device-facing downloads over a real aiohttp server on 127.0.0.1, with
aiohttp's client: whole files, ranges, resume, conditions and errors."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
from prometheus_client import CollectorRegistry

from services.gateway.cache import PayloadCache
from services.gateway.http import build_http_app, start_http
from tests.gateway.test_cache import MemorySource, blob, cid_of, metric, wait_until

SIZE = 3 * 1024 * 1024 + 17


@dataclass
class Gateway:
    url: str
    session: aiohttp.ClientSession
    cache: PayloadCache
    source: MemorySource
    registry: CollectorRegistry
    data: bytes
    cid: str
    fetchable: set[str]

    def payload_url(self, cid: str) -> str:
        return f"{self.url}/v1/payloads/{cid}"

    def count(self, code: str) -> float:
        value = self.registry.get_sample_value("fleetsuit_gateway_downloads_total", {"code": code})
        return 0.0 if value is None else value


async def _start(
    tmp_path: Path, max_bytes: int = 64 * 1024 * 1024
) -> tuple[Gateway, Callable[[], Awaitable[None]]]:
    source = MemorySource(piece=64 * 1024)
    data = blob(SIZE)
    cid = source.add(data)
    registry = CollectorRegistry()
    cache = PayloadCache(tmp_path / "cache", max_bytes, source, registry)
    await cache.ensure(cid)
    fetchable: set[str] = set()
    app = build_http_app(cache, may_fetch=fetchable.__contains__, registry=registry)
    runner, port = await start_http(app, "127.0.0.1", 0)
    assert port > 0
    session = aiohttp.ClientSession()
    gateway = Gateway(
        f"http://127.0.0.1:{port}", session, cache, source, registry, data, cid, fetchable
    )

    async def stop() -> None:
        await session.close()
        await runner.cleanup()
        await cache.close()

    return gateway, stop


@pytest_asyncio.fixture
async def gw(tmp_path: Path) -> AsyncIterator[Gateway]:
    gateway, stop = await _start(tmp_path)
    try:
        yield gateway
    finally:
        await stop()


@pytest.mark.asyncio
async def test_a_whole_payload_is_sent_with_its_validators(gw: Gateway) -> None:
    async with gw.session.get(gw.payload_url(gw.cid)) as resp:
        assert resp.status == 200
        body = await resp.read()
        assert resp.headers["ETag"] == f'"{gw.cid}"'
        assert "immutable" in resp.headers["Cache-Control"]
        assert resp.headers["Content-Type"] == "application/octet-stream"
        assert resp.headers["Accept-Ranges"] == "bytes"
        assert int(resp.headers["Content-Length"]) == SIZE
    assert body == gw.data
    # The server counts once the answer is out, which may be after the client has it.
    await wait_until(lambda: gw.count("200") == 1, "the download counted")
    assert metric(gw.registry, "fleetsuit_gateway_download_bytes_total") == SIZE
    assert metric(gw.registry, "fleetsuit_gateway_cache_hits_total") == 1


@pytest.mark.asyncio
async def test_a_range_is_sent_as_206(gw: Gateway) -> None:
    async with gw.session.get(gw.payload_url(gw.cid), headers={"Range": "bytes=100-199"}) as resp:
        assert resp.status == 206
        assert resp.headers["Content-Range"] == f"bytes 100-199/{SIZE}"
        assert await resp.read() == gw.data[100:200]
    async with gw.session.get(gw.payload_url(gw.cid), headers={"Range": "bytes=-100"}) as resp:
        assert resp.status == 206
        assert resp.headers["Content-Range"] == f"bytes {SIZE - 100}-{SIZE - 1}/{SIZE}"
        assert await resp.read() == gw.data[-100:]
    await wait_until(lambda: gw.count("206") == 2, "the downloads counted")
    assert metric(gw.registry, "fleetsuit_gateway_download_bytes_total") == 200


@pytest.mark.asyncio
async def test_a_range_beyond_the_end_is_416(gw: Gateway) -> None:
    headers = {"Range": f"bytes={SIZE}-"}
    async with gw.session.get(gw.payload_url(gw.cid), headers=headers) as resp:
        assert resp.status == 416
        assert resp.headers["Content-Range"] == f"bytes */{SIZE}"
    async with gw.session.get(gw.payload_url(gw.cid), headers={"Range": "bytes=x-y"}) as resp:
        assert resp.status == 416
    await wait_until(lambda: gw.count("416") == 2, "the answers counted")
    assert metric(gw.registry, "fleetsuit_gateway_download_bytes_total") == 0


@pytest.mark.asyncio
async def test_a_cut_download_resumes_with_if_range(gw: Gateway) -> None:
    resp = await gw.session.get(gw.payload_url(gw.cid))
    assert resp.status == 200
    etag = resp.headers["ETag"]
    first = await resp.content.readexactly(1_000_000)
    resp.close()  # the device loses its connection mid-download
    headers = {"Range": f"bytes={len(first)}-", "If-Range": etag}
    async with gw.session.get(gw.payload_url(gw.cid), headers=headers) as resp:
        assert resp.status == 206
        assert resp.headers["Content-Range"] == f"bytes {len(first)}-{SIZE - 1}/{SIZE}"
        rest = await resp.read()
    assert first + rest == gw.data
    await wait_until(lambda: gw.count("200") + gw.count("aborted") == 1, "the cut one counted")


@pytest.mark.asyncio
async def test_an_if_range_with_another_tag_gets_the_whole_payload(gw: Gateway) -> None:
    for other in ('"sha256:other"', f'W/"{gw.cid}"'):
        headers = {"Range": "bytes=100-", "If-Range": other}
        async with gw.session.get(gw.payload_url(gw.cid), headers=headers) as resp:
            assert resp.status == 200
            assert await resp.read() == gw.data


@pytest.mark.asyncio
async def test_etag_conditions_use_the_content_id(gw: Gateway) -> None:
    url = gw.payload_url(gw.cid)
    async with gw.session.get(url, headers={"If-None-Match": f'"{gw.cid}"'}) as resp:
        assert resp.status == 304
        assert resp.headers["ETag"] == f'"{gw.cid}"'
    async with gw.session.get(url, headers={"If-None-Match": '"sha256:old"'}) as resp:
        assert resp.status == 200
    async with gw.session.get(url, headers={"If-Match": '"sha256:old"'}) as resp:
        assert resp.status == 412
    headers = {"If-Match": f'"{gw.cid}"', "Range": "bytes=0-9"}
    async with gw.session.get(url, headers=headers) as resp:
        assert resp.status == 206
        assert await resp.read() == gw.data[:10]


@pytest.mark.asyncio
async def test_head_sends_the_headers_only(gw: Gateway) -> None:
    async with gw.session.head(gw.payload_url(gw.cid)) as resp:
        assert resp.status == 200
        assert int(resp.headers["Content-Length"]) == SIZE
        assert resp.headers["ETag"] == f'"{gw.cid}"'
        assert await resp.read() == b""
    await wait_until(lambda: gw.count("200") == 1, "the answer counted")
    assert metric(gw.registry, "fleetsuit_gateway_download_bytes_total") == 0


@pytest.mark.asyncio
async def test_a_bad_content_id_is_400(gw: Gateway) -> None:
    for bad in ("nonsense", "sha256:1234", "sha256:" + "G" * 64):
        async with gw.session.get(gw.payload_url(bad)) as resp:
            assert resp.status == 400
            assert (await resp.json())["code"] == "BAD_CONTENT_ID"
    await wait_until(lambda: gw.count("400") == 3, "the answers counted")


@pytest.mark.asyncio
async def test_an_unknown_payload_is_404_and_not_fetched(gw: Gateway) -> None:
    other = gw.source.add(blob(1000, 7))
    async with gw.session.get(gw.payload_url(other)) as resp:
        assert resp.status == 404
        assert (await resp.json())["code"] == "NOT_FOUND"
    assert all(cid != other for cid, _ in gw.source.reads)


@pytest.mark.asyncio
async def test_a_miss_may_fetch_accepts_is_fetched_then_served(gw: Gateway) -> None:
    data = blob(200_000, 8)
    other = gw.source.add(data)
    gw.fetchable.add(other)
    headers = {"Range": "bytes=1000-1999"}
    async with gw.session.get(gw.payload_url(other), headers=headers) as resp:
        assert resp.status == 206
        assert await resp.read() == data[1000:2000]
    assert gw.cache.contains(other)
    assert gw.source.reads.count((other, 0)) == 1


@pytest.mark.asyncio
async def test_a_payload_being_prefetched_is_waited_for(gw: Gateway) -> None:
    data = blob(100_000, 9)
    other = gw.source.add(data)
    gw.source.gate = asyncio.Event()
    prefetch = asyncio.create_task(gw.cache.ensure(other))
    await wait_until(lambda: gw.cache.is_fetching(other), "the prefetch")
    request = asyncio.create_task(gw.session.get(gw.payload_url(other)))
    gw.source.gate.set()
    resp = await request
    assert resp.status == 200 and await resp.read() == data
    resp.release()
    await prefetch


@pytest.mark.asyncio
async def test_a_payload_the_source_lacks_is_503_with_retry_after(gw: Gateway) -> None:
    missing = cid_of(b"nobody has this")
    gw.fetchable.add(missing)
    async with gw.session.get(gw.payload_url(missing)) as resp:
        assert resp.status == 503
        assert resp.headers["Retry-After"] == "2"
        assert (await resp.json())["code"] == "BLOB_UNAVAILABLE"


@pytest.mark.asyncio
async def test_a_corrupt_source_is_502_and_nothing_is_served(gw: Gateway) -> None:
    claimed = cid_of(b"the real payload")
    gw.source.blobs[claimed] = b"a tampered payload"
    gw.fetchable.add(claimed)
    async with gw.session.get(gw.payload_url(claimed)) as resp:
        assert resp.status == 502
        assert (await resp.json())["code"] == "CORRUPT_BLOB"
    assert not gw.cache.contains(claimed)


@pytest.mark.asyncio
async def test_a_full_cache_is_507(tmp_path: Path) -> None:
    gateway, stop = await _start(tmp_path, max_bytes=SIZE + 1000)
    try:
        gateway.cache.pin(gateway.cid)
        other = gateway.source.add(blob(5000, 10))
        gateway.fetchable.add(other)
        async with gateway.session.get(gateway.payload_url(other)) as resp:
            assert resp.status == 507
            assert (await resp.json())["code"] == "CACHE_FULL"
    finally:
        await stop()


@pytest.mark.asyncio
async def test_healthz(gw: Gateway) -> None:
    async with gw.session.get(f"{gw.url}/healthz") as resp:
        assert resp.status == 200
