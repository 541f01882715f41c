"""The dht node runtime: owns the routing core, the blob store and the peers.

It turns client and peer requests into store operations and network calls:

- iterative lookups (``routing.Lookup``) run with alpha requests in flight;
- a blob lives on the k closest live nodes to its digest; after a Put the
  receiving node asks them to pull it (``Replicate``) and every holder
  announces itself to them with provider records (``Store``), which expire
  after ``provider_ttl_ms`` unless announced again (every repair pass does);
- fetches take the root from one holder and the chunks from several holders
  in parallel (fetch.py picks the least-loaded holder that has the chunk,
  using the holders' have-maps), each chunk verified on receipt, the whole
  digest checked before the root is committed. A node that is fetching
  announces itself at once and serves the chunks it holds, and a peer
  serving ``max_uploads`` chunks already answers Busy, so a blob spreads
  epidemically instead of everyone pulling from the first holders;
- a Get on a node that lacks the blob streams chunk by chunk as they land,
  withholding the last piece until the whole digest has been checked;
- a corrupt chunk met on read is dropped by the store and fetched again from
  a peer before any byte of it is served;
- ``maintenance`` (the repair loop) re-bootstraps from seeds when needed,
  repairs missing chunks and asks the k closest live nodes of every local
  blob to hold a replica, which both restores k after a loss and hands data
  to a node that joined closer to a blob;
- ``scrub`` (scrub.py) re-verifies every stored chunk in the background,
  at most ``scrub_bytes_per_s``, and repairs corrupt ones from peers;
- a peer that stays unreachable for longer than ``rpc_timeout_ms`` is
  logged, at most once a minute per peer (fleetsuit/unreachable.py);
- with ``upload_bytes_per_s`` set, every byte uploaded (chunks served to
  peers, Get streams) first passes a token bucket (ratelimit.py). A chunk
  upload waits for it while holding its upload slot, so peers asking a
  saturated node are told Busy and pull from other holders instead.

Everything runs on one asyncio loop; only this module's tasks touch the
routing table and the store, so no locks. Worker threads only read the
store and hash (RocksDB reads and hashlib release the GIL).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fleetsuit.logs import RateLimitedLog
from fleetsuit.unreachable import Unreachable
from services.dht.config import DhtConfig
from services.dht.content import (
    Chunker,
    ContentId,
    Digest,
    Root,
    decode_root,
    digest_of,
    encode_root,
    format_id,
)
from services.dht.errors import (
    BlobTooLarge,
    Busy,
    ChunkCorrupt,
    DhtError,
    InvalidArgument,
    NotFound,
    PeerUnavailable,
)
from services.dht.fetch import BlobFetch, SourcePicker, decode_have, encode_have
from services.dht.metrics import DhtMetrics
from services.dht.ratelimit import TokenBucket
from services.dht.routing import Contact, Lookup, NodeId, RoutingTable, distance
from services.dht.scrub import Scrubber
from services.dht.store import BlobStore
from services.dht.transport import PeerTransport

log = logging.getLogger("fleetsuit.dht.node")

MAX_PROVIDERS_PER_KEY = 32
READ_AHEAD_CHUNKS = 4  # chunks read and verified ahead of the one being sent
PROVIDER_REFRESH_CHUNKS = 8  # a fetch looks for new holders after this many chunks
MAX_BUSY_ROUNDS = 200  # back-offs (5 ms growing to 200 ms) before a chunk gives up
MAX_HINT_WAIT_S = 1.0  # longest a back-off follows a busy holder's retry-after hint
REFRESH_MIN_S = 0.25  # a fetch re-reads have-maps at most this often
# Partial holders whose have-map one refresh re-reads: with every node of a
# 12-node spread partial, re-reading all of them every 0.25 s was ~90 Have
# calls a second per node, more CPU than the chunks themselves.
HAVE_PER_REFRESH = 3
LOOKUP_MIN_S = 1.0  # and looks providers up again at most this often
LOOKUP_MAX_S = 8.0  # or, while lookups find no new holder, this often
UNREACHABLE_LOG_S = 60.0  # at most one "peer unreachable" line per peer this often


@dataclass(frozen=True, slots=True)
class PutResult:
    content_id: ContentId
    size: int
    chunk_count: int
    replicas_requested: int


@dataclass(frozen=True, slots=True)
class StatResult:
    content_id: ContentId
    size: int
    local: bool
    pinned: bool
    chunk_count: int
    chunk_bytes: int
    holders: tuple[Contact, ...]


class DhtNode:
    def __init__(
        self,
        config: DhtConfig,
        self_contact: Contact,
        store: BlobStore,
        transport: PeerTransport,
        metrics: DhtMetrics,
        rng: random.Random,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.contact = self_contact
        self.store = store
        self.transport = transport
        self.metrics = metrics
        self.rng = rng
        self.table = RoutingTable(self_contact, config.bucket_size)
        self.clock = clock  # seconds; provider-record expiry and the upload limit read it
        self._upload_limit = (
            TokenBucket(config.upload_bytes_per_s, config.upload_burst_bytes, clock())
            if config.upload_bytes_per_s
            else None
        )
        # key -> provider -> (contact, expiry on ``clock``); oldest announcement first
        self.providers: dict[bytes, dict[NodeId, tuple[Contact, float]]] = {}
        self._fetches: dict[Digest, asyncio.Task[Root]] = {}
        self._active: dict[Digest, BlobFetch] = {}  # fetches whose root is known
        self._uploads = 0  # FetchChunk requests being served
        self._fetch_started = asyncio.Event()
        self._tasks: set[asyncio.Task[object]] = set()
        self.repair_passes = 0
        self._evictions_seen = 0
        self._unreachable = Unreachable(config.rpc_timeout_ms / 1000)
        self._unreachable_log = RateLimitedLog(log, interval_s=UNREACHABLE_LOG_S)
        self._scrubber = Scrubber(store, metrics, self._refetch_chunk, rng)
        self._refresh()

    # ------------------------------------------------------------ plumbing

    def _spawn(self, coro: Awaitable[object]) -> None:
        task: asyncio.Task[object] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        for task in list(self._tasks) + list(self._fetches.values()):
            task.cancel()
        await asyncio.gather(*self._tasks, *self._fetches.values(), return_exceptions=True)
        await self.transport.close()

    def _refresh(self) -> None:
        self.metrics.blobs_stored.set(len(self.store.blobs()))
        self.metrics.bytes_stored.set(self.store.used_bytes)
        if self.store.evictions > self._evictions_seen:
            self.metrics.evictions.inc(self.store.evictions - self._evictions_seen)
            self._evictions_seen = self.store.evictions

    def observe(self, contact: Contact) -> None:
        self._unreachable.answered(contact.address)
        stale = self.table.observe(contact)
        if stale is not None:
            self._spawn(self._probe(stale))

    async def _probe(self, contact: Contact) -> None:
        """Kademlia §2.2: keep the old contact if it answers, else replace it."""
        try:
            await self.transport.ping(contact.address)
            self.table.observe(contact)
        except DhtError as exc:
            self._note_failure(contact.address, exc)
            self._forget(contact.node_id)

    def _peer_failed(self, contact: Contact, error: DhtError) -> None:
        self._note_failure(contact.address, error)
        if self.table.record_failure(contact.node_id):
            self._forget(contact.node_id)

    def _note_failure(self, address: str, error: DhtError) -> None:
        """Log a peer unreachable for longer than a call's timeout (rate limited)."""
        if not isinstance(error, PeerUnavailable):
            return  # it answered, if only with an error
        down_s = self._unreachable.failed(address, self.clock())
        if down_s is not None:
            self._unreachable_log.log(
                address, logging.WARNING,
                "peer %s unreachable for %.1f s (call timeout %.1f s): %s",
                address, down_s, self.config.rpc_timeout_ms / 1000, error,
            )  # fmt: skip

    def _forget(self, node_id: NodeId) -> None:
        self.table.remove(node_id)
        for records in self.providers.values():
            records.pop(node_id, None)

    async def pace_upload(self, nbytes: int) -> None:
        """Wait until the upload limit lets ``nbytes`` go (at once when unlimited)."""
        if self._upload_limit is None:
            return
        delay = self._upload_limit.reserve(nbytes, self.clock())
        if delay > 0:
            self.metrics.upload_wait_seconds.inc(delay)
            await asyncio.sleep(delay)

    # ------------------------------------------------------------ lookups

    async def _iterate(
        self, target: bytes, query: Callable[[Contact], Awaitable[list[Contact]]]
    ) -> Lookup:
        started = time.perf_counter()
        lookup = Lookup(
            target,
            self.table.closest(target, self.config.bucket_size),
            self.contact.node_id,
            self.config.bucket_size,
            self.config.alpha,
        )
        pending: dict[asyncio.Task[list[Contact]], Contact] = {}
        while True:
            for contact in lookup.next_queries():
                pending[asyncio.ensure_future(query(contact))] = contact
            if not pending:
                break
            done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                contact = pending.pop(task)
                try:
                    closer = task.result()
                except DhtError as exc:
                    lookup.on_failure(contact)
                    self._peer_failed(contact, exc)
                    continue
                self.observe(contact)
                lookup.on_response(contact, closer)
        self.metrics.lookup_seconds.observe(time.perf_counter() - started)
        if lookup.result():
            self.metrics.lookup_hops.observe(lookup.hops)
        return lookup

    async def lookup(self, target: bytes) -> list[Contact]:
        """The k closest live nodes to ``target``, this node included."""

        async def query(contact: Contact) -> list[Contact]:
            return await self.transport.find_node(contact, target)

        found = (await self._iterate(target, query)).result()
        ranked = sorted([*found, self.contact], key=lambda c: distance(c.node_id, target))
        return ranked[: self.config.k]

    async def find_providers(self, key: bytes) -> tuple[list[Contact], list[Contact]]:
        """(holders of ``key`` found in the network, k closest live nodes)."""
        holders: dict[NodeId, Contact] = {c.node_id: c for c in self.live_providers(key)}

        async def query(contact: Contact) -> list[Contact]:
            providers, closer = await self.transport.find_providers(contact, key)
            for p in providers:
                holders[p.node_id] = p
            return closer

        found = (await self._iterate(key, query)).result()
        holders.pop(self.contact.node_id, None)
        ranked = sorted([*found, self.contact], key=lambda c: distance(c.node_id, key))
        return list(holders.values()), ranked[: self.config.k]

    async def bootstrap(self) -> None:
        for address in self.config.seeds:
            if address == self.contact.address:
                continue
            try:
                self.observe(await self.transport.ping(address))
            except DhtError as exc:
                self._note_failure(address, exc)
                log.debug("seed %s not reachable: %s", address, exc)
        if len(self.table):
            await self.lookup(self.contact.node_id)  # Kademlia §2.3: join by looking up self

    # ------------------------------------------------------------ client API

    async def put(self, data: AsyncIterator[bytes | memoryview], pin: bool) -> PutResult:
        chunker = Chunker(self.config.chunk_bytes)
        pending = self.store.begin()
        try:
            async for piece in data:
                self.metrics.bytes_in.inc(len(piece))
                if chunker.total_size + len(piece) > self.config.max_blob_bytes:
                    raise BlobTooLarge(f"blob exceeds max_blob_bytes={self.config.max_blob_bytes}")
                # Hashing (the whole blob and each chunk) runs in a worker thread:
                # hashlib releases the GIL, so gRPC keeps receiving meanwhile.
                for chunk, digest in await asyncio.to_thread(_feed, chunker, piece):
                    pending.add_chunk(chunk, digest=digest)
            tail, blob = chunker.finish()
            if tail is not None:
                pending.add_chunk(tail)
            root = Root(
                self.config.chunk_bytes,
                chunker.total_size,
                tuple(pending.held[i] for i in range(len(pending.held))),
            )
            await asyncio.to_thread(self.store.persist)
            pending.commit(blob, root)
        except BaseException:
            pending.abort()
            raise
        if pin:
            self.store.set_pinned(blob, True)
        self._refresh()
        requested = await self._replicate_out(blob)
        return PutResult(format_id(blob), root.total_size, len(root.chunks), requested)

    async def read(
        self, blob: Digest, offset: int, length: int
    ) -> AsyncIterator[tuple[int, bytes | memoryview, int]]:
        """(offset, verified bytes, blob size) of ``blob`` from ``offset``
        (``length`` 0 = to the end).

        A blob that is not complete here is fetched, and streamed chunk by
        chunk as the chunks land (``_read_fetching``)."""
        root = self.store.root(blob)
        if root is None or not self.store.is_complete(blob):
            async for item in self._read_fetching(blob, offset, length):
                yield item
            return
        if offset > root.total_size:
            raise InvalidArgument(f"offset {offset} beyond size {root.total_size}")
        end = root.total_size if length == 0 else min(root.total_size, offset + length)
        wanted = [(i, s) for i, s in root.chunk_range(offset) if i * root.chunk_bytes < end]
        self.store.acquire(blob)
        ahead: deque[asyncio.Future[bytes | None]] = deque()
        try:
            self.store.touch(blob)
            # Read-ahead: the next chunks are read and verified in worker threads
            # (RocksDB and hashlib release the GIL) while this one is being sent.
            for n, (index, start) in enumerate(wanted):
                while len(ahead) < READ_AHEAD_CHUNKS and n + len(ahead) < len(wanted):
                    nxt = wanted[n + len(ahead)][0]
                    ahead.append(
                        asyncio.ensure_future(asyncio.to_thread(self.store.peek_chunk, blob, nxt))
                    )
                data = await ahead.popleft()
                if data is None:  # missing or corrupt: the slow path drops and refetches
                    data = await self._local_chunk(blob, index)
                base = index * root.chunk_bytes
                stop = min(len(data), end - base)
                self.metrics.bytes_out.inc(stop - start)
                yield base + start, _slice(data, start, stop), root.total_size
        finally:
            for future in ahead:
                future.cancel()
            self.store.release(blob)

    async def _read_fetching(
        self, blob: Digest, offset: int, length: int
    ) -> AsyncIterator[tuple[int, bytes | memoryview, int]]:
        """Stream a blob that is being fetched, in order, as its chunks land.

        Each chunk is verified against the (not yet trusted) root when it is
        received and again when it is read back here; the last chunk is only
        sent once the whole blob has hashed to its id and been committed, so a
        peer that forged a root cannot make a Get complete with wrong bytes."""
        task = self._start_fetch(blob, [], first=offset)
        fetch = await self._wait_fetch_started(blob, task)
        if fetch is None:  # it finished (or failed) before we could attach
            await asyncio.shield(task)
            async for item in self.read(blob, offset, length):
                yield item
            return
        root = fetch.root
        if offset > root.total_size:
            raise InvalidArgument(f"offset {offset} beyond size {root.total_size}")
        end = root.total_size if length == 0 else min(root.total_size, offset + length)
        fetch.prioritize(offset // root.chunk_bytes)
        held: tuple[int, bytes | memoryview, int] | None = None
        for index, start in root.chunk_range(offset):
            base = index * root.chunk_bytes
            if base >= end:
                break
            while not (fetch.has(index) or task.done()):
                await _first_of(fetch.changed(), task)
            if task.done():  # committed (or failed): the rest comes from the store
                await asyncio.shield(task)
                if held is not None:
                    yield held
                async for item in self.read(blob, base + start, end - base - start):
                    yield item
                return
            data = await asyncio.to_thread(self.store.read_held, root.chunks[index])
            if data is None:
                raise ChunkCorrupt(blob, index, "on disk while fetching")
            stop = min(len(data), end - base)
            self.metrics.bytes_out.inc(stop - start)
            if held is not None:
                yield held
            held = (base + start, _slice(data, start, stop), root.total_size)
        await asyncio.shield(task)  # the whole digest is checked before the last piece
        if held is not None:
            yield held

    async def _wait_fetch_started(self, blob: Digest, task: asyncio.Task[Root]) -> BlobFetch | None:
        """The fetch record once the root is known; None if the task ended first."""
        while blob not in self._active and not task.done():
            await _first_of(self._fetch_started.wait(), task)
        return self._active.get(blob)

    async def _local_chunk(self, blob: Digest, index: int) -> bytes:
        try:
            return self.store.read_chunk(blob, index)
        except ChunkCorrupt:
            self.metrics.corrupt_chunks.labels("disk").inc()
            log.warning("chunk %d of %s corrupt on disk; fetching it again", index, format_id(blob))
        except NotFound:
            pass
        return await self._refetch_chunk(blob, index)

    async def _refetch_chunk(self, blob: Digest, index: int) -> bytes:
        """Chunk ``index`` of a blob whose root is here, from any holder; holders
        that are only busy are asked again after a back-off."""
        holders, _closest = await self.find_providers(blob)
        for busy_round in range(MAX_BUSY_ROUNDS):
            self.rng.shuffle(holders)
            busy = False
            for holder in holders:
                try:
                    data = await self.transport.fetch_chunk(holder, blob, index)
                    self.metrics.bytes_in.inc(len(data))
                    self.store.put_chunk(blob, index, data)
                except ChunkCorrupt:
                    self.metrics.corrupt_chunks.labels("wire").inc()
                    continue
                except Busy:
                    busy = True
                    continue
                except PeerUnavailable as exc:
                    self._peer_failed(holder, exc)
                    continue
                except DhtError:
                    continue
                self.metrics.repair_actions.labels("chunk").inc()
                self._refresh()
                return data
            if not busy:
                break
            await asyncio.sleep(min(0.2, 0.005 * (busy_round + 1)) * (0.5 + self.rng.random()))
        raise NotFound(f"no holder could supply chunk {index} of {format_id(blob)}")

    async def stat(self, blob: Digest, lookup: bool) -> StatResult:
        root = self.store.root(blob)
        local = self.store.is_complete(blob)
        holders: dict[NodeId, Contact] = {}
        if local:
            holders[self.contact.node_id] = self.contact
        for contact in self.live_providers(blob):
            holders[contact.node_id] = contact
        if lookup:
            found, _closest = await self.find_providers(blob)
            holders.update((c.node_id, c) for c in found)
        if root is None and lookup and holders:
            for holder in holders.values():
                if holder.node_id == self.contact.node_id:
                    continue
                try:
                    root = decode_root(await self.transport.fetch_root(holder, blob))
                    break
                except DhtError:
                    continue
        if root is None and not holders:
            raise NotFound(f"{format_id(blob)} is not known")
        return StatResult(
            content_id=format_id(blob),
            size=root.total_size if root else 0,
            local=local,
            pinned=self.store.is_pinned(blob),
            chunk_count=len(root.chunks) if root else 0,
            chunk_bytes=root.chunk_bytes if root else 0,
            holders=tuple(holders.values()),
        )

    async def pin(self, blob: Digest) -> None:
        await self.ensure_local(blob)
        self.store.set_pinned(blob, True)

    async def unpin(self, blob: Digest) -> None:
        self.store.set_pinned(blob, False)

    # ------------------------------------------------------------ fetching

    async def ensure_local(self, blob: Digest, sources: list[Contact] | None = None) -> Root:
        """Make ``blob`` complete here (fetching from peers) and return its root."""
        root = self.store.root(blob)
        if root is not None and self.store.is_complete(blob):
            return root
        return await asyncio.shield(self._start_fetch(blob, sources or []))

    def _start_fetch(
        self, blob: Digest, hints: list[Contact], first: int | None = None
    ) -> asyncio.Task[Root]:
        """The fetch of ``blob`` in progress, or a new one. A background fetch
        starts at a random chunk; a reader's starts where it reads (``first``
        is a byte offset)."""
        task = self._fetches.get(blob)
        if task is None:
            task = asyncio.ensure_future(self._fetch(blob, hints, first))
            self._fetches[blob] = task
            task.add_done_callback(lambda t: self._fetch_done(blob, t))
        return task

    def _fetch_done(self, blob: Digest, task: asyncio.Task[Root]) -> None:
        if self._fetches.get(blob) is task:
            del self._fetches[blob]
        if not task.cancelled():
            task.exception()  # retrieved here; waiters get it through their own await

    async def _fetch(self, blob: Digest, hints: list[Contact], first: int | None) -> Root:
        if self.store.has_root(blob):  # known but a chunk was dropped
            for index in self.store.missing_chunks(blob):
                await self._refetch_chunk(blob, index)
            root = self.store.root(blob)
            assert root is not None
            return root
        picker = SourcePicker(self.rng)
        picker.add([c for c in hints if c.node_id != self.contact.node_id])
        if not picker.sources:
            found, _closest = await self.find_providers(blob)
            picker.add(found)
        if not picker.sources:
            raise NotFound(f"no node holds {format_id(blob)}")
        holders = [s.contact for s in picker.sources.values()]
        self.rng.shuffle(holders)
        root = await self._fetch_root(blob, holders)
        start = self.rng.randrange(max(1, len(root.chunks))) if first is None else 0
        if first is not None and root.chunk_bytes:
            start = first // root.chunk_bytes
        fetch = BlobFetch(blob, root, self.store.begin(), start)
        self._active[blob] = fetch
        self._fetch_started.set()
        self._fetch_started = asyncio.Event()
        # A partial holder is a source too: announce now, serve what is held.
        self._spawn(self._announce(blob))
        try:
            await self._fetch_chunks(fetch, picker)
            await asyncio.to_thread(fetch.pending.verify_whole, blob)
            await asyncio.to_thread(self.store.persist)
            fetch.pending.commit(blob, root)
        except BaseException as exc:
            fetch.fail(exc)
            fetch.pending.abort()
            raise
        finally:
            del self._active[blob]
            fetch.notify()
        self._refresh()
        await self._announce(blob)
        return root

    async def _fetch_root(self, blob: Digest, holders: list[Contact]) -> Root:
        for holder in holders:
            try:
                root = decode_root(await self.transport.fetch_root(holder, blob))
            except PeerUnavailable as exc:
                self._peer_failed(holder, exc)
                continue
            except DhtError:
                continue
            if root.total_size > self.config.max_blob_bytes:
                raise BlobTooLarge(f"{format_id(blob)} is larger than max_blob_bytes")
            return root
        raise NotFound(f"no holder could supply the root of {format_id(blob)}")

    async def _fetch_chunks(self, fetch: BlobFetch, picker: SourcePicker) -> None:
        """Chunks in ``fetch.queue`` order, ``fetch_parallelism`` in flight, each
        from the least-loaded holder; the holder list is refreshed as the
        fetch goes so that nodes which started fetching later join in."""
        landed = 0
        loop = asyncio.get_running_loop()
        refreshing: asyncio.Task[None] | None = None
        last_refresh = -math.inf
        last_lookup = -math.inf
        lookup_every = LOOKUP_MIN_S

        async def have(source: Contact) -> None:
            complete, bitmap = await self.transport.have(source, fetch.blob)
            has = None if complete else decode_have(bitmap, len(fetch.root.chunks))
            picker.learn_have(source, has)

        async def rediscover(force: bool) -> None:
            """New holders from a provider lookup (not too often: it is an
            iterative lookup), and what each partial holder holds now."""
            nonlocal last_lookup, lookup_every
            if force or loop.time() - last_lookup >= lookup_every:
                last_lookup = loop.time()
                with contextlib.suppress(DhtError):
                    found, _closest = await self.find_providers(fetch.blob)
                    new = picker.add([c for c in found if c.node_id != self.contact.node_id])
                    # Once every holder is known, lookups only cost: back off
                    # (doubling up to LOOKUP_MAX_S) until one finds a new holder.
                    lookup_every = LOOKUP_MIN_S if new else min(LOOKUP_MAX_S, 2 * lookup_every)
            asking = picker.to_ask(HAVE_PER_REFRESH)
            await asyncio.gather(*(have(c) for c in asking), return_exceptions=True)

        async def refresh(force: bool = False) -> None:
            """One rediscovery shared by every worker, at most every
            REFRESH_MIN_S unless ``force`` (a chunk is about to give up)."""
            nonlocal refreshing, last_refresh
            if refreshing is None or refreshing.done():
                if not force and loop.time() - last_refresh < REFRESH_MIN_S:
                    return
                last_refresh = loop.time()
                refreshing = asyncio.ensure_future(rediscover(force))
            await asyncio.shield(refreshing)

        async def worker() -> None:
            nonlocal landed
            while fetch.queue:
                index = fetch.queue.popleft()
                data, digest = await self._fetch_one(fetch, picker, index, refresh)
                fetch.pending.add_chunk(data, index=index, digest=digest)
                fetch.notify()
                landed += 1
                if landed % PROVIDER_REFRESH_CHUNKS == 0:
                    self._spawn(refresh())

        try:
            async with asyncio.TaskGroup() as group:
                for _ in range(min(self.config.fetch_parallelism, max(1, len(fetch.queue)))):
                    group.create_task(worker())
        except BaseExceptionGroup as group_error:
            raise group_error.exceptions[0] from None
        finally:
            if refreshing is not None:
                refreshing.cancel()

    async def _fetch_one(
        self,
        fetch: BlobFetch,
        picker: SourcePicker,
        index: int,
        rediscover: Callable[[bool], Awaitable[None]],
    ) -> tuple[bytes, Digest]:
        """Chunk ``index`` from some holder, verified against the root."""
        tried: set[NodeId] = set()
        rediscovered = False
        busy_rounds = 0
        expected = fetch.root.chunks[index]
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            holder = picker.pick(index, tried, fallback=not picker.busy_for(index, now), now=now)
            if holder is None:
                if busy_rounds < MAX_BUSY_ROUNDS and picker.busy_for(index, now):
                    # Every holder known to have it is busy: learn who else has
                    # it meanwhile (others fetched it), back off, ask again.
                    busy_rounds += 1
                    fetch.busy_level += 1
                    await rediscover(False)  # shared and rate-limited
                    # The back-off grows with this chunk's busy rounds and with
                    # the whole fetch's: when every holder's uploads are full
                    # (rate-limited links), a new chunk does not start again at
                    # 5 ms and flood the holders with requests they refuse.
                    rounds = max(busy_rounds, fetch.busy_level)
                    backoff = min(0.2, 0.005 * rounds) * (0.5 + self.rng.random())
                    # A rate-limited holder said when it has a slot again:
                    # sleep until the first such holder does (at most
                    # MAX_HINT_WAIT_S) instead of polling it.
                    hinted = min(MAX_HINT_WAIT_S, picker.resume_in(loop.time()))
                    await asyncio.sleep(max(backoff, hinted))
                    picker.clear_busy(index)
                    tried.clear()
                    continue
                if rediscovered:
                    raise NotFound(
                        f"no holder could supply chunk {index} of {format_id(fetch.blob)}"
                    )
                rediscovered = True
                tried.clear()
                await rediscover(True)
                continue
            tried.add(holder.node_id)
            try:
                data = await self.transport.fetch_chunk(holder, fetch.blob, index)
            except NotFound:
                self.metrics.chunk_requests.labels("missing").inc()
                picker.lacks(holder, index)
                continue
            except Busy as busy:
                self.metrics.chunk_requests.labels("busy").inc()
                picker.busy(holder, index, busy.retry_after_s, loop.time())
                continue
            except PeerUnavailable as exc:
                self.metrics.chunk_requests.labels("failed").inc()
                picker.done(holder, ok=False)
                self._peer_failed(holder, exc)
                continue
            except DhtError:
                self.metrics.chunk_requests.labels("failed").inc()
                picker.done(holder, ok=False)
                self.metrics.corrupt_chunks.labels("wire").inc()
                continue
            self.metrics.bytes_in.inc(len(data))
            digest = await asyncio.to_thread(digest_of, data)  # off the event loop
            if digest != expected:
                picker.done(holder, ok=False)
                self.metrics.corrupt_chunks.labels("wire").inc()
                continue
            picker.done(holder, ok=True)
            fetch.busy_level //= 2
            self.metrics.chunk_requests.labels("ok").inc()
            return data, digest

    # ------------------------------------------------------------ replication

    async def _replicate_out(self, blob: Digest) -> int:
        """Ask the k closest live nodes to hold ``blob``; returns how many started."""
        closest = await self.lookup(blob)
        started = 0
        for contact in closest:
            if contact.node_id == self.contact.node_id:
                continue
            try:
                if await self.transport.replicate(contact, blob, [self.contact]):
                    started += 1
            except PeerUnavailable as exc:
                self._peer_failed(contact, exc)
            except DhtError as exc:
                log.info("replicate to %s refused: %s", contact.address, exc)
        await self._announce(blob, closest)
        return started

    async def _announce(self, blob: Digest, closest: list[Contact] | None = None) -> None:
        """Provider records for this node at the k closest nodes to ``blob``."""
        targets = closest if closest is not None else await self.lookup(blob)
        for contact in targets:
            if contact.node_id == self.contact.node_id:
                continue
            try:
                await self.transport.store(contact, blob, self.contact)
            except PeerUnavailable as exc:
                self._peer_failed(contact, exc)
            except DhtError:
                continue

    async def repair_once(self) -> int:
        """One pass of the repair loop; returns the replicas it requested."""
        requested = 0
        for blob in self.store.blobs():
            if not self.store.is_complete(blob):
                try:
                    await self.ensure_local(blob)
                except DhtError as exc:
                    log.warning("cannot repair %s: %s", format_id(blob), exc)
                    continue
            started = await self._replicate_out(blob)
            if started:
                self.metrics.repair_actions.labels("replica").inc(started)
            requested += started
        self.metrics.replicas_missing.set(requested)
        self.repair_passes += 1
        self._refresh()
        return requested

    async def maintenance(self, stop: asyncio.Event) -> None:
        interval = self.config.repair_interval_ms / 1000
        while not stop.is_set():
            try:
                if len(self.table) < len(self.config.seeds):
                    await self.bootstrap()
                await self.repair_once()
            except DhtError as exc:
                log.warning("repair pass failed: %s", exc)
            except Exception:
                log.exception("repair pass crashed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval * (0.5 + self.rng.random()))

    # ------------------------------------------------------------ peer API

    def handle_find_node(self, sender: Contact, target: bytes) -> list[Contact]:
        self.observe(sender)
        return self.table.closest(target, self.config.bucket_size)

    def handle_find_providers(
        self, sender: Contact, key: bytes
    ) -> tuple[list[Contact], list[Contact]]:
        self.observe(sender)
        providers = self.live_providers(key)
        if self.store.is_complete(Digest(key)) or Digest(key) in self._active:
            providers.insert(0, self.contact)  # complete or partial: it serves chunks
        return providers[:MAX_PROVIDERS_PER_KEY], self.table.closest(key, self.config.bucket_size)

    def handle_store(self, sender: Contact, key: bytes, provider: Contact) -> None:
        """A provider record, kept for ``provider_ttl_ms`` unless announced again."""
        self.observe(sender)
        records = self.providers.setdefault(key, {})
        records.pop(provider.node_id, None)  # re-announced: now the newest
        records[provider.node_id] = (provider, self.clock() + self.config.provider_ttl_ms / 1000)
        while len(records) > MAX_PROVIDERS_PER_KEY:
            records.pop(next(iter(records)))

    def live_providers(self, key: bytes) -> list[Contact]:
        """Unexpired provider records for ``key`` (expired ones are dropped)."""
        records = self.providers.get(key)
        if not records:
            return []
        now = self.clock()
        for node_id in [n for n, (_c, expires) in records.items() if expires <= now]:
            del records[node_id]
        if not records:
            del self.providers[key]
        return [contact for contact, _expires in records.values()]

    def handle_replicate(self, sender: Contact, key: bytes, sources: list[Contact]) -> bool:
        self.observe(sender)
        blob = Digest(key)
        if self.store.is_complete(blob):
            return False
        if blob not in self._fetches:
            self._spawn(self._replicate_in(blob, sources))
        return True

    async def _replicate_in(self, blob: Digest, sources: list[Contact]) -> None:
        try:
            await self.ensure_local(blob, sources)
        except DhtError as exc:
            log.warning("replica of %s not fetched: %s", format_id(blob), exc)

    def handle_fetch_root(self, sender: Contact, key: bytes) -> bytes:
        self.observe(sender)
        fetch = self._active.get(Digest(key))
        if fetch is not None and not self.store.has_root(fetch.blob):
            return encode_root(fetch.root)  # a partial holder: the fetcher checks it too
        return self.store.encoded_root(Digest(key))

    def handle_have(self, sender: Contact, key: bytes) -> tuple[bool, bytes]:
        """(complete, have-bitmap): which chunks of ``key`` are held here."""
        self.observe(sender)
        blob = Digest(key)
        if self.store.is_complete(blob):
            return True, b""
        fetch = self._active.get(blob)
        if fetch is None:
            return False, b""
        return False, encode_have(fetch.pending.held, len(fetch.root.chunks))

    async def handle_fetch_chunk(self, sender: Contact, key: bytes, index: int) -> bytes:
        """A chunk of a blob held here, complete or still being fetched; read
        and verified in a worker thread. At most ``max_uploads`` at once: the
        rest are told ``Busy`` and ask another holder, which spreads the
        upload over every node holding the chunk (epidemic, not star)."""
        self.observe(sender)
        if self._uploads >= self.config.max_uploads:
            raise Busy(
                f"{self.config.max_uploads} chunk uploads in progress",
                self._upload_slot_eta_s(),
            )
        self._uploads += 1
        try:
            data = await self._chunk_for_peer(Digest(key), index)
            await self.pace_upload(len(data))
        finally:
            self._uploads -= 1
        self.metrics.bytes_out.inc(len(data))
        return data

    def _upload_slot_eta_s(self) -> float:
        """When an upload slot should be free again, for a Busy answer: with
        an upload limit, the slots drain one by one over the bucket's
        backlog; without one there is no estimate (0)."""
        if self._upload_limit is None:
            return 0.0
        return self._upload_limit.backlog_s(self.clock()) / self.config.max_uploads

    async def _chunk_for_peer(self, blob: Digest, index: int) -> bytes:
        fetch = self._active.get(blob)
        if fetch is not None and not self.store.has_root(blob):
            if not 0 <= index < len(fetch.root.chunks) or not fetch.has(index):
                raise NotFound(f"chunk {index} of {format_id(blob)} is not here yet")
            data = await asyncio.to_thread(self.store.read_held, fetch.root.chunks[index])
            if data is None:
                raise NotFound(f"chunk {index} of {format_id(blob)} is not readable here")
            return data
        data = await asyncio.to_thread(self.store.peek_chunk, blob, index)
        if data is not None:
            return data
        try:
            return self.store.read_chunk(blob, index)  # raises, dropping a corrupt chunk
        except ChunkCorrupt:
            self.metrics.corrupt_chunks.labels("disk").inc()
            self._spawn(self._replicate_in(blob, []))  # get it back from another holder
            raise

    # ------------------------------------------------------------ scrub (scrub.py)

    async def scrub_once(self, bytes_per_s: float) -> tuple[int, int]:
        return await self._scrubber.scrub_once(bytes_per_s)

    async def scrub(self, stop: asyncio.Event) -> None:
        """The scrub loop: a pass every ``scrub_interval_ms``."""
        await self._scrubber.run(stop, self.config.scrub_interval_ms / 1000, float(self.config.scrub_bytes_per_s))


def _feed(chunker: Chunker, piece: bytes | memoryview) -> list[tuple[bytes, Digest]]:
    """Chunks completed by ``piece`` with their digests (runs in a worker thread)."""
    return [(chunk, digest_of(chunk)) for chunk in chunker.feed(piece)]


def _slice(data: bytes, start: int, stop: int) -> bytes | memoryview:
    if start == 0 and stop == len(data):
        return data
    return memoryview(data)[start:stop]


async def _first_of(waiter: Awaitable[object], task: asyncio.Future[Root]) -> None:
    """Wait until ``waiter`` finishes or ``task`` is done, whichever is first."""
    other: asyncio.Future[object] = asyncio.ensure_future(waiter)
    either: set[asyncio.Future[Any]] = {other, task}
    try:
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
    finally:
        other.cancel()
