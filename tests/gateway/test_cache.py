"""The gateway's payload cache over an in-memory source: hits and misses, LRU
eviction by bytes, pins, one fetch per payload, resume, verification,
adoption of an existing directory, and disk-full handling."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import random
import tempfile
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import IO

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from services.gateway import cache as cache_module
from services.gateway.cache import (
    BadContentId,
    BlobSource,
    BlobUnavailable,
    CacheFull,
    CacheWriteError,
    CorruptBlob,
    PayloadCache,
)

# ---------------------------------------------------------------- fakes (shared with test_http)


def cid_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def blob(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


class MemorySource:
    """Blobs in a dict, sent in ``piece``-byte pieces. ``fail_at[cid]`` cuts
    the next read of ``cid`` when it reaches that offset (once); ``gate``
    holds every read until set; ``reads`` records (cid, offset)."""

    def __init__(self, piece: int = 1000) -> None:
        self.blobs: dict[str, bytes] = {}
        self.piece = piece
        self.fail_at: dict[str, int] = {}
        self.gate: asyncio.Event | None = None
        self.reads: list[tuple[str, int]] = []
        self.size_calls = 0

    def add(self, data: bytes) -> str:
        cid = cid_of(data)
        self.blobs[cid] = data
        return cid

    async def size(self, cid: str) -> int:
        self.size_calls += 1
        if cid not in self.blobs:
            raise BlobUnavailable(f"{cid} unknown", retry_after_s=2.0)
        return len(self.blobs[cid])

    async def read(self, cid: str, offset: int) -> AsyncIterator[bytes]:
        self.reads.append((cid, offset))
        if self.gate is not None:
            await self.gate.wait()
        data = self.blobs[cid]
        cut = self.fail_at.pop(cid, None)
        pos = offset
        while pos < len(data):
            end = min(pos + self.piece, len(data))
            if cut is not None and end > cut:
                if cut > pos:
                    yield data[pos:cut]
                raise BlobUnavailable(f"{cid}: cut at {cut}")
            yield data[pos:end]
            pos = end
            await asyncio.sleep(0)


async def wait_until(cond: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.01)


def metric(registry: CollectorRegistry, name: str) -> float:
    value = registry.get_sample_value(name)
    return 0.0 if value is None else value


def hexname(cid: str) -> str:
    return cid.removeprefix("sha256:")


# ---------------------------------------------------------------- tests


def test_the_memory_source_is_a_blob_source() -> None:
    source: BlobSource = MemorySource()
    assert source is not None


@pytest.mark.asyncio
async def test_a_miss_is_fetched_once_and_then_hit(tmp_path: Path) -> None:
    source = MemorySource()
    data = blob(5000)
    cid = source.add(data)
    registry = CollectorRegistry()
    cache = PayloadCache(tmp_path, 100_000, source, registry)
    assert cache.path(cid) is None
    path = await cache.ensure(cid)
    assert path == tmp_path / hexname(cid)
    assert path.read_bytes() == data
    assert cache.path(cid) == path
    assert await cache.ensure(cid) == path  # no second fetch
    assert source.reads == [(cid, 0)]
    assert metric(registry, "fleetsuit_gateway_cache_misses_total") == 1
    assert metric(registry, "fleetsuit_gateway_cache_hits_total") == 1
    assert metric(registry, "fleetsuit_gateway_cache_fetch_bytes_total") == 5000
    assert metric(registry, "fleetsuit_gateway_cache_bytes") == 5000
    assert metric(registry, "fleetsuit_gateway_cache_entries") == 1
    assert metric(registry, "fleetsuit_gateway_cache_fetch_seconds_count") == 1
    assert cache.stats().entries == 1 and cache.stats().bytes == 5000
    assert not list(tmp_path.glob("*.part"))


@pytest.mark.asyncio
async def test_eviction_takes_the_least_recently_used_first(tmp_path: Path) -> None:
    source = MemorySource()
    a, b, c, d = (source.add(blob(1000, seed)) for seed in range(4))
    registry = CollectorRegistry()
    cache = PayloadCache(tmp_path, 3000, source, registry)
    for cid in (a, b, c):
        await cache.ensure(cid)
    assert cache.path(a) is not None  # a is now more recent than b and c
    await cache.ensure(d)
    assert [cache.contains(x) for x in (a, b, c, d)] == [True, False, True, True]
    assert not (tmp_path / hexname(b)).exists()
    assert metric(registry, "fleetsuit_gateway_cache_evictions_total") == 1
    assert cache.stats().used_bytes == 3000


@pytest.mark.asyncio
async def test_eviction_frees_bytes_not_entries(tmp_path: Path) -> None:
    source = MemorySource()
    small = [source.add(blob(300, seed)) for seed in range(3)]
    big = source.add(blob(600, 99))
    cache = PayloadCache(tmp_path, 1000, source)
    for cid in small:
        await cache.ensure(cid)
    await cache.ensure(big)
    # 900 + 600 > 1000: the two oldest go (300 + 600 fits), the third stays.
    assert [cache.contains(x) for x in small] == [False, False, True]
    assert cache.contains(big)
    assert cache.stats().bytes == 900


@pytest.mark.asyncio
async def test_pinned_payloads_are_never_evicted(tmp_path: Path) -> None:
    source = MemorySource()
    pinned = source.add(blob(600, 1))
    other = source.add(blob(300, 2))
    third = source.add(blob(500, 3))
    cache = PayloadCache(tmp_path, 1000, source)
    cache.pin(pinned)
    await cache.ensure(pinned)
    await cache.ensure(other)
    with pytest.raises(CacheFull) as info:
        await cache.ensure(third)
    assert info.value.code == "CACHE_FULL"
    assert (info.value.needed, info.value.used, info.value.limit) == (500, 900, 1000)
    assert info.value.unevictable == 600
    assert "500" in str(info.value) and "1000" in str(info.value)
    # Nothing was deleted for a fetch that could not fit anyway.
    assert cache.contains(pinned) and cache.contains(other)
    assert not (tmp_path / (hexname(third) + ".part")).exists()
    cache.set_pins([])
    await cache.ensure(third)
    assert not cache.contains(pinned) and cache.contains(other) and cache.contains(third)


@pytest.mark.asyncio
async def test_a_payload_bigger_than_the_cache_is_refused(tmp_path: Path) -> None:
    source = MemorySource()
    cid = source.add(blob(2000))
    cache = PayloadCache(tmp_path, 1000, source)
    with pytest.raises(CacheFull):
        await cache.ensure(cid)
    assert source.reads == []


@pytest.mark.asyncio
async def test_concurrent_ensures_share_one_fetch(tmp_path: Path) -> None:
    source = MemorySource()
    data = blob(10_000)
    cid = source.add(data)
    source.gate = asyncio.Event()
    cache = PayloadCache(tmp_path, 100_000, source)
    waiters = [asyncio.create_task(cache.ensure(cid)) for _ in range(5)]
    await wait_until(lambda: len(source.reads) == 1, "the fetch to start")
    assert cache.is_fetching(cid)
    waiters[0].cancel()  # a caller that gives up does not stop the others' fetch
    source.gate.set()
    paths = await asyncio.gather(*waiters[1:])
    assert all(p.read_bytes() == data for p in paths)
    assert source.reads == [(cid, 0)] and source.size_calls == 1
    assert not cache.is_fetching(cid)
    with pytest.raises(asyncio.CancelledError):
        await waiters[0]


@pytest.mark.asyncio
async def test_a_cut_fetch_resumes_from_its_partial_file(tmp_path: Path) -> None:
    source = MemorySource(piece=1000)
    data = blob(5000)
    cid = source.add(data)
    source.fail_at[cid] = 2500
    registry = CollectorRegistry()
    cache = PayloadCache(tmp_path, 100_000, source, registry)
    with pytest.raises(BlobUnavailable):
        await cache.ensure(cid)
    part = tmp_path / (hexname(cid) + ".part")
    assert part.read_bytes() == data[:2500]
    assert cache.stats().partial_bytes == 2500 and not cache.contains(cid)
    path = await cache.ensure(cid)
    assert path.read_bytes() == data
    assert source.reads == [(cid, 0), (cid, 2500)]
    assert metric(registry, "fleetsuit_gateway_cache_fetch_bytes_total") == 5000
    assert not part.exists() and cache.stats().partial_bytes == 0


@pytest.mark.asyncio
async def test_a_source_ending_early_leaves_a_partial_to_resume(tmp_path: Path) -> None:
    class Short(MemorySource):
        async def size(self, cid: str) -> int:
            return len(self.blobs[cid]) + 10  # claims more than it sends

    source = Short()
    cid = source.add(blob(3000))
    cache = PayloadCache(tmp_path, 100_000, source)
    with pytest.raises(BlobUnavailable, match="stopped at byte 3000 of 3010"):
        await cache.ensure(cid)
    assert cache.stats().partial_bytes == 3000


@pytest.mark.asyncio
async def test_a_corrupt_source_is_refused_and_nothing_is_kept(tmp_path: Path) -> None:
    source = MemorySource()
    cid = cid_of(blob(4000, 1))
    source.blobs[cid] = blob(4000, 2)  # right size, wrong bytes
    cache = PayloadCache(tmp_path, 100_000, source)
    with pytest.raises(CorruptBlob) as info:
        await cache.ensure(cid)
    assert info.value.code == "CORRUPT_BLOB"
    assert cache.path(cid) is None
    assert list(tmp_path.iterdir()) == []
    assert cache.stats().used_bytes == 0


@pytest.mark.asyncio
async def test_a_source_sending_too_much_is_corrupt(tmp_path: Path) -> None:
    class Long(MemorySource):
        async def size(self, cid: str) -> int:
            return len(self.blobs[cid]) - 1

    source = Long()
    cid = source.add(blob(3000))
    cache = PayloadCache(tmp_path, 100_000, source)
    with pytest.raises(CorruptBlob, match="more than its size"):
        await cache.ensure(cid)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.asyncio
async def test_a_corrupt_partial_file_is_dropped_and_the_next_fetch_starts_over(
    tmp_path: Path,
) -> None:
    source = MemorySource()
    data = blob(4000)
    cid = source.add(data)
    (tmp_path / (hexname(cid) + ".part")).write_bytes(b"\0" * 1500)
    cache = PayloadCache(tmp_path, 100_000, source)
    with pytest.raises(CorruptBlob):
        await cache.ensure(cid)
    assert (await cache.ensure(cid)).read_bytes() == data
    assert source.reads == [(cid, 1500), (cid, 0)]


@pytest.mark.asyncio
async def test_existing_files_are_adopted_at_start(tmp_path: Path) -> None:
    source = MemorySource()
    old, new, partial = blob(1000, 1), blob(1000, 2), blob(3000, 3)
    old_cid, new_cid, partial_cid = (source.add(x) for x in (old, new, partial))
    (tmp_path / hexname(old_cid)).write_bytes(old)
    (tmp_path / hexname(new_cid)).write_bytes(new)
    os.utime(tmp_path / hexname(old_cid), (1_000_000, 1_000_000))  # fetched long ago
    (tmp_path / (hexname(partial_cid) + ".part")).write_bytes(partial[:1200])
    (tmp_path / "notes.txt").write_text("not a payload")
    registry = CollectorRegistry()
    cache = PayloadCache(tmp_path, 5300, source, registry)
    stats = cache.stats()
    assert (stats.entries, stats.bytes, stats.partial_bytes) == (2, 2000, 1200)
    assert metric(registry, "fleetsuit_gateway_cache_bytes") == 3200
    assert cache.path(old_cid) == tmp_path / hexname(old_cid)
    # The partial is resumed; making room for it evicts the adopted file
    # fetched longest ago (the first LRU order is the files' mtime).
    cache.path(new_cid)
    other = source.add(blob(1100, 4))
    await cache.ensure(partial_cid)
    await cache.ensure(other)
    assert source.reads == [(partial_cid, 1200), (other, 0)]
    assert (tmp_path / hexname(partial_cid)).read_bytes() == partial
    assert not cache.contains(old_cid) and cache.contains(new_cid)
    assert (tmp_path / "notes.txt").exists()


@pytest.mark.asyncio
async def test_a_complete_file_supersedes_a_stale_partial_at_start(tmp_path: Path) -> None:
    data = blob(1000)
    cid = cid_of(data)
    (tmp_path / hexname(cid)).write_bytes(data)
    (tmp_path / (hexname(cid) + ".part")).write_bytes(data[:10])
    cache = PayloadCache(tmp_path, 5000, MemorySource())
    assert cache.contains(cid) and cache.stats().partial_bytes == 0
    assert not (tmp_path / (hexname(cid) + ".part")).exists()


@pytest.mark.asyncio
async def test_idle_partials_of_unpinned_payloads_go_first(tmp_path: Path) -> None:
    source = MemorySource()
    kept = source.add(blob(1000, 1))
    cut = source.add(blob(1000, 2))
    new = source.add(blob(1000, 3))
    source.fail_at[cut] = 500
    cache = PayloadCache(tmp_path, 2000, source)
    await cache.ensure(kept)
    with pytest.raises(BlobUnavailable):
        await cache.ensure(cut)
    await cache.ensure(new)  # 1000 + 500 + 1000 > 2000: the partial goes, not kept
    assert cache.contains(kept) and cache.contains(new)
    assert cache.stats().partial_bytes == 0
    assert not (tmp_path / (hexname(cut) + ".part")).exists()


@pytest.mark.asyncio
async def test_a_full_disk_removes_the_partial_and_keeps_the_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = MemorySource(piece=1000)
    kept_data = blob(1000, 1)
    kept = source.add(kept_data)
    cid = source.add(blob(5000, 2))
    cache = PayloadCache(tmp_path, 100_000, source)
    await cache.ensure(kept)
    real_append = cache_module._append
    written = 0

    def append(file: IO[bytes], piece: bytes, digest: hashlib._Hash) -> None:
        nonlocal written
        if written >= 2000:
            raise OSError(errno.ENOSPC, "No space left on device")
        written += len(piece)
        real_append(file, piece, digest)

    monkeypatch.setattr(cache_module, "_append", append)
    with pytest.raises(CacheWriteError) as info:
        await cache.ensure(cid)
    assert info.value.disk_full and info.value.code == "CACHE_WRITE_FAILED"
    assert sorted(p.name for p in tmp_path.iterdir()) == [hexname(kept)]
    assert (tmp_path / hexname(kept)).read_bytes() == kept_data
    assert cache.stats().used_bytes == 1000


@pytest.mark.asyncio
async def test_a_payload_being_served_is_not_evicted(tmp_path: Path) -> None:
    source = MemorySource()
    served = source.add(blob(600, 1))
    other = source.add(blob(600, 2))
    cache = PayloadCache(tmp_path, 1000, source)
    await cache.ensure(served)
    with cache.hold(served) as path:
        assert path is not None
        with pytest.raises(CacheFull):
            await cache.ensure(other)
    await cache.ensure(other)
    assert not cache.contains(served)
    with cache.hold(served) as path:
        assert path is None


class Stalling(MemorySource):
    """Stalls every read after ``stall_after`` bytes until ``gate`` is set."""

    def __init__(self, stall_after: int) -> None:
        super().__init__(piece=1000)
        self.stall_after = stall_after
        self.release = asyncio.Event()
        self.stalled = asyncio.Event()

    async def read(self, cid: str, offset: int) -> AsyncIterator[bytes]:
        sent = 0
        async for piece in super().read(cid, offset):
            if sent >= self.stall_after and not self.release.is_set():
                self.stalled.set()
                await self.release.wait()
            yield piece
            sent += len(piece)


@pytest.mark.asyncio
async def test_close_cancels_a_fetch_and_keeps_its_partial(tmp_path: Path) -> None:
    source = Stalling(stall_after=2000)
    data = blob(5000)
    cid = source.add(data)
    cache = PayloadCache(tmp_path, 100_000, source)
    task = asyncio.create_task(cache.ensure(cid))
    await asyncio.wait_for(source.stalled.wait(), 10)
    await cache.close()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cache.stats().partial_bytes == 2000
    source.release.set()
    assert (await cache.ensure(cid)).read_bytes() == data
    assert source.reads[-1] == (cid, 2000)


@pytest.mark.asyncio
async def test_bad_content_ids_are_refused(tmp_path: Path) -> None:
    cache = PayloadCache(tmp_path, 1000, MemorySource())
    for bad in ("", "sha256:abc", "md5:" + "0" * 64, "sha256:" + "A" * 64, "../etc/passwd"):
        with pytest.raises(BadContentId) as info:
            cache.path(bad)
        assert info.value.code == "BAD_CONTENT_ID"
        with pytest.raises(BadContentId):
            await cache.ensure(bad)
        with pytest.raises(BadContentId):
            cache.pin(bad)


@pytest.mark.asyncio
async def test_an_unknown_payload_is_unavailable(tmp_path: Path) -> None:
    cache = PayloadCache(tmp_path, 1000, MemorySource())
    with pytest.raises(BlobUnavailable) as info:
        await cache.ensure(cid_of(b"nobody has this"))
    assert info.value.code == "BLOB_UNAVAILABLE" and info.value.retry_after_s == 2.0


@pytest.mark.asyncio
async def test_the_empty_payload_is_cached(tmp_path: Path) -> None:
    source = MemorySource()
    cid = source.add(b"")
    cache = PayloadCache(tmp_path, 1000, source)
    assert (await cache.ensure(cid)).read_bytes() == b""


# ---------------------------------------------------------------- property: LRU by bytes


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 400), min_size=1, max_size=8),
    ops=st.lists(st.tuples(st.booleans(), st.integers(0, 7)), max_size=40),
)
def test_the_cache_behaves_like_a_reference_lru(
    sizes: list[int], ops: list[tuple[bool, int]]
) -> None:
    """``(fetch?, i)``: ensure blob i or look it up; the cache holds what a
    plain LRU-by-bytes model holds, and never more than its bound."""
    limit = 1000

    async def run(directory: Path) -> None:
        source = MemorySource(piece=128)
        cids = [source.add(blob(size, seed)) for seed, size in enumerate(sizes)]
        cache = PayloadCache(directory, limit, source)
        model: OrderedDict[str, int] = OrderedDict()
        for fetch, i in ops:
            cid = cids[i % len(cids)]
            size = sizes[i % len(cids)]
            if fetch:
                await cache.ensure(cid)
                if cid not in model:
                    while sum(model.values()) + size > limit:
                        model.popitem(last=False)
                model[cid] = size
                model.move_to_end(cid)
            else:
                found = cache.path(cid) is not None
                assert found == (cid in model)
                if found:
                    model.move_to_end(cid)
            assert {c for c in cids if cache.contains(c)} == set(model)
            assert cache.stats().used_bytes == sum(model.values()) <= limit
        assert sorted(p.name for p in directory.iterdir()) == sorted(hexname(c) for c in model)

    with tempfile.TemporaryDirectory() as directory:
        asyncio.run(run(Path(directory)))
