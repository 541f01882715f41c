"""State of one blob being fetched from peers, and how sources are chosen.

``SourcePicker`` (sans-I/O, randomness injected) decides which holder to ask
for a chunk: the one with the fewest requests from this node in flight, ties
broken at random, skipping holders that said they lack that chunk. Spreading
requests this way, and counting nodes that are still fetching as holders,
is what makes a blob spread epidemically: every new partial holder adds
upload capacity, instead of everyone pulling from the first k holders.

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
from dataclasses import dataclass, field

from services.dht.content import Digest, Root
from services.dht.routing import Contact, NodeId
from services.dht.store import PendingBlob


@dataclass
class _Source:
    contact: Contact
    in_flight: int = 0
    lacks: set[int] = field(default_factory=set)  # chunks it said it does not hold
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

    def pick(self, index: int, tried: set[NodeId]) -> Contact | None:
        candidates = [
            s
            for s in self.sources.values()
            if s.contact.node_id not in tried
            and s.failures < self.max_failures
            and index not in s.lacks
        ]
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
