"""The Raft log as the core sees it: the durable prefix plus an unstable tail.

Owns the in-memory copy of the log, which suffix is not yet durable (handed to
the runtime in ``Ready.entries``), the commit index and the conflict search of
Raft §5.3. It does not do I/O: the runtime persists what ``unstable()``
returns and reports back through ``stable_to``.

After compaction (Raft §7) the log starts after a snapshot: entries up to
``snapshot_index`` are gone, only ``snapshot_term`` (the term at that index)
is kept, for the consistency check of the next append. With no snapshot,
``snapshot_index`` is 0 (the empty prefix, term 0).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from .types import Entry


class LogInvariantError(AssertionError):
    """The core was asked to break a Raft invariant (a bug, never recoverable)."""


class RaftLog:
    def __init__(
        self,
        entries: Sequence[Entry] = (),
        commit: int = 0,
        *,
        snapshot_index: int = 0,
        snapshot_term: int = 0,
    ) -> None:
        self.snapshot_index = snapshot_index
        self.snapshot_term = snapshot_term
        self._entries: list[Entry] = []
        expected = snapshot_index + 1
        for e in entries:
            if e.index <= snapshot_index:
                continue  # covered by the snapshot; the runtime may not have deleted it yet
            if e.index != expected:
                raise LogInvariantError(
                    f"log entry expected at index {expected} has index {e.index}"
                )
            self._entries.append(e)
            expected += 1
        commit = max(commit, snapshot_index)
        if commit > self.last_index:
            raise LogInvariantError(f"commit {commit} beyond last index {self.last_index}")
        self.commit = commit
        # First index not yet durable; everything below it is in the runtime's storage.
        self._unstable_from = self.last_index + 1

    # -- reading -------------------------------------------------------------

    @property
    def first_index(self) -> int:
        """The first index still held as an entry."""
        return self.snapshot_index + 1

    @property
    def last_index(self) -> int:
        return self.snapshot_index + len(self._entries)

    @property
    def last_term(self) -> int:
        return self._entries[-1].term if self._entries else self.snapshot_term

    def _pos(self, index: int) -> int:
        """Position in ``_entries`` of ``index`` (clamped to the held range)."""
        return min(max(index - self.snapshot_index - 1, 0), len(self._entries))

    @property
    def stable_index(self) -> int:
        """The last index known durable."""
        return self._unstable_from - 1

    def term_at(self, index: int) -> int | None:
        """Term of the entry at ``index``; the snapshot's term at its index;
        None when absent or compacted."""
        if index == self.snapshot_index:
            return self.snapshot_term
        if self.snapshot_index < index <= self.last_index:
            return self._entries[index - self.snapshot_index - 1].term
        return None

    def entry_at(self, index: int) -> Entry | None:
        if self.snapshot_index < index <= self.last_index:
            return self._entries[index - self.snapshot_index - 1]
        return None

    def slice(self, lo: int, hi: int) -> list[Entry]:
        """Entries with lo <= index < hi (compacted ones are not returned)."""
        return self._entries[self._pos(lo) : self._pos(hi)]

    def slice_limited(self, lo: int, max_count: int, max_bytes: int) -> list[Entry]:
        """Entries from ``lo`` on, at most ``max_count`` and ``max_bytes`` of
        payload, but always at least one when any exists (a single large entry
        must still make progress)."""
        out: list[Entry] = []
        size = 0
        start = self._pos(lo)
        for e in self._entries[start : start + max_count]:
            size += len(e.data)
            if out and size > max_bytes:
                break
            out.append(e)
        return out

    def unstable(self) -> list[Entry]:
        return self._entries[self._pos(self._unstable_from) :]

    def is_up_to_date(self, last_term: int, last_index: int) -> bool:
        """Raft §5.4.1: the other log is at least as up to date as ours."""
        return last_term > self.last_term or (
            last_term == self.last_term and last_index >= self.last_index
        )

    def first_index_of_term_at(self, index: int) -> int:
        """The first index of the run of entries sharing the term at ``index``."""
        term = self.term_at(index)
        i = index
        while i > self.first_index and self.term_at(i - 1) == term:
            i -= 1
        return i

    def last_index_of_term(self, term: int, at_most: int) -> int:
        """The last index <= ``at_most`` holding ``term``, or 0 if none does.

        Terms never decrease along a log, so the search stops at a lower term.
        """
        i = min(at_most, self.last_index)
        while i >= self.snapshot_index and i > 0:
            t = self.term_at(i)
            if t == term:
                return i
            if t is None or t < term:
                return 0
            i -= 1
        return 0

    # -- writing -------------------------------------------------------------

    def append(self, entries: Iterable[Entry]) -> None:
        """Append entries that continue the log (the leader's own proposals)."""
        for e in entries:
            if e.index != self.last_index + 1:
                raise LogInvariantError(f"append of index {e.index} after {self.last_index}")
            self._entries.append(e)

    def maybe_append(self, prev_index: int, prev_term: int, entries: Sequence[Entry]) -> bool:
        """Raft §5.3 AppendEntries receiver rules 2-4. Returns False when the
        log does not hold ``prev_term`` at ``prev_index``. Entries already
        present are kept; the log is truncated at the first conflict only."""
        if self.term_at(prev_index) != prev_term:
            return False
        for pos, e in enumerate(entries):
            existing = self.term_at(e.index)
            if existing == e.term:
                continue
            if existing is not None:
                if e.index <= self.commit:
                    raise LogInvariantError(
                        f"conflict at committed index {e.index} (commit {self.commit})"
                    )
                del self._entries[self._pos(e.index) :]
                self._unstable_from = min(self._unstable_from, e.index)
            self.append(entries[pos:])
            break
        return True

    def commit_to(self, index: int) -> bool:
        if index <= self.commit:
            return False
        if index > self.last_index:
            raise LogInvariantError(f"commit {index} beyond last index {self.last_index}")
        self.commit = index
        return True

    def size(self) -> int:
        """Payload bytes of every entry held (what compaction frees)."""
        return sum(len(e.data) for e in self._entries)

    def tail_start(self, max_bytes: int) -> int:
        """The lowest index after which the entries held fit in ``max_bytes``
        (``snapshot_index`` when they all do)."""
        total = 0
        for e in reversed(self._entries):
            total += len(e.data)
            if total > max_bytes:
                return e.index
        return self.snapshot_index

    def compact(self, index: int) -> None:
        """Forget the entries up to ``index`` (a snapshot covers them). Only
        applied, durable entries may be compacted."""
        if index <= self.snapshot_index:
            return
        if index > self.commit or index > self.stable_index:
            raise LogInvariantError(
                f"compaction to {index} beyond commit {self.commit} or durable {self.stable_index}"
            )
        term = self.term_at(index)
        assert term is not None
        del self._entries[: index - self.snapshot_index]
        self.snapshot_index, self.snapshot_term = index, term

    def restore(self, index: int, term: int) -> None:
        """Replace the whole log with a snapshot ending at (index, term), which
        is committed by definition (Raft §7, InstallSnapshot rule 7)."""
        if index <= self.commit:
            raise LogInvariantError(f"restore to {index} at or below commit {self.commit}")
        self._entries = []
        self.snapshot_index, self.snapshot_term = index, term
        self.commit = index
        self._unstable_from = index + 1

    def stable_to(self, index: int, term: int) -> None:
        """The runtime made the log durable up to (index, term). Ignored if the
        log has since been rewritten there (a truncation raced the write)."""
        if self.term_at(index) == term and index >= self._unstable_from:
            self._unstable_from = index + 1
