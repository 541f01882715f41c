"""The simulation's invariant checker must fail on violating histories, or a
green simulation would prove nothing."""

from __future__ import annotations

import pytest

from services.consensus.raft.types import Entry

from .sim.invariants import InvariantChecker, InvariantViolation

IDS = ("a", "b", "c")


def e(index: int, term: int, data: bytes = b"") -> Entry:
    return Entry(term, index, data=data)


def test_two_leaders_in_one_term_are_caught() -> None:
    c = InvariantChecker(IDS)
    c.leader("a", 2)
    c.leader("a", 2)
    with pytest.raises(InvariantViolation, match="election safety"):
        c.leader("b", 2)


def test_same_index_and_term_with_different_prefixes_is_caught() -> None:
    c = InvariantChecker(IDS)
    c.saved("a", [e(1, 1, b"x"), e(2, 2)])
    c.saved("b", [e(1, 1, b"x"), e(2, 2)])  # identical: fine
    with pytest.raises(InvariantViolation, match="log matching"):
        c.saved("c", [e(1, 1, b"y"), e(2, 2)])


def test_a_truncated_and_rewritten_log_is_tracked() -> None:
    c = InvariantChecker(IDS)
    c.saved("a", [e(1, 1), e(2, 1)])
    c.saved("a", [e(2, 3)])  # a follower overwriting a conflict: legal
    assert c.digest("a", 2) is not None and c.digest("a", 3) is None
    with pytest.raises(InvariantViolation, match="gap"):
        c.saved("a", [e(5, 3)])


def test_a_leader_missing_a_committed_entry_is_caught() -> None:
    c = InvariantChecker(IDS)
    c.saved("a", [e(1, 1, b"x")])
    c.leader("a", 1)
    c.leader_committed("a", 1, 1)
    c.saved("b", [e(1, 2, b"other")])
    with pytest.raises(InvariantViolation, match="leader completeness"):
        c.leader("b", 2)


def test_a_later_commit_missing_from_a_newer_leader_is_caught() -> None:
    c = InvariantChecker(IDS)
    c.saved("b", [e(1, 3)])
    c.leader("b", 3)
    c.saved("a", [e(1, 1, b"x")])
    with pytest.raises(InvariantViolation, match="leader completeness"):
        c.leader_committed("a", 1, 1)


def test_divergent_applied_sequences_are_caught() -> None:
    c = InvariantChecker(IDS)
    c.applied("a", [e(1, 1, b"x"), e(2, 1, b"y")])
    c.applied("b", [e(1, 1, b"x")])
    with pytest.raises(InvariantViolation, match="state machine safety"):
        c.applied("b", [e(2, 2, b"z")])
    with pytest.raises(InvariantViolation, match="applied index 3 after 0"):
        c.applied("c", [e(3, 1)])


def test_an_acknowledged_entry_below_a_quorum_of_logs_is_caught() -> None:
    c = InvariantChecker(IDS)
    c.saved("a", [e(1, 1, b"x")])
    c.applied("a", [e(1, 1, b"x")])
    c.acknowledged(b"x", 1)
    with pytest.raises(InvariantViolation, match="a quorum without it"):
        c.check_acknowledged_durable(IDS)
    c.saved("b", [e(1, 1, b"x")])
    c.check_acknowledged_durable(IDS)
    with pytest.raises(InvariantViolation, match="a quorum without it"):
        c.check_acknowledged_durable(("a", "b", "c", "d", "e"))


def test_a_snapshot_unlike_the_sequence_is_caught() -> None:
    c = InvariantChecker(IDS)
    c.applied("a", [e(1, 1, b"x"), e(2, 1, b"y")])
    good = c.sequence_digest(2)
    c.installed("b", 2, good)
    assert c.digest("b", 2) == good and c.applied_index("b") == 2
    with pytest.raises(InvariantViolation, match="differs"):
        c.installed("c", 2, good + 1)
    with pytest.raises(InvariantViolation, match="restarted from a snapshot"):
        c.restarted("c", 1, good)


def test_an_acknowledged_entry_lost_after_a_restart_is_caught() -> None:
    c = InvariantChecker(IDS)
    c.applied("a", [e(1, 1, b"x")])
    c.acknowledged(b"x", 1)
    c.restarted("a")
    with pytest.raises(InvariantViolation, match="lost acknowledged"):
        c.check_all_acknowledged_applied("a")
