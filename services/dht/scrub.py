"""The scrub: a background pass that re-verifies every stored chunk at most
``scrub_bytes_per_s``, so a chunk rotted on disk is found before a reader
needs it. A corrupt chunk is dropped and fetched again from a holder of a
blob that lists it (``repair``, the node's re-fetch). RocksDB's block
checksums alone would miss a silently rewritten chunk; a chunk is checked
against its SHA-256 on every read anyway, and here even when nobody reads."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable

from services.dht.content import Digest, format_id
from services.dht.errors import DhtError
from services.dht.metrics import DhtMetrics
from services.dht.store import BlobStore

log = logging.getLogger("fleetsuit.dht.scrub")

Repair = Callable[[Digest, int], Awaitable[bytes]]  # (blob, chunk index) -> the chunk, fetched again


class Scrubber:
    def __init__(self, store: BlobStore, metrics: DhtMetrics, repair: Repair, rng: random.Random) -> None:
        self._store = store
        self._metrics = metrics
        self._repair = repair
        self._rng = rng

    async def scrub_once(self, bytes_per_s: float) -> tuple[int, int]:
        """Re-verify every stored chunk, at most ``bytes_per_s``; a corrupt
        chunk is dropped and fetched again from a holder. Returns (chunks
        checked, chunks repaired)."""
        checked = repaired = 0
        for digest in self._store.chunk_digests():
            data = await asyncio.to_thread(self._store.read_held, digest)
            checked += 1
            if data is not None:
                self._metrics.scrub_chunks.labels("ok").inc()
                await asyncio.sleep(len(data) / bytes_per_s)  # the rate limit
                continue
            if self._store.verify_chunk(digest) is not False:
                continue  # deleted meanwhile, or rewritten intact
            self._metrics.scrub_chunks.labels("corrupt").inc()
            self._metrics.corrupt_chunks.labels("disk").inc()
            for blob, index in self._store.blobs_listing(digest)[:1]:
                try:
                    await self._repair(blob, index)
                    repaired += 1
                except DhtError as exc:
                    log.warning("scrub cannot repair %s: %s", format_id(blob), exc)
        return checked, repaired

    async def run(self, stop: asyncio.Event, interval_s: float, bytes_per_s: float) -> None:
        """A pass every ``interval_s`` (jittered by half either way) until ``stop``."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval_s * (0.5 + self._rng.random()))
            if stop.is_set():
                return
            try:
                await self.scrub_once(bytes_per_s)
            except Exception:
                log.exception("scrub pass crashed")
