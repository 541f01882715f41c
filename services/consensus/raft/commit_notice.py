"""When the leader tells a follower the commit index outside an append
(pure bookkeeping: the core sends; nothing here sends or reads a clock).

A follower learns the commit index from the appends it receives. A busy
follower needs nothing more: its next append carries it. An idle,
caught-up one is owed a notice, and the notice waits for the next tick:
when proposals keep coming (one client writing in a loop, or many), the
next append carries it and no message is spent on it; an idle follower
learns it within a tick. The leader answers its own clients at its own
commit; a follower answers at its apply. (etcd's raft likewise leaves the
commit index to the next append or heartbeat.)

Except a follower whose forwarded proposal (PROPOSE) the commit covers: its
client waits on exactly that commit index, and the tick would cost it a
whole tick of latency. It is told at once, with the empty append the tick
would send, when nothing else will carry it: no append in flight (their
answer brings the leader back here) and none about to go (the leader fills
the pipeline after this; that append carries the commit). At most one such
message per commit advance and forwarding follower: sending it sets the
follower's ``commit_sent``.
"""

from __future__ import annotations

from .progress import Progress, ProgressState


def owes_commit(pr: Progress, commit: int) -> bool:
    """An idle, replicating follower that has not heard ``commit`` (as far
    as it holds the log) from us yet."""
    return (
        pr.state is ProgressState.REPLICATE
        and not pr.inflight
        and pr.commit_sent < min(commit, pr.match_index)
    )


class CommitNotices:
    """The followers owed a commit notice at the next tick, and per follower
    the last log index appended for its forwarded proposals."""

    def __init__(self) -> None:
        self._due: set[str] = set()
        self._forwarded: dict[str, int] = {}

    def forwarded(self, peer: str, index: int) -> None:
        """The leader appended ``peer``'s forwarded proposals up to ``index``."""
        self._forwarded[peer] = index

    def forget(self, peer: str) -> None:
        """``peer`` left the configuration (a notice still due to it finds no
        progress to tell, and is dropped at the tick)."""
        self._forwarded.pop(peer, None)

    def role_changed(self) -> None:
        """The proposals forwarded to this node as leader are no longer its
        business."""
        self._forwarded = {}

    def at_commit(self, to: str, pr: Progress, commit: int, last_index: int) -> bool:
        """The commit index advanced (or ``to`` answered an append): True to
        tell ``to`` at once; otherwise it is told at the next tick if still
        owed, or not at all."""
        fwd = self._forwarded.get(to)
        if fwd is not None and pr.commit_sent >= fwd:
            del self._forwarded[to]  # told, by a notice or by an append
            fwd = None
        if not owes_commit(pr, commit):
            return False
        if fwd is not None and min(commit, pr.match_index) >= fwd and pr.next_index > last_index:
            del self._forwarded[to]
            self._due.discard(to)
            return True
        self._due.add(to)
        return False

    def take_due(self) -> list[str]:
        """The followers owed a notice at this tick (in order), forgotten
        here: the caller tells those still owed one."""
        if not self._due:
            return []
        due, self._due = sorted(self._due), set()
        return due
