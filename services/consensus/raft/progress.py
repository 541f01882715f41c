"""What a leader knows about one follower's log, and its flow control.

A follower is probed (``PROBE``: at most one append in flight, until an append
succeeds and the match index is known) and then replicated to
(``REPLICATE``: ``next_index`` advances optimistically as appends are sent, up
to ``max_inflight`` unacknowledged appends; the pipelining of etcd-io/raft's
progress tracker). This module only keeps the bookkeeping; ``node.py``
decides when to send.
"""

from __future__ import annotations

import enum
from collections import deque


class ProgressState(enum.Enum):
    PROBE = "probe"
    REPLICATE = "replicate"
    SNAPSHOT = "snapshot"


class Progress:
    __slots__ = (
        "match_index",
        "next_index",
        "state",
        "probe_sent",
        "inflight",
        "max_inflight",
        "recent_active",
        "commit_sent",
        "pending_snapshot",
        "loss_check",
    )

    def __init__(self, next_index: int, max_inflight: int) -> None:
        self.match_index = 0
        self.next_index = next_index
        self.state = ProgressState.PROBE
        self.probe_sent = False  # PROBE: an append is in flight, wait for its answer
        # REPLICATE: last index of each unacknowledged append, oldest first.
        self.inflight: deque[int] = deque()
        self.max_inflight = max_inflight
        # Check-quorum: heard from this follower during the current election timeout.
        self.recent_active = True
        # The highest commit index this follower was told it may apply.
        self.commit_sent = 0
        # SNAPSHOT: the index of the snapshot being sent.
        self.pending_snapshot = 0
        # REPLICATE: armed by each heartbeat; an answer that acknowledges
        # nothing new may then suspect lost appends (once per heartbeat).
        self.loss_check = False

    @property
    def paused(self) -> bool:
        if self.state is ProgressState.SNAPSHOT:
            return True
        if self.state is ProgressState.PROBE:
            return self.probe_sent
        return len(self.inflight) >= self.max_inflight

    def become_probe(self, next_index: int) -> None:
        self.state = ProgressState.PROBE
        self.next_index = max(next_index, self.match_index + 1)
        self.probe_sent = False
        self.inflight.clear()
        self.pending_snapshot = 0

    def become_snapshot(self, snapshot_index: int) -> None:
        self.state = ProgressState.SNAPSHOT
        self.pending_snapshot = snapshot_index
        self.probe_sent = False
        self.inflight.clear()

    def become_replicate(self) -> None:
        self.state = ProgressState.REPLICATE
        self.next_index = self.match_index + 1
        self.probe_sent = False
        self.inflight.clear()
        self.pending_snapshot = 0

    def sent(self, last_index: int) -> None:
        """An append carrying entries up to ``last_index`` was sent."""
        if self.state is ProgressState.REPLICATE:
            self.next_index = last_index + 1
            self.inflight.append(last_index)
        else:
            self.probe_sent = True

    def maybe_update(self, match_index: int) -> bool:
        """An append succeeded up to ``match_index``; False if that is old news."""
        if match_index <= self.match_index:
            return False
        self.match_index = match_index
        self.next_index = max(self.next_index, match_index + 1)
        while self.inflight and self.inflight[0] <= match_index:
            self.inflight.popleft()
        return True

    def free_one(self) -> None:
        """Give back one pipelining slot (an answer came that acknowledged nothing
        new: the oldest append may be lost)."""
        if self.inflight:
            self.inflight.popleft()
