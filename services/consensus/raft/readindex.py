"""The leader's bookkeeping for linearizable reads (dissertation §6.4, ReadIndex).

A read request gets the leader's commit index as its read index and the
number of the next heartbeat round. The read is confirmed once a quorum of
voters answered a heartbeat of that round or a later one (each answer shows
that the voter had not moved to a higher term when it was sent, so no other
leader could have committed anything newer). Requests are confirmed in the
order they arrived. This module counts; ``node.py`` sends the heartbeats and
hands out the results; a leader that steps down drops what is pending (the
runtime retries after a timeout).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(slots=True)
class PendingRead:
    index: int
    context: bytes
    origin: str  # the node that asked ("" for the leader's own runtime)
    round: int
    acks: set[str] = field(default_factory=set)


class ReadIndexTracker:
    def __init__(self) -> None:
        self._pending: deque[PendingRead] = deque()
        self.round = 0  # the latest heartbeat round sent

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, index: int, context: bytes, origin: str) -> int:
        """Register a read; returns the heartbeat round that confirms it."""
        self.round += 1
        self._pending.append(PendingRead(index, context, origin, self.round))
        return self.round

    def ack(
        self, voter: str, round_: int, has_quorum: Callable[[set[str]], bool]
    ) -> list[PendingRead]:
        """``voter`` answered heartbeat ``round_``: return the reads now
        confirmed, oldest first."""
        for r in self._pending:
            if r.round > round_:
                break
            r.acks.add(voter)
        done: list[PendingRead] = []
        while self._pending and has_quorum(self._pending[0].acks):
            done.append(self._pending.popleft())
        return done

    def confirm_all(self, has_quorum: Callable[[set[str]], bool]) -> list[PendingRead]:
        """Reads confirmed by acks alone (e.g. a single-voter cluster)."""
        done: list[PendingRead] = []
        while self._pending and has_quorum(self._pending[0].acks):
            done.append(self._pending.popleft())
        return done

    def clear(self) -> None:
        self._pending.clear()
