"""Safety invariants of Raft (§5.2-§5.4, Figure 3), checked incrementally.

The checker is fed events by the cluster harness (a node saved entries, was
seen as leader, advanced its commit index as leader, applied entries, a client
got an answer) and raises ``InvariantViolation`` at the first event that
breaks one of:

- Election safety: at most one leader per term, across the whole history.
- Log matching: two persisted logs holding an entry with the same index and
  term hold identical prefixes up to it. Each persisted log is summarised by a
  chain of prefix digests, and (index, term) must always map to one digest.
- Leader completeness: an entry committed in term t is in the log of every
  leader of a term > t.
- State machine safety: every node applies a prefix of one global sequence.
- Durability of acknowledged entries: an entry a client was told about stays
  in the global sequence, and every quorum of the current leader's voters
  holds it (in its persisted log or below its snapshot).
- Snapshots: a snapshot (installed from the leader or restarted from) is the
  state after applying exactly the global sequence up to its index.
- Linearizable reads: a read's index is at least the index of every write
  acknowledged before the read started (checked by the harness with
  ``max_acknowledged``).

A snapshot replaces a node's digest chain with the global sequence's up to its
index; compaction keeps the chain (a prefix digest stays valid).
"""

from __future__ import annotations

from collections.abc import Sequence

from services.consensus.raft.types import Entry


class InvariantViolation(AssertionError):
    pass


def _chain(prev: int, e: Entry) -> int:
    return hash((prev, e.index, e.term, int(e.type), e.data))


class InvariantChecker:
    def __init__(self, node_ids: Sequence[str]) -> None:
        self._digests: dict[str, list[int]] = {n: [] for n in node_ids}
        self._by_index_term: dict[tuple[int, int], int] = {}
        self._leaders: dict[int, str] = {}
        self._completeness_checked: set[int] = set()
        # term -> (index, digest): the highest index a leader of that term committed.
        self._committed_in: dict[int, tuple[int, int]] = {}
        self._applied: dict[str, int] = {n: 0 for n in node_ids}
        self.sequence: list[Entry] = []
        self._sequence_digests: list[int] = []
        self._acked: dict[bytes, int] = {}
        self._max_acked = 0

    # -- log matching ----------------------------------------------------------

    def saved(self, node: str, entries: Sequence[Entry]) -> None:
        """``node`` durably saved ``entries`` (truncating from the first one)."""
        if not entries:
            return
        chain = self._digests[node]
        first = entries[0].index
        if first > len(chain) + 1:
            raise InvariantViolation(f"{node} saved index {first} after {len(chain)}: a gap")
        del chain[first - 1 :]
        for e in entries:
            d = _chain(chain[-1] if chain else 0, e)
            chain.append(d)
            known = self._by_index_term.setdefault((e.index, e.term), d)
            if known != d:
                raise InvariantViolation(
                    f"log matching: {node} holds (index {e.index}, term {e.term}) "
                    "with a prefix different from another log's"
                )

    def add_node(self, node: str) -> None:
        self._digests.setdefault(node, [])
        self._applied.setdefault(node, 0)

    def sequence_digest(self, index: int) -> int:
        if index == 0:
            return 0
        if index > len(self._sequence_digests):
            raise InvariantViolation(f"snapshot at {index} beyond what any node applied")
        return self._sequence_digests[index - 1]

    def installed(self, node: str, index: int, digest: int) -> None:
        """``node`` installed a snapshot of the state at ``index``."""
        if digest != self.sequence_digest(index):
            raise InvariantViolation(f"{node}'s snapshot at {index} differs from the sequence")
        if index < self._applied[node]:
            raise InvariantViolation(
                f"{node} installed {index} after applying {self._applied[node]}"
            )
        self._digests[node] = list(self._sequence_digests[:index])
        self._applied[node] = index

    def digest(self, node: str, index: int) -> int | None:
        chain = self._digests[node]
        return chain[index - 1] if 1 <= index <= len(chain) else None

    # -- elections and leader completeness ---------------------------------------

    def leader(self, node: str, term: int) -> None:
        """``node`` is leader of ``term`` (called at every observation)."""
        holder = self._leaders.setdefault(term, node)
        if holder != node:
            raise InvariantViolation(f"election safety: {holder} and {node} both lead term {term}")
        if term not in self._completeness_checked:
            self._completeness_checked.add(term)  # its log only grows from here on
            for t, (index, d) in self._committed_in.items():
                if t < term:
                    self._check_has(node, term, index, d, t)

    def leader_committed(self, node: str, term: int, commit: int) -> None:
        """The leader of ``term`` advanced its commit index to ``commit``."""
        if commit == 0:
            return
        d = self.digest(node, commit)
        if d is None:
            raise InvariantViolation(f"{node} committed index {commit} it has not persisted")
        best = self._committed_in.get(term)
        if best is None or best[0] < commit:
            self._committed_in[term] = (commit, d)
        for t, holder in self._leaders.items():
            if t > term:
                self._check_has(holder, t, commit, d, term)

    def _check_has(self, node: str, term: int, index: int, d: int, committed_term: int) -> None:
        if self.digest(node, index) != d:
            raise InvariantViolation(
                f"leader completeness: {node}, leader of term {term}, lacks index {index} "
                f"committed in term {committed_term}"
            )

    # -- state machine safety and acknowledged entries ------------------------------

    def restarted(self, node: str, snapshot_index: int = 0, digest: int = 0) -> None:
        """``node`` lost its volatile state: it restarts from its snapshot (or
        the empty state) and applies again after it."""
        if digest != self.sequence_digest(snapshot_index):
            raise InvariantViolation(f"{node} restarted from a snapshot unlike the sequence")
        self._applied[node] = snapshot_index

    def applied(self, node: str, entries: Sequence[Entry]) -> None:
        for e in entries:
            if e.index != self._applied[node] + 1:
                raise InvariantViolation(
                    f"{node} applied index {e.index} after {self._applied[node]}"
                )
            self._applied[node] = e.index
            if e.index <= len(self.sequence):
                if self.sequence[e.index - 1] != e:
                    raise InvariantViolation(
                        f"state machine safety: {node} applied {e} but index {e.index} "
                        f"was applied elsewhere as {self.sequence[e.index - 1]}"
                    )
            else:
                self.sequence.append(e)
                prev = self._sequence_digests[-1] if self._sequence_digests else 0
                self._sequence_digests.append(_chain(prev, e))

    def applied_index(self, node: str) -> int:
        return self._applied[node]

    def acknowledged(self, payload: bytes, index: int) -> None:
        """A client was told ``payload`` is committed at ``index``."""
        if index > len(self.sequence) or self.sequence[index - 1].data != payload:
            raise InvariantViolation(f"acknowledged {payload!r} at {index}, not in the sequence")
        self._acked.setdefault(payload, index)
        self._max_acked = max(self._max_acked, index)

    @property
    def max_acknowledged(self) -> int:
        return self._max_acked

    def check_acknowledged_durable(self, voters: Sequence[str]) -> None:
        """Every quorum of ``voters`` (the current leader's) holds the latest
        acknowledged entry, so every future leader will (§5.4)."""
        m = self._max_acked
        if m == 0:
            return
        d = self._sequence_digests[m - 1]
        holders = sum(
            1 for n in voters if len(chain := self._digests.get(n, [])) >= m and chain[m - 1] == d
        )
        if holders <= len(voters) - (len(voters) // 2 + 1):
            raise InvariantViolation(
                f"acknowledged index {m} is persisted on {holders} of {len(voters)} voters: "
                "a quorum without it exists"
            )

    def check_all_acknowledged_applied(self, node: str) -> None:
        for payload, index in self._acked.items():
            if self._applied[node] < index or self.sequence[index - 1].data != payload:
                raise InvariantViolation(f"{node} lost acknowledged {payload!r} at {index}")
