"""Linearizable reads (dissertation §6.4): ReadIndex with a heartbeat round,
the current-term commit rule, follower forwarding, and lease reads behind
their flag."""

from __future__ import annotations

import random

import pytest

from services.consensus.raft.node import RaftNode
from services.consensus.raft.types import (
    Message,
    MessageType,
    ProposalDropped,
    RaftConfig,
    ReadState,
    Role,
)

from .raftnet import RaftNet


def test_read_index_needs_a_quorum_heartbeat_round() -> None:
    net = RaftNet()
    leader = net.elect("n1")
    net.propose("n1", b"x")
    net.isolate("n2")
    net.isolate("n3")
    leader.read_index(b"r1")
    net.stabilize()
    assert net.read_states["n1"] == []  # no voter answered
    net.heal()
    net.sent.clear()
    leader.read_index(b"r2")
    net.stabilize()
    beats = [m for m in net.of_type(MessageType.APPEND) if m.read_id]
    assert {m.dst for m in beats} == {"n2", "n3"}
    # r1 rode on the same round: both are confirmed, in order.
    commit = leader.commit_index
    assert net.read_states["n1"] == [ReadState(commit, b"r1"), ReadState(commit, b"r2")]


def test_a_lost_read_round_is_retried_by_the_next_heartbeat() -> None:
    net = RaftNet()
    leader = net.elect("n1")
    net.isolate("n2")
    net.isolate("n3")
    leader.read_index(b"r")
    net.stabilize()
    net.heal()
    net.tick_all(2)
    assert [r.context for r in net.read_states["n1"]] == [b"r"]


def test_read_index_waits_for_a_commit_in_the_current_term() -> None:
    node = RaftNode(RaftConfig("n1", ("n1", "n2", "n3"), pre_vote=False), random.Random(1))
    while node.role is not Role.CANDIDATE:
        node.tick()
    node.step(Message(MessageType.VOTE_RESPONSE, "n2", "n1", node.term))
    assert node.role is Role.LEADER
    rd = node.ready()
    node.advance(rd)
    node.read_index(b"r")
    rd = node.ready()
    assert not any(m.read_id for m in rd.messages)  # not even a round yet
    node.advance(rd)
    node.step(Message(MessageType.APPEND_RESPONSE, "n2", "n1", node.term, match_index=1))
    rd = node.ready()
    (beat,) = [m for m in rd.messages if m.read_id and m.dst == "n2"]
    node.advance(rd)
    node.step(Message(MessageType.APPEND_RESPONSE, "n2", "n1", node.term, read_id=beat.read_id))
    assert node.ready().read_states == [ReadState(1, b"r")]


def test_a_single_voter_reads_at_once() -> None:
    net = RaftNet(size=1)
    net.elect("n1")
    net.nodes["n1"].read_index(b"r")
    net.stabilize()
    assert net.read_states["n1"] == [ReadState(net.nodes["n1"].commit_index, b"r")]


def test_a_follower_forwards_read_index_to_the_leader() -> None:
    net = RaftNet()
    leader = net.elect("n1")
    net.propose("n1", b"x")
    net.sent.clear()
    net.nodes["n2"].read_index(b"f")
    net.stabilize()
    (fwd,) = net.of_type(MessageType.READ_INDEX)
    assert (fwd.src, fwd.dst, fwd.context) == ("n2", "n1", b"f")
    assert net.read_states["n2"] == [ReadState(leader.commit_index, b"f")]
    assert net.read_states["n1"] == []


def test_a_follower_without_a_leader_refuses_reads() -> None:
    node = RaftNode(RaftConfig("n2", ("n1", "n2", "n3")), random.Random(1))
    with pytest.raises(ProposalDropped):
        node.read_index(b"r")


def test_a_deposed_leader_cannot_confirm_a_read() -> None:
    net = RaftNet()
    old = net.elect("n1")
    net.isolate("n1")
    for nid in ("n2", "n3"):
        net.tick(nid, 10)
        net.drain(nid)
    net.elect("n2")
    old.read_index(b"stale")
    net.drain("n1")
    net.heal()
    net.tick_all(2)  # its heartbeats are answered with a higher term: it steps down
    assert net.read_states["n1"] == [] and old.role is Role.FOLLOWER


def test_lease_reads_skip_the_round_only_when_configured() -> None:
    for lease in (True, False):
        net = RaftNet(lease_reads=lease)
        leader = net.elect("n1")
        net.spread_commit()
        leader.read_index(b"first")  # a confirmed round also starts the lease
        net.stabilize()
        net.isolate("n2")
        net.isolate("n3")
        leader.read_index(b"r")
        net.stabilize()
        served = [s for s in net.read_states["n1"] if s.context == b"r"]
        assert served == ([ReadState(leader.commit_index, b"r")] if lease else [])
    with pytest.raises(ValueError, match="check_quorum"):
        RaftConfig("n1", ("n1",), lease_reads=True, check_quorum=False).validate()


def test_a_lease_read_is_not_served_once_another_leader_may_have_been_elected() -> None:
    """Dissertation §6.4.1: the lease runs from when a confirming round was
    sent, for less than the election timeout in which the confirming
    followers refuse to vote; a leader cut off beyond that must not answer
    from its lease even while check-quorum has not yet made it step down."""
    for seed in range(20):
        net = RaftNet(seed=seed, lease_reads=True)
        old = net.elect("n1")
        net.spread_commit()
        old.read_index(b"lease")
        net.stabilize()
        assert [s.context for s in net.read_states["n1"]] == [b"lease"]
        net.isolate("n1")
        new = None
        for _ in range(4 * net.configs["n1"].election_ticks):
            net.tick_all()
            new = next((n for n in ("n2", "n3") if net.nodes[n].role is Role.LEADER), None)
            if new:
                break
        assert new is not None
        (written,) = net.propose(new, b"after")
        assert net.nodes[new].commit_index >= written
        if old.role is not Role.LEADER:
            continue  # check-quorum already stepped it down: nothing to serve
        old.read_index(b"stale?")
        net.stabilize()
        served = [s for s in net.read_states["n1"] if s.context == b"stale?"]
        assert all(s.index >= written for s in served), f"seed {seed}: stale lease read {served}"


def test_a_stall_the_runtime_reports_ends_the_lease_without_an_election() -> None:
    net = RaftNet(lease_reads=True)
    leader = net.elect("n1")
    net.spread_commit()
    leader.read_index(b"first")
    net.stabilize()
    net.isolate("n2")
    net.isolate("n3")
    leader.read_index(b"in-lease")
    net.stabilize()
    assert [s.context for s in net.read_states["n1"]] == [b"first", b"in-lease"]
    # The process stalled for an election timeout: the ticks it missed are
    # reported, not delivered.
    leader.clock_jumped(net.configs["n1"].election_ticks)
    follower = net.nodes["n2"]
    follower.clock_jumped(10 * net.configs["n2"].election_ticks)
    assert leader.role is Role.LEADER and follower.role is Role.FOLLOWER
    leader.read_index(b"after-stall")
    net.stabilize()
    assert [s.context for s in net.read_states["n1"]] == [b"first", b"in-lease"]
