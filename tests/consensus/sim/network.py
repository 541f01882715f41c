"""A seeded fake network on a logical clock: drops, delays, duplicates,
reorders and partitions messages. All randomness comes from the injected
``random.Random``, so a seed replays the same run exactly.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Iterable, Sequence

from services.consensus.raft.types import Message


class Network:
    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._queue: list[tuple[int, float, int, Message]] = []
        self._seq = 0
        self._group: dict[str, int] = {}  # node -> partition side; absent = side 0
        self.drop_rate = 0.0
        self.duplicate_rate = 0.0
        self.max_delay = 1  # ticks; every message takes at least one tick

    # -- faults -------------------------------------------------------------------

    def partition(self, sides: Iterable[Iterable[str]]) -> None:
        """Only nodes on the same side can talk; unnamed nodes form side 0."""
        self._group = {n: i + 1 for i, side in enumerate(sides) for n in side}

    def heal(self) -> None:
        self._group = {}

    def connected(self, a: str, b: str) -> bool:
        return self._group.get(a, 0) == self._group.get(b, 0)

    def quiet(self) -> None:
        """No more drops or duplicates, short delays: the healing phase."""
        self.drop_rate = 0.0
        self.duplicate_rate = 0.0
        self.max_delay = 1

    # -- traffic ----------------------------------------------------------------

    def send(self, now: int, messages: Sequence[Message]) -> None:
        rng = self._rng
        for m in messages:
            if not self.connected(m.src, m.dst) or rng.random() < self.drop_rate:
                continue
            copies = 2 if rng.random() < self.duplicate_rate else 1
            for _ in range(copies):
                at = now + rng.randint(1, self.max_delay)
                # The random tie-break reorders messages due on the same tick.
                self._seq += 1
                heapq.heappush(self._queue, (at, rng.random(), self._seq, m))

    def due(self, now: int) -> list[Message]:
        """Messages arriving at ``now``; a partition cut while they were in
        flight drops them too."""
        out: list[Message] = []
        while self._queue and self._queue[0][0] <= now:
            m = heapq.heappop(self._queue)[3]
            if self.connected(m.src, m.dst):
                out.append(m)
        return out

    def __len__(self) -> int:
        return len(self._queue)
