"""State of one blob being fetched from peers, and how sources are chosen.

``SourcePicker`` (sans-I/O, randomness injected) decides which holder to ask
for a chunk: the one with the fewest requests from this node in flight, ties
broken at random, skipping holders that said they lack that chunk. Spreading
requests this way, and counting nodes that are still fetching as holders,
is what makes a blob spread epidemically: every new partial holder adds
upload capacity, instead of everyone pulling from the first k holders.
A holder that answers Busy is left alone by every worker of the fetch until
the next back-off, and while some holder of a chunk is only busy, holders
whose have-map lacks it are not asked: with uploads rate-limited, asking
every holder in turn made a dozen failed requests per chunk received.

``BlobFetch`` is the asyncio-side record of a fetch in progress: the root
(not yet trusted), the order chunks are requested in, the chunks held so
far, and an event for waiters (a Get on a node that lacks the blob streams
chunk by chunk as they land, and other fetchers are served the chunks
already held). A background fetch starts at a random chunk, so partial
holders hold different parts and are useful to each other; a reader moves
the chunks it needs to the front. The root is only trusted, and committed,
once the chunks hash to the blob id (see content.py); until then every chunk
is verified against the untrusted root, and a streaming reader withholds the
last chunk until the whole digest has been checked.

The fetch loop itself (the network calls) lives in node.py.
"""

from __future__ import annotations

import asyncio
import random
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from services.dht.content import Digest, Root
from services.dht.routing import Contact, NodeId
from services.dht.store import PendingBlob


def encode_have(held: Iterable[int], count: int) -> bytes:
    """Bit i of the result (byte i // 8, bit i % 8) is set when i is held."""
    bitmap = bytearray((count + 7) // 8)
    for index in held:
        if 0 <= index < count:
            bitmap[index // 8] |= 1 << (index % 8)
    return bytes(bitmap)


def decode_have(bitmap: bytes, count: int) -> set[int]:
    """The chunk indices set in ``bitmap`` (bits beyond ``count`` ignored)."""
    return {i for i in range(min(count, 8 * len(bitmap))) if bitmap[i // 8] >> (i % 8) & 1}


@dataclass
class _Source:
    contact: Contact
    in_flight: int = 0
    has: set[int] | None = None  # chunks it said it holds; None: all, or not asked
    asked: bool = False  # its have-map was requested at least once
    lacks: set[int] = field(default_factory=set)  # chunks it said it does not hold
    busy: set[int] = field(default_factory=set)  # chunks it was too busy to serve
    # It said Busy since the last back-off: its upload slots are full for any
    # chunk, so no worker of this fetch asks it again until then.
    saturated: bool = False
    # It said when it expects a free slot (Busy with a retry-after hint, from
    # a rate-limited holder): not asked again before then, by any worker.
    resume_at: float = 0.0
    failures: int = 0


@dataclass
class SourcePicker:
    """Least-loaded choice among holders (sans-I/O)."""

    rng: random.Random
    max_failures: int = 2
    sources: dict[NodeId, _Source] = field(default_factory=dict)

    def add(self, contacts: list[Contact]) -> int:
        """Learn holders; returns how many were new. Old ones get a new chance."""
        new = 0
        for contact in contacts:
            known = self.sources.get(contact.node_id)
            if known is None:
                self.sources[contact.node_id] = _Source(contact)
                new += 1
            else:
                known.lacks.clear()
        return new

    def to_ask(self, limit: int | None = None) -> list[Contact]:
        """Sources whose have-map is worth (re)asking: every one never asked,
        then partial ones, at most ``limit`` of those (a random few, so each
        refresh costs the same whatever the number of holders)."""
        never = [s.contact for s in self.sources.values() if not s.asked]
        partial = [s.contact for s in self.sources.values() if s.asked and s.has is not None]
        if limit is not None and len(partial) > limit:
            partial = self.rng.sample(partial, limit)
        return never + partial

    def learn_have(self, contact: Contact, has: set[int] | None) -> None:
        """What ``contact`` holds (None: everything); its NotFounds are forgotten."""
        source = self.sources.get(contact.node_id)
        if source is not None:
            source.has = has
            source.asked = True
            source.lacks.clear()

    def pick(
        self, index: int, tried: set[NodeId], fallback: bool = True, now: float = 0.0
    ) -> Contact | None:
        usable = [
            s
            for s in self.sources.values()
            if s.contact.node_id not in tried
            and s.failures < self.max_failures
            and index not in s.lacks
            and index not in s.busy
            and not s.saturated
            and s.resume_at <= now
        ]
        # Partial holders known to have the chunk first (nobody else knows to
        # ask them, so they are the least loaded), then complete holders (or
        # not yet asked); one whose have-map lacks it may have received it
        # since, so with ``fallback`` it is still tried, last. Without it
        # (some holder of the chunk is only busy) waiting beats asking nodes
        # that most likely answer NotFound.
        candidates = [s for s in usable if s.has is not None and index in s.has] or [
            s for s in usable if s.has is None
        ]
        if not candidates and fallback:
            candidates = usable
        if not candidates:
            return None
        least = min(s.in_flight for s in candidates)
        choice = self.rng.choice([s for s in candidates if s.in_flight == least])
        choice.in_flight += 1
        return choice.contact

    def done(self, contact: Contact, ok: bool) -> None:
        source = self.sources.get(contact.node_id)
        if source is not None:
            source.in_flight -= 1
            source.failures = 0 if ok else source.failures + 1
            if ok:
                source.saturated = False

    def busy(
        self, contact: Contact, index: int, retry_after_s: float = 0.0, now: float = 0.0
    ) -> None:
        source = self.sources.get(contact.node_id)
        if source is not None:
            source.in_flight -= 1
            source.busy.add(index)
            source.saturated = True
            if retry_after_s > 0:
                source.resume_at = max(source.resume_at, now + retry_after_s)

    def busy_for(self, index: int, now: float = 0.0) -> bool:
        """Some holder that may have chunk ``index`` is only busy: it said so
        for this chunk, or for another one since the last back-off, or it
        asked to be left alone until later than ``now``."""
        return any(
            index in s.busy or s.saturated or s.resume_at > now for s in self.sources.values()
        )

    def resume_in(self, now: float) -> float:
        """Seconds until the first holder that asked to be left alone may be
        asked again (0 when none did)."""
        waits = [s.resume_at - now for s in self.sources.values() if s.resume_at > now]
        return min(waits, default=0.0)

    def clear_busy(self, index: int) -> None:
        """After a back-off: ask the busy holders again."""
        for source in self.sources.values():
            source.busy.discard(index)
            source.saturated = False

    def lacks(self, contact: Contact, index: int) -> None:
        source = self.sources.get(contact.node_id)
        if source is not None:
            source.in_flight -= 1
            source.lacks.add(index)


class BlobFetch:
    """One blob being fetched: the untrusted root, the queue of chunks still
    to request, the chunks held so far, and a way to wait for progress."""

    def __init__(self, blob: Digest, root: Root, pending: PendingBlob, first: int) -> None:
        self.blob = blob
        self.root = root
        self.pending = pending
        count = len(root.chunks)
        first = first % count if count else 0
        self.queue: deque[int] = deque([*range(first, count), *range(first)])
        self._changed = asyncio.Event()
        self.failed: BaseException | None = None
        # Busy back-off rounds across the fetch, halved per chunk received.
        self.busy_level = 0

    def has(self, index: int) -> bool:
        return index in self.pending.held

    def notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def changed(self) -> None:
        await self._changed.wait()

    def prioritize(self, first: int) -> None:
        """A reader wants chunks from ``first`` on, in order: request those next."""
        ahead = sorted(i for i in self.queue if i >= first)
        rest = [i for i in self.queue if i < first]
        self.queue = deque([*ahead, *rest])

    def fail(self, exc: BaseException) -> None:
        self.failed = exc
        self.notify()
