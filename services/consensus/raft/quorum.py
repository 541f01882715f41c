"""Majority quorums over a fixed voter set (no joint consensus yet)."""

from __future__ import annotations

from collections.abc import Iterable


def quorum_size(voters: int) -> int:
    return voters // 2 + 1


def committed_index(match_indexes: Iterable[int]) -> int:
    """The highest index held by a majority: Raft §5.3/§5.4, the leader's
    commit rule before the current-term check of §5.4.2."""
    ordered = sorted(match_indexes, reverse=True)
    return ordered[quorum_size(len(ordered)) - 1]


def vote_result(votes: dict[str, bool], voters: int) -> bool | None:
    """True once a majority granted, False once a majority refused, else None."""
    granted = sum(1 for v in votes.values() if v)
    if granted >= quorum_size(voters):
        return True
    if len(votes) - granted >= quorum_size(voters):
        return False
    return None
