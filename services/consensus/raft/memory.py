"""In-memory twins of the ports in ``roles.py``, for tests and the simulation.

Each keeps the documented semantics of its port (truncation on save, FIFO
batching within limits, one application per request key) and nothing else:
no durability, no threads, no I/O.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

from .types import Entry, EntryType, HardState, Message, SnapshotMeta


class MemoryStorage:
    """``Storage`` and ``SnapshotStore``: what was saved survives a simulated
    crash of the node. The log holds the entries after the snapshot."""

    def __init__(self) -> None:
        self.hard_state = HardState()
        self.entries: list[Entry] = []
        self.snapshot: tuple[SnapshotMeta, bytes] | None = None
        self.closed = False

    @property
    def offset(self) -> int:
        """The index just before the first stored entry."""
        return self.snapshot[0].index if self.snapshot else 0

    def load(self) -> tuple[HardState, list[Entry]]:
        return self.hard_state, list(self.entries)

    def load_snapshot(self) -> tuple[SnapshotMeta, bytes] | None:
        return self.snapshot

    def save(self, hard_state: HardState | None, entries: Sequence[Entry]) -> None:
        if self.closed:
            raise RuntimeError("storage is closed")
        if entries:
            last = self.offset + len(self.entries)
            first = entries[0].index
            if first > last + 1:
                raise ValueError(f"gap: saving index {first} after {last}")
            if first <= self.offset:
                raise ValueError(f"saving index {first} inside the snapshot ({self.offset})")
            # Truncate at the first saved index (a follower overwriting a conflict).
            del self.entries[first - self.offset - 1 :]
            for e in entries:
                if e.index != self.offset + len(self.entries) + 1:
                    raise ValueError(f"entries not contiguous at index {e.index}")
                self.entries.append(e)
        if hard_state is not None:
            self.hard_state = hard_state

    def save_snapshot(self, meta: SnapshotMeta, data: bytes) -> None:
        """Keep a snapshot of our own state machine, then drop the log it covers."""
        if meta.index <= self.offset:
            return
        if meta.index > self.offset + len(self.entries):
            raise ValueError(f"snapshot at {meta.index} beyond the stored log")
        del self.entries[: meta.index - self.offset]
        self.snapshot = (meta, data)

    def install_snapshot(self, meta: SnapshotMeta, data: bytes) -> None:
        """A snapshot received from the leader (``Ready.snapshot``) replaces the
        whole log."""
        self.entries = []
        self.snapshot = (meta, data)

    def close(self) -> None:
        self.closed = True


class MemoryTransport:
    """``Transport``: collects sent messages for the test to deliver."""

    def __init__(self) -> None:
        self.outbox: list[Message] = []

    def send(self, messages: Sequence[Message]) -> None:
        self.outbox.extend(messages)

    def take(self) -> list[Message]:
        out, self.outbox = self.outbox, []
        return out


class MemoryAssembler:
    """``Assembler``: FIFO; a batch holds at most ``max_count`` payloads and
    ``max_bytes`` bytes, except that one oversized payload still goes alone."""

    def __init__(self) -> None:
        self._queue: deque[bytes] = deque()

    def __len__(self) -> int:
        return len(self._queue)

    def add(self, payload: bytes) -> None:
        self._queue.append(payload)

    def take(self, max_count: int, max_bytes: int) -> list[bytes]:
        batch: list[bytes] = []
        size = 0
        while self._queue and len(batch) < max_count:
            nxt = len(self._queue[0])
            if batch and size + nxt > max_bytes:
                break
            batch.append(self._queue.popleft())
            size += nxt
        return batch


class PrefixInspector:
    """``RequestInspector`` for payloads shaped ``b"<client>/<request>/<body>"``
    (what tests and the simulation propose); anything else has no key."""

    @staticmethod
    def encode(key: tuple[str, int], body: bytes = b"") -> bytes:
        client_id, request_id = key
        if "/" in client_id:
            raise ValueError("client_id must not contain '/'")
        return f"{client_id}/{request_id}/".encode() + body

    def key_of(self, payload: bytes) -> tuple[str, int] | None:
        parts = payload.split(b"/", 2)
        if len(parts) != 3 or not parts[1].isdigit():
            return None
        try:
            client = parts[0].decode()
        except UnicodeDecodeError:
            return None
        return client, int(parts[1])


class Deduplicator:
    """Remembers which request keys were applied, so a retried submission that
    was committed twice is applied once. Deterministic: every replica that
    applies the same log decides the same."""

    def __init__(self) -> None:
        self._seen: set[tuple[str, int]] = set()

    def first_time(self, key: tuple[str, int] | None) -> bool:
        """True (and remembered) the first time ``key`` is seen; None is
        always new."""
        if key is None:
            return True
        if key in self._seen:
            return False
        self._seen.add(key)
        return True


class MemoryApplication:
    """``Application``: appends each newly keyed payload to ``state``; a
    duplicate request yields the result ``None``."""

    def __init__(self, inspector: PrefixInspector | None = None) -> None:
        self._inspector = inspector or PrefixInspector()
        self._dedup = Deduplicator()
        self._applied = 0
        self.state: list[bytes] = []

    def apply(self, entries: Sequence[Entry]) -> list[object]:
        results: list[object] = []
        for e in entries:
            if e.index != self._applied + 1:
                raise ValueError(f"applied out of order: {e.index} after {self._applied}")
            self._applied = e.index
            if e.type is not EntryType.NORMAL or not self._dedup.first_time(
                self._inspector.key_of(e.data)
            ):
                results.append(None)
                continue
            self.state.append(e.data)
            results.append(len(self.state))
        return results

    def applied_index(self) -> int:
        return self._applied
