"""The Raft log as the core sees it: the durable prefix plus an unstable tail.

Owns the in-memory copy of the log, which suffix is not yet durable (handed to
the runtime in ``Ready.entries``), the commit index and the conflict search of
Raft §5.3. It does not do I/O: the runtime persists what ``unstable()``
returns and reports back through ``stable_to``. There are no snapshots yet, so
the log always starts at index 1 (index 0 is the empty prefix, term 0).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from .types import Entry


class LogInvariantError(AssertionError):
    """The core was asked to break a Raft invariant (a bug, never recoverable)."""


class RaftLog:
    def __init__(self, entries: Sequence[Entry] = (), commit: int = 0) -> None:
        self._entries: list[Entry] = []
        for expected, e in enumerate(entries, start=1):
            if e.index != expected:
                raise LogInvariantError(f"log entry at position {expected} has index {e.index}")
            self._entries.append(e)
        if commit > len(self._entries):
            raise LogInvariantError(f"commit {commit} beyond last index {len(self._entries)}")
        self.commit = commit
        # First index not yet durable; everything below it is in the runtime's storage.
        self._unstable_from = len(self._entries) + 1

    # -- reading -------------------------------------------------------------

    @property
    def last_index(self) -> int:
        return len(self._entries)

    @property
    def last_term(self) -> int:
        return self._entries[-1].term if self._entries else 0

    @property
    def stable_index(self) -> int:
        """The last index known durable."""
        return self._unstable_from - 1

    def term_at(self, index: int) -> int | None:
        """Term of the entry at ``index``; 0 for index 0; None when absent."""
        if index == 0:
            return 0
        if 1 <= index <= len(self._entries):
            return self._entries[index - 1].term
        return None

    def slice(self, lo: int, hi: int) -> list[Entry]:
        """Entries with lo <= index < hi."""
        return self._entries[max(lo, 1) - 1 : max(hi, 1) - 1]

    def slice_limited(self, lo: int, max_count: int, max_bytes: int) -> list[Entry]:
        """Entries from ``lo`` on, at most ``max_count`` and ``max_bytes`` of
        payload, but always at least one when any exists (a single large entry
        must still make progress)."""
        out: list[Entry] = []
        size = 0
        for e in self._entries[max(lo, 1) - 1 : max(lo, 1) - 1 + max_count]:
            size += len(e.data)
            if out and size > max_bytes:
                break
            out.append(e)
        return out

    def unstable(self) -> list[Entry]:
        return self._entries[self._unstable_from - 1 :]

    def is_up_to_date(self, last_term: int, last_index: int) -> bool:
        """Raft §5.4.1: the other log is at least as up to date as ours."""
        return last_term > self.last_term or (
            last_term == self.last_term and last_index >= self.last_index
        )

    def first_index_of_term_at(self, index: int) -> int:
        """The first index of the run of entries sharing the term at ``index``."""
        term = self.term_at(index)
        i = index
        while i > 1 and self.term_at(i - 1) == term:
            i -= 1
        return i

    def last_index_of_term(self, term: int, at_most: int) -> int:
        """The last index <= ``at_most`` holding ``term``, or 0 if none does.

        Terms never decrease along a log, so the search stops at a lower term.
        """
        i = min(at_most, self.last_index)
        while i > 0:
            t = self._entries[i - 1].term
            if t == term:
                return i
            if t < term:
                return 0
            i -= 1
        return 0

    # -- writing -------------------------------------------------------------

    def append(self, entries: Iterable[Entry]) -> None:
        """Append entries that continue the log (the leader's own proposals)."""
        for e in entries:
            if e.index != len(self._entries) + 1:
                raise LogInvariantError(f"append of index {e.index} after {len(self._entries)}")
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
                del self._entries[e.index - 1 :]
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

    def stable_to(self, index: int, term: int) -> None:
        """The runtime made the log durable up to (index, term). Ignored if the
        log has since been rewritten there (a truncation raced the write)."""
        if self.term_at(index) == term and index >= self._unstable_from:
            self._unstable_from = index + 1
