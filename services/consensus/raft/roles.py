"""The roles around the Raft core as the core's own tests and simulation
see them: small ``Protocol``s with in-memory twins in ``raft/memory.py``.
The consensus runtime's ports (what it needs from the network and the
disk, with signatures and snapshots) are ``runtime/ports.py``.

The core itself (``node.py``) calls none of these: the runtime does, in the
order the ``Ready`` contract gives (persist, send, apply, advance).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from .types import Entry, HardState, Message


class Storage(Protocol):
    """The write-ahead log and the hard state (Raft Figure 2 "persistent state")."""

    def load(self) -> tuple[HardState, list[Entry]]:
        """Everything persisted so far: the hard state and the whole log, in order."""
        ...

    def save(self, hard_state: HardState | None, entries: Sequence[Entry]) -> None:
        """Durably store a Ready's hard state and entries as one batch, synced
        once (group commit) before returning. If ``entries[0].index`` is at or
        below the last stored index, the log is first truncated there."""
        ...

    def close(self) -> None: ...


class Transport(Protocol):
    """Delivers messages to peers; best effort, never blocks the caller."""

    def send(self, messages: Sequence[Message]) -> None: ...


class RequestInspector(Protocol):
    """Reads the idempotency key of a payload (None: not idempotent)."""

    def key_of(self, payload: bytes) -> tuple[str, int] | None:
        """(client id, request id): the ledger's RequestKey is one."""
        ...


class Application(Protocol):
    """The replicated state machine. ``apply`` gets committed entries in log
    order exactly once per node lifetime and must be deterministic. It returns,
    per entry, the result handed to the client that proposed it."""

    def apply(self, entries: Sequence[Entry]) -> list[object]: ...

    def applied_index(self) -> int: ...


class Assembler(Protocol):
    """Gathers client payloads into one proposal batch."""

    def add(self, payload: bytes) -> None: ...

    def take(self, max_count: int, max_bytes: int) -> list[bytes]:
        """Remove and return up to ``max_count`` payloads / ``max_bytes`` bytes
        (at least one payload when any is waiting)."""
        ...
