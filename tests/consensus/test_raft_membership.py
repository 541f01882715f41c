"""Membership changes (dissertation §4.1-§4.3, single-server changes with
learners), one test per rule."""

from __future__ import annotations

import random

import pytest

from services.consensus.raft.membership import (
    ConfChange,
    ConfChangeInvalid,
    ConfChangeKind,
    ConfChangePending,
    ConfigDecodeError,
    Membership,
    decode_config,
    encode_config,
)
from services.consensus.raft.node import RaftNode
from services.consensus.raft.types import (
    EntryType,
    Message,
    MessageType,
    NotLeader,
    RaftConfig,
    Role,
)

from .raftnet import RaftNet

ADD, PROMOTE, REMOVE = ConfChangeKind.ADD_LEARNER, ConfChangeKind.PROMOTE, ConfChangeKind.REMOVE


def _net_with_learner(**config: int | bool) -> tuple[RaftNet, RaftNode]:
    net = RaftNet(**config)
    leader = net.elect("n1")
    net.add_node("n4")
    leader.propose_conf_change(ConfChange(ADD, "n4", b"addr"))
    net.stabilize()
    net.spread_commit()
    return net, leader


def test_config_entry_data_round_trips_and_is_versioned() -> None:
    m = Membership.of(("n1", "n2"), ("n3",))
    change = ConfChange(ADD, "n3", b"\x01key")
    data = encode_config(m, change)
    assert data.startswith(b'{"change":{"context":"016b6579","kind":"add_learner","node":"n3"}')
    assert decode_config(data) == (m, change)
    with pytest.raises(ConfigDecodeError):
        decode_config(data.replace(b'"v":1', b'"v":2'))
    with pytest.raises(ConfigDecodeError):
        decode_config(b"{" + b" " * 70000 + b"}")
    with pytest.raises(ConfigDecodeError):
        decode_config(b"not json")


def test_add_learner_replicates_the_log_to_it() -> None:
    net, leader = _net_with_learner(promote_lag_entries=0)
    assert leader.learners == {"n4"} and leader.voters == {"n1", "n2", "n3"}
    net.propose("n1", b"x")
    assert net.applied["n4"][-1].data == b"x"
    assert net.nodes["n4"].learners == {"n4"}
    (config,) = [e for e in net.applied["n4"] if e.type is EntryType.CONFIG]
    assert decode_config(config.data)[1] == ConfChange(ADD, "n4", b"addr")


def test_a_learner_does_not_campaign() -> None:
    net, _ = _net_with_learner(promote_lag_entries=0)
    net.isolate("n4")
    net.tick("n4", 100)
    assert net.nodes["n4"].role is Role.FOLLOWER
    assert not [m for m in net.drain("n4") if m.type is MessageType.VOTE]


def test_a_learner_does_not_count_for_commit_or_elections() -> None:
    net, leader = _net_with_learner(promote_lag_entries=0)
    net.isolate("n2")
    net.isolate("n3")
    net.cut -= {("n1", "n4"), ("n4", "n1")}
    index = leader.propose([b"x"])[0]
    net.stabilize()
    assert net.nodes["n4"].last_index >= index
    assert leader.commit_index < index  # n1 + learner n4 are not a quorum of 3 voters
    # A candidate neither asks a learner nor counts its vote.
    net.heal()
    net.isolate("n1")
    n2 = net.nodes["n2"]
    n2.step(Message(MessageType.TIMEOUT_NOW, "n1", "n2", n2.term))
    votes = [m for m in net.drain("n2") if m.type is MessageType.VOTE]
    assert {m.dst for m in votes} == {"n1", "n3"}
    n2.step(Message(MessageType.VOTE_RESPONSE, "n4", "n2", n2.term))
    assert n2.role is Role.CANDIDATE


def test_a_learner_is_promoted_once_caught_up() -> None:
    net, leader = _net_with_learner(promote_lag_entries=2)
    assert leader.voters == {"n1", "n2", "n3", "n4"} and not leader.learners
    kinds = [decode_config(e.data)[1].kind for e in net.applied["n4"] if e.type is EntryType.CONFIG]
    assert kinds == [ADD, PROMOTE]
    assert net.nodes["n4"].voters == leader.voters


def test_a_lagging_learner_is_not_promoted() -> None:
    net = RaftNet(promote_lag_entries=2)
    leader = net.elect("n1")
    net.add_node("n4")
    net.isolate("n4")
    leader.propose_conf_change(ConfChange(ADD, "n4"))
    for i in range(5):
        net.propose("n1", b"%d" % i)
    net.tick_all(3)
    assert leader.learners == {"n4"}
    net.heal()
    net.tick_all(3)
    assert "n4" in leader.voters


def test_one_change_at_a_time() -> None:
    net = RaftNet(promote_lag_entries=0)
    leader = net.elect("n1")
    net.isolate("n2")
    net.isolate("n3")
    leader.propose_conf_change(ConfChange(ADD, "n4"))
    net.drain("n1")
    assert leader.status().pending_conf_index == leader.last_index
    with pytest.raises(ConfChangePending):
        leader.propose_conf_change(ConfChange(ADD, "n5"))
    net.heal()
    net.tick_all(2)
    assert leader.status().pending_conf_index == 0
    leader.propose_conf_change(ConfChange(ADD, "n5"))


def test_a_new_leader_changes_nothing_before_committing_in_its_term() -> None:
    node = RaftNode(RaftConfig("n1", ("n1", "n2", "n3"), pre_vote=False), random.Random(1))
    while node.role is not Role.CANDIDATE:
        node.tick()
    node.step(Message(MessageType.VOTE_RESPONSE, "n2", "n1", node.term))
    assert node.role is Role.LEADER
    with pytest.raises(ConfChangePending):  # its NOOP is not committed yet
        node.propose_conf_change(ConfChange(ADD, "n4"))
    rd = node.ready()
    node.advance(rd)
    node.step(Message(MessageType.APPEND_RESPONSE, "n2", "n1", node.term, match_index=1))
    node.propose_conf_change(ConfChange(ADD, "n4"))


def test_invalid_changes_are_refused() -> None:
    net = RaftNet()
    leader = net.elect("n1")
    net.tick_all()
    with pytest.raises(ConfChangeInvalid):
        leader.propose_conf_change(ConfChange(ADD, "n2"))
    with pytest.raises(ConfChangeInvalid):
        leader.propose_conf_change(ConfChange(PROMOTE, "n2"))
    with pytest.raises(ConfChangeInvalid):
        leader.propose_conf_change(ConfChange(REMOVE, "n9"))
    with pytest.raises(NotLeader) as info:
        net.nodes["n2"].propose_conf_change(ConfChange(ADD, "n4"))
    assert info.value.leader_hint == "n1"
    solo = RaftNet(size=1)
    only = solo.elect("n1")
    with pytest.raises(ConfChangeInvalid, match="last voter"):
        only.propose_conf_change(ConfChange(REMOVE, "n1"))


def test_removing_a_follower_shrinks_the_quorum() -> None:
    net = RaftNet()
    leader = net.elect("n1")
    leader.propose_conf_change(ConfChange(REMOVE, "n3"))
    net.stabilize()
    assert leader.voters == {"n1", "n2"}
    net.isolate("n3")
    index = net.propose("n1", b"x")[0]
    assert leader.commit_index >= index  # n1 + n2 are a quorum of the 2 voters
    assert net.nodes["n2"].voters == {"n1", "n2"}


def test_a_removed_leader_steps_down_after_committing_its_removal() -> None:
    net = RaftNet()
    leader = net.elect("n1")
    term = leader.term
    index = leader.propose_conf_change(ConfChange(REMOVE, "n1"))
    assert leader.role is Role.LEADER  # still leads while the removal is uncommitted
    net.stabilize()
    assert leader.role is Role.FOLLOWER
    assert any(n.role is Role.LEADER and n.term > term for n in net.nodes.values())
    new = next(n for n in net.nodes.values() if n.role is Role.LEADER)
    assert new.commit_index >= index and new.voters == {"n2", "n3"}
    net.tick("n1", 100)  # not a voter any more: never campaigns
    assert not [m for m in net.drain("n1") if m.type is MessageType.VOTE]


def test_a_removed_leader_does_not_count_itself_for_commit() -> None:
    net = RaftNet()
    leader = net.elect("n1")
    net.isolate("n3")
    net.cut |= {("n1", "n2"), ("n2", "n1")}
    leader.propose_conf_change(ConfChange(REMOVE, "n1"))
    net.stabilize()
    assert leader.role is Role.LEADER and leader.status().pending_conf_index > 0


def test_an_uncommitted_config_is_rolled_back_with_the_conflicting_suffix() -> None:
    net = RaftNet(size=5)
    leader = net.elect("n1")
    net.isolate("n1")
    net.cut -= {("n1", "n2"), ("n2", "n1")}
    leader.propose_conf_change(ConfChange(ADD, "n6"))
    net.stabilize()
    n2 = net.nodes["n2"]
    assert n2.learners == {"n6"}  # in effect on append, committed or not
    net.heal()
    net.isolate("n1")
    net.isolate("n2")
    for nid in ("n4", "n5"):  # their leader lease runs out
        net.tick(nid, 10)
        net.drain(nid)
    net.elect("n3")  # without the config entry
    net.propose("n3", b"x")
    net.heal()
    net.isolate("n1")
    net.tick_all(2)
    assert n2.learners == frozenset() and n2.voters == {"n1", "n2", "n3", "n4", "n5"}
    assert net.applied["n2"][-1].data == b"x"


def test_membership_is_restored_from_the_log_and_the_snapshot_after_a_restart() -> None:
    net, leader = _net_with_learner(promote_lag_entries=0)
    net.restart("n2")
    assert net.nodes["n2"].learners == {"n4"}
    net.tick_all(2)
    meta = net.compact("n3")
    assert meta.learners == ("n4",)
    net.restart("n3")
    assert net.nodes["n3"].learners == {"n4"} and net.nodes["n3"].status().learners == ("n4",)


def test_leadership_transfer_only_to_a_voter() -> None:
    net, leader = _net_with_learner(promote_lag_entries=0)
    leader.transfer_leadership("n4")
    net.stabilize()
    assert leader.role is Role.LEADER and not net.of_type(MessageType.TIMEOUT_NOW)
