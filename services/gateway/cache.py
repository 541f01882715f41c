"""The gateway's payload cache: release payloads on local disk, fetched from a
:class:`BlobSource` (the node's dht), bounded in bytes.

Layout
    One file per payload in ``directory``, named by the content id's 64 hex
    digits (``sha256:<hex>`` is the SHA-256 of the whole content). A fetch
    writes ``<hex>.part`` and appends to it; a fetch that fails midway leaves
    the partial file, and the next fetch asks the source only for the bytes
    after it (resume by offset). The whole file is verified against the id
    before it is renamed (atomically) to ``<hex>``, so a file under a complete
    name was verified once.

Start-up adoption
    Files already in the directory are adopted *by size, not re-hashed*: a
    complete name is only ever given after verification, and re-hashing a
    cache of many gigabytes would hold up the gateway's start. (Devices verify
    every payload's digest end to end anyway.) Complete files are ordered by
    modification time (the time of their fetch) as a first LRU order;
    partial files are kept for resume. Other names are left alone.

Bound and eviction
    Counted against ``max_bytes``: complete files, idle partial files and, for
    each fetch in flight, the payload's full size (reserved before the first
    byte is written). A fetch makes room first by deleting idle partial files
    of unpinned payloads, then complete, unpinned, not-being-served payloads in
    least-recently-used order; when pinned and busy ones alone leave no room
    it raises :class:`CacheFull`. A cache found over its bound at start (the
    bound was lowered) shrinks at the next fetch, once the gateway has set
    its pins.

Hits and misses count device-facing lookups (:meth:`PayloadCache.path`); a
prefetch through :meth:`PayloadCache.ensure` counts neither.

Not here: deciding what to prefetch or pin (the gateway service), HTTP
(``services/gateway/http.py``), talking to the dht (``dht_source.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import errno
import hashlib
import os
import re
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from fleetsuit.errors import ServiceError
from fleetsuit.release_model import CID_PREFIX, check_content_id

PART_SUFFIX = ".part"
HASH_BLOCK_BYTES = 1024 * 1024
DEFAULT_RETRY_AFTER_S = 5.0
_HEX_NAME = re.compile(r"[0-9a-f]{64}")

_T = TypeVar("_T")


class ErrorCode(enum.StrEnum):
    BAD_CONTENT_ID = "BAD_CONTENT_ID"
    CACHE_FULL = "CACHE_FULL"
    CACHE_WRITE_FAILED = "CACHE_WRITE_FAILED"
    BLOB_UNAVAILABLE = "BLOB_UNAVAILABLE"
    CORRUPT_BLOB = "CORRUPT_BLOB"


class CacheError(ServiceError):
    """The base of the cache's errors (the gateway's own base may re-parent it)."""

    code: ErrorCode = ErrorCode.CACHE_WRITE_FAILED


class BadContentId(CacheError):
    code = ErrorCode.BAD_CONTENT_ID


class CacheFull(CacheError):
    """Pinned payloads and payloads in use leave no room for this one."""

    code = ErrorCode.CACHE_FULL

    def __init__(self, cid: str, needed: int, used: int, limit: int, unevictable: int) -> None:
        super().__init__(
            f"payload cache full: {cid} needs {needed} bytes, {used} of {limit} are used "
            f"and {unevictable} of them are pinned, in use or being fetched"
        )
        self.needed = needed
        self.used = used
        self.limit = limit
        self.unevictable = unevictable


class CacheWriteError(CacheError):
    """Writing a payload to disk failed (``disk_full``: ENOSPC); the partial
    file was removed and the other payloads are untouched."""

    code = ErrorCode.CACHE_WRITE_FAILED

    def __init__(self, message: str, *, disk_full: bool) -> None:
        super().__init__(message)
        self.disk_full = disk_full


class BlobUnavailable(CacheError):
    """The source cannot give the payload now (unknown, unreachable, cut off)."""

    code = ErrorCode.BLOB_UNAVAILABLE

    def __init__(self, message: str, *, retry_after_s: float = DEFAULT_RETRY_AFTER_S) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class CorruptBlob(CacheError):
    """The source's bytes do not hash to the content id (or overrun its size)."""

    code = ErrorCode.CORRUPT_BLOB


def parse_content_id(cid: str) -> str:
    """The 64 hex digits of a content id; raises :class:`BadContentId`."""
    try:
        check_content_id(cid)
    except ValueError as exc:
        raise BadContentId(str(exc)) from None
    return cid[len(CID_PREFIX) :]


class BlobSource(Protocol):
    """Where the cache fetches payloads from (the node's dht)."""

    async def size(self, cid: str) -> int:
        """The payload's size in bytes; raises :class:`BlobUnavailable`."""
        ...

    def read(self, cid: str, offset: int) -> AsyncIterator[bytes]:
        """The payload's bytes from ``offset`` to the end, in pieces; raises
        :class:`BlobUnavailable` when cut off."""
        ...


@dataclass(frozen=True, slots=True)
class CacheStats:
    entries: int  # complete payloads
    bytes: int  # of complete payloads
    pinned: int  # pinned content ids (present or not)
    partial_bytes: int  # idle partial files, kept for resume
    reserved_bytes: int  # full sizes of the fetches in flight
    max_bytes: int

    @property
    def used_bytes(self) -> int:
        """What counts against ``max_bytes``."""
        return self.bytes + self.partial_bytes + self.reserved_bytes


class CacheMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.hits = Counter(
            "fleetsuit_gateway_cache_hits", "Device lookups found in the cache", registry=registry
        )
        self.misses = Counter(
            "fleetsuit_gateway_cache_misses", "Device lookups not in the cache", registry=registry
        )
        self.bytes = Gauge(
            "fleetsuit_gateway_cache_bytes",
            "Bytes counted against the cache bound (complete, partial, reserved for fetches)",
            registry=registry,
        )
        self.max_bytes = Gauge(
            "fleetsuit_gateway_cache_max_bytes", "The cache's bound in bytes", registry=registry
        )
        self.entries = Gauge(
            "fleetsuit_gateway_cache_entries", "Complete payloads in the cache", registry=registry
        )
        self.evictions = Counter(
            "fleetsuit_gateway_cache_evictions",
            "Payloads (complete or partial) deleted to make room",
            registry=registry,
        )
        self.fetch_bytes = Counter(
            "fleetsuit_gateway_cache_fetch_bytes",
            "Payload bytes received from the source (the node's dht)",
            registry=registry,
        )
        self.fetch_seconds = Histogram(
            "fleetsuit_gateway_cache_fetch_seconds",
            "Duration of successful payload fetches, resume included",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
            registry=registry,
        )


class PayloadCache:
    """Payload files on disk, fetched once, LRU-bounded in bytes, with pins.

    Owned by one event loop; every method but :meth:`ensure` and
    :meth:`close` is synchronous and does no awaiting, so no locks."""

    def __init__(
        self,
        directory: Path,
        max_bytes: int,
        source: BlobSource,
        registry: CollectorRegistry | None = None,
    ) -> None:
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, not {max_bytes}")
        self._dir = Path(directory)
        self._dir.mkdir(parents=True, exist_ok=True)
        self._max = max_bytes
        self._source = source
        self._metrics = CacheMetrics(registry if registry is not None else CollectorRegistry())
        self._metrics.max_bytes.set(max_bytes)
        self._entries: OrderedDict[str, int] = OrderedDict()  # cid -> size, least recent first
        self._partials: dict[str, int] = {}  # cid -> bytes of an idle partial file
        self._reserved: dict[str, int] = {}  # cid -> full size, while fetching
        self._held: dict[str, int] = {}  # cid -> responses being served from the file
        self._pins: set[str] = set()
        self._fetches: dict[str, asyncio.Task[Path]] = {}
        self._adopt()

    # ------------------------------------------------------------ lookups

    def path(self, cid: str) -> Path | None:
        """The complete file of ``cid`` or None; counts a hit or a miss and
        marks a hit most recently used. Raises BadContentId."""
        hexd = parse_content_id(cid)
        if cid not in self._entries:
            self._metrics.misses.inc()
            return None
        self._entries.move_to_end(cid)
        self._metrics.hits.inc()
        return self._dir / hexd

    def contains(self, cid: str) -> bool:
        """Complete and present (no hit or miss counted)."""
        return cid in self._entries

    def is_fetching(self, cid: str) -> bool:
        return cid in self._fetches

    @contextlib.contextmanager
    def hold(self, cid: str) -> Iterator[Path | None]:
        """The complete file of ``cid`` (None when absent), kept from
        eviction until the block ends: a response opens the file after an
        await, and an eviction in between would turn a hit into a 404."""
        hexd = parse_content_id(cid)
        if cid not in self._entries:
            yield None
            return
        self._held[cid] = self._held.get(cid, 0) + 1
        try:
            yield self._dir / hexd
        finally:
            left = self._held[cid] - 1
            if left:
                self._held[cid] = left
            else:
                del self._held[cid]

    def stats(self) -> CacheStats:
        return CacheStats(
            entries=len(self._entries),
            bytes=sum(self._entries.values()),
            pinned=len(self._pins),
            partial_bytes=sum(self._partials.values()),
            reserved_bytes=sum(self._reserved.values()),
            max_bytes=self._max,
        )

    # ------------------------------------------------------------ pins

    def pin(self, cid: str) -> None:
        parse_content_id(cid)
        self._pins.add(cid)

    def unpin(self, cid: str) -> None:
        self._pins.discard(cid)

    def set_pins(self, cids: Iterable[str]) -> None:
        """Pin exactly ``cids`` (the payloads of the active rollouts)."""
        pins = set(cids)
        for cid in pins:
            parse_content_id(cid)
        self._pins = pins

    def pinned(self) -> frozenset[str]:
        return frozenset(self._pins)

    # ------------------------------------------------------------ fetching

    async def ensure(self, cid: str) -> Path:
        """The complete, verified file of ``cid``, fetched from the source if
        needed. Concurrent callers share one fetch, and a caller cancelled
        while waiting does not cancel it. Raises BadContentId, CacheFull,
        CacheWriteError, BlobUnavailable, CorruptBlob."""
        hexd = parse_content_id(cid)
        if cid in self._entries:
            self._entries.move_to_end(cid)
            return self._dir / hexd
        task = self._fetches.get(cid)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._fetch(cid, hexd))
            self._fetches[cid] = task
            task.add_done_callback(lambda t: self._fetch_done(cid, t))
        return await asyncio.shield(task)

    async def close(self) -> None:
        """Cancel the fetches in flight (their partial files stay for resume)."""
        tasks = list(self._fetches.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task

    def _fetch_done(self, cid: str, task: asyncio.Task[Path]) -> None:
        self._fetches.pop(cid, None)
        if not task.cancelled():
            task.exception()  # retrieved here: every waiter may have gone

    async def _fetch(self, cid: str, hexd: str) -> Path:
        started = time.monotonic()
        size = await self._source.size(cid)
        if size < 0:
            raise BlobUnavailable(f"{cid}: the source reports a negative size {size}")
        part = self._dir / (hexd + PART_SUFFIX)
        self._partials.pop(cid, None)
        have = _size_on_disk(part)
        if have > size:  # left by a fetch of other bytes: useless for resume
            part.unlink(missing_ok=True)
            have = 0
        try:
            self._make_room(cid, size)
        except CacheFull:
            if have:
                self._partials[cid] = have
            raise
        self._reserved[cid] = size
        self._update_gauges()
        try:
            await self._download(cid, hexd, part, have, size)
            final = self._dir / hexd
            await _in_thread(os.replace, part, final)
        except (CorruptBlob, CacheWriteError):
            part.unlink(missing_ok=True)
            raise
        except BaseException:
            # Cut off (source failure, cancellation): keep what arrived for resume.
            left = _size_on_disk(part)
            if left:
                self._partials[cid] = left
            raise
        finally:
            del self._reserved[cid]
            self._update_gauges()
        self._entries[cid] = size
        self._entries.move_to_end(cid)
        self._metrics.fetch_seconds.observe(time.monotonic() - started)
        self._update_gauges()
        return final

    async def _download(self, cid: str, hexd: str, part: Path, have: int, size: int) -> None:
        """Append the bytes after ``have`` to ``part`` and check the whole
        file's SHA-256 (the kept prefix is re-read and hashed first)."""
        digest = hashlib.sha256()
        try:
            file = await _in_thread(_open_append, part)
        except OSError as exc:
            raise _write_error(cid, exc) from None
        try:
            if have:
                await _in_thread(_hash_prefix, part, have, digest)
            got = have
            if have < size:
                stream = self._source.read(cid, have)
                try:
                    async for piece in stream:
                        if got + len(piece) > size:
                            raise CorruptBlob(f"{cid}: the source sent more than its size {size}")
                        try:
                            await _in_thread(_append, file, piece, digest)
                        except OSError as exc:
                            raise _write_error(cid, exc) from None
                        got += len(piece)
                        self._metrics.fetch_bytes.inc(len(piece))
                finally:
                    # Close the source's stream now (its RPC), not when collected.
                    aclose = getattr(stream, "aclose", None)
                    if aclose is not None:
                        await aclose()
            if got < size:
                raise BlobUnavailable(f"{cid}: the source stopped at byte {got} of {size}")
            if digest.hexdigest() != hexd:
                raise CorruptBlob(f"{cid}: the source's bytes hash to sha256:{digest.hexdigest()}")
            try:
                await _in_thread(_flush, file)
            except OSError as exc:
                raise _write_error(cid, exc) from None
        finally:
            file.close()

    def _make_room(self, cid: str, size: int) -> None:
        """Delete idle unpinned partial files, then least recently used
        unpinned payloads not being served, until ``size`` more bytes fit.
        Nothing is deleted when even that would not make room."""
        used = self._used()
        if used + size <= self._max:
            return
        partials = [c for c in self._partials if c not in self._pins]
        entries = [c for c in self._entries if c not in self._pins and c not in self._held]
        evictable = sum(self._partials[c] for c in partials) + sum(
            self._entries[c] for c in entries
        )
        if used - evictable + size > self._max:
            raise CacheFull(cid, size, used, self._max, used - evictable)
        for other in partials:
            if used + size <= self._max:
                break
            (self._dir / (other[len(CID_PREFIX) :] + PART_SUFFIX)).unlink(missing_ok=True)
            used -= self._partials.pop(other)
            self._metrics.evictions.inc()
        for other in entries:  # least recently used first
            if used + size <= self._max:
                break
            (self._dir / other[len(CID_PREFIX) :]).unlink(missing_ok=True)
            used -= self._entries.pop(other)
            self._metrics.evictions.inc()
        self._update_gauges()

    def _used(self) -> int:
        return (
            sum(self._entries.values())
            + sum(self._partials.values())
            + sum(self._reserved.values())
        )

    def _update_gauges(self) -> None:
        self._metrics.bytes.set(self._used())
        self._metrics.entries.set(len(self._entries))

    def _adopt(self) -> None:
        complete: list[tuple[float, str, int]] = []
        with os.scandir(self._dir) as listing:
            for item in listing:
                if not item.is_file(follow_symlinks=False):
                    continue
                st = item.stat(follow_symlinks=False)
                if _HEX_NAME.fullmatch(item.name):
                    complete.append((st.st_mtime, CID_PREFIX + item.name, st.st_size))
                elif item.name.endswith(PART_SUFFIX) and _HEX_NAME.fullmatch(
                    item.name[: -len(PART_SUFFIX)]
                ):
                    cid = CID_PREFIX + item.name[: -len(PART_SUFFIX)]
                    self._partials[cid] = st.st_size
        for _mtime, cid, size in sorted(complete):
            self._entries[cid] = size
            # A complete file supersedes a partial one of the same payload.
            if self._partials.pop(cid, None) is not None:
                (self._dir / (cid[len(CID_PREFIX) :] + PART_SUFFIX)).unlink(missing_ok=True)
        self._update_gauges()


# ---------------------------------------------------------------- file I/O
# Run in worker threads: a slow disk must not stall the downloads being served.


async def _in_thread(fn: Callable[..., _T], *args: object) -> _T:
    """``fn(*args)`` in a worker thread. On cancellation the thread is waited
    for before re-raising, so the caller never closes a file a thread is
    still writing."""
    fut = asyncio.ensure_future(asyncio.to_thread(fn, *args))
    try:
        return await asyncio.shield(fut)
    except asyncio.CancelledError:
        with contextlib.suppress(BaseException):
            await fut
        raise


def _size_on_disk(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _open_append(path: Path) -> IO[bytes]:
    return path.open("ab")


def _hash_prefix(path: Path, length: int, digest: hashlib._Hash) -> None:
    with path.open("rb") as f:
        left = length
        while left:
            block = f.read(min(HASH_BLOCK_BYTES, left))
            if not block:
                raise OSError(errno.EIO, f"{path} shrank while being hashed")
            digest.update(block)
            left -= len(block)


def _append(file: IO[bytes], piece: bytes, digest: hashlib._Hash) -> None:
    file.write(piece)
    digest.update(piece)


def _flush(file: IO[bytes]) -> None:
    # Durable before the rename, so a complete name never points at lost bytes.
    file.flush()
    os.fsync(file.fileno())


def _write_error(cid: str, exc: OSError) -> CacheWriteError:
    if exc.errno == errno.ENOSPC:
        return CacheWriteError(f"{cid}: disk full while writing the payload", disk_full=True)
    return CacheWriteError(f"{cid}: writing the payload failed: {exc}", disk_full=False)
