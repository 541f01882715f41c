"""Leadership transfer (dissertation §3.10): the leader catches the target up,
then sends TIMEOUT_NOW; the target campaigns at once, past pre-vote and the
voters' leader lease."""

from __future__ import annotations

import pytest

from services.consensus.raft.types import MessageType, ProposalDropped, Role

from .raftnet import RaftNet


def test_transfer_to_an_up_to_date_follower() -> None:
    net = RaftNet()
    leader = net.elect("n1")
    term = leader.term
    leader.transfer_leadership("n2")
    net.stabilize()
    assert net.nodes["n2"].role is Role.LEADER and net.nodes["n2"].term == term + 1
    assert leader.role is Role.FOLLOWER and leader.leader_id == "n2"
    (vote,) = {m for m in net.of_type(MessageType.VOTE) if m.src == "n2" and m.dst == "n3"}
    assert vote.force and not vote.pre_vote  # skips pre-vote, overrides the lease


def test_transfer_catches_a_lagging_target_up_first() -> None:
    net = RaftNet()
    leader = net.elect("n1")
    net.isolate("n3")
    for i in range(5):
        net.propose("n1", bytes([i]))
    net.heal()
    net.sent.clear()
    leader.transfer_leadership("n3")
    net.stabilize()
    (timeout_now,) = net.of_type(MessageType.TIMEOUT_NOW)
    before = net.sent.index(timeout_now)
    assert any(m.dst == "n3" and m.entries for m in net.sent[:before])
    assert net.nodes["n3"].role is Role.LEADER
    assert [e.data for e in net.applied["n3"] if e.data] == [bytes([i]) for i in range(5)]


def test_proposals_are_dropped_while_a_transfer_is_under_way() -> None:
    net = RaftNet()
    leader = net.elect("n1")
    net.isolate("n3")
    leader.transfer_leadership("n3")
    with pytest.raises(ProposalDropped):
        leader.propose([b"x"])


def test_a_transfer_that_cannot_finish_is_abandoned_after_an_election_timeout() -> None:
    net = RaftNet(election_ticks=10)
    leader = net.elect("n1")
    net.isolate("n3")
    leader.transfer_leadership("n3")
    net.tick_all(10)
    assert leader.role is Role.LEADER
    assert leader.propose([b"x"])


def test_transfer_is_ignored_by_a_follower_and_for_unknown_targets() -> None:
    net = RaftNet()
    leader = net.elect("n1")
    net.nodes["n2"].transfer_leadership("n3")
    leader.transfer_leadership("n9")
    leader.transfer_leadership("n1")
    net.stabilize()
    assert not net.of_type(MessageType.TIMEOUT_NOW)
    assert leader.role is Role.LEADER
