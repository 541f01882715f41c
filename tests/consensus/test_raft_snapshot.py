"""Log compaction and InstallSnapshot (Raft §7), one test per rule, plus the
restart of a node from snapshot + log."""

from __future__ import annotations

import random

import pytest

from services.consensus.raft.log import LogInvariantError, RaftLog
from services.consensus.raft.membership import ConfChange, ConfChangeKind
from services.consensus.raft.node import RaftNode
from services.consensus.raft.types import (
    Entry,
    HardState,
    Message,
    MessageType,
    RaftConfig,
    Role,
    SnapshotMeta,
)

from .raftnet import RaftNet
from .test_raft_paper import PEERS, drain


def _fill(net: RaftNet, leader: str, count: int) -> None:
    for i in range(count):
        net.propose(leader, b"p%d" % i)


def test_compaction_drops_the_prefix_and_keeps_the_term_at_the_index() -> None:
    net = RaftNet()
    leader = net.elect("n1")
    _fill(net, "n1", 5)
    at = leader.commit_index - 1
    term = leader.term_at(at)
    meta = net.compact("n1", at)
    assert (meta.index, meta.term) == (at, term)
    assert meta.voters == PEERS and meta.learners == ()
    assert leader.term_at(at) == term and leader.term_at(at - 1) is None
    assert leader.status().snapshot_index == at
    assert net.storage["n1"].entries[0].index == at + 1


def test_only_applied_entries_can_be_compacted() -> None:
    net = RaftNet()
    leader = net.elect("n1")
    _fill(net, "n1", 2)
    with pytest.raises(LogInvariantError):
        leader.compact(leader.last_index + 1)
    leader.propose([b"unapplied"])  # not yet committed or applied
    with pytest.raises(LogInvariantError):
        leader.compact(leader.last_index)


def test_a_follower_behind_the_compaction_point_gets_install_snapshot() -> None:
    net = RaftNet()
    net.elect("n1")
    net.isolate("n3")
    _fill(net, "n1", 6)
    meta = net.compact("n1")
    applied_before = len(net.applied["n3"])
    net.heal()
    net.sent.clear()
    net.tick_all(3)
    (snap,) = [m for m in net.of_type(MessageType.SNAPSHOT) if m.dst == "n3"]
    assert snap.snapshot == meta and snap.done
    assert net.installed["n3"] == [meta]
    n3 = net.nodes["n3"]
    assert n3.status().snapshot_index == meta.index
    assert n3.commit_index == net.nodes["n1"].commit_index
    # The snapshot stands for the entries it covers: none is applied from the log.
    assert len(net.applied["n3"]) == applied_before
    net.propose("n1", b"after")
    assert net.applied["n3"][-1].data == b"after"


def test_no_snapshot_goes_to_a_follower_not_heard_from_until_it_answers() -> None:
    """A snapshot may have to be written for its receiver: none is sent to a
    follower that is down or cut off, only heartbeats, and the first answer
    to one brings the snapshot."""
    net = RaftNet()
    net.isolate("n3")
    net.elect("n1")  # n3 is probed, and never answers
    net.tick_all(net.configs["n1"].election_ticks + 1)  # an election timeout without a word from n3
    _fill(net, "n1", 6)
    meta = net.compact("n1")
    net.sent.clear()
    net.tick_all(3 * net.configs["n1"].election_ticks)
    assert net.nodes["n1"].role is Role.LEADER
    to_n3 = [m for m in net.sent if m.dst == "n3"]
    assert to_n3 and not [m for m in to_n3 if m.type is MessageType.SNAPSHOT]
    net.heal()
    net.tick_all(3)
    assert net.installed["n3"] == [meta]
    assert net.nodes["n3"].commit_index == net.nodes["n1"].commit_index


def test_the_leader_sends_no_entries_while_a_snapshot_is_in_flight() -> None:
    net = RaftNet()
    net.elect("n1")
    net.isolate("n3")
    _fill(net, "n1", 4)
    meta = net.compact("n1")
    net.heal()
    net.sent.clear()
    net.tick_all(2)
    to_n3 = [m for m in net.sent if m.dst == "n3" or m.src == "n3"]
    snaps = [i for i, m in enumerate(to_n3) if m.type is MessageType.SNAPSHOT]
    assert len(snaps) == 1
    acked = next(
        i
        for i, m in enumerate(to_n3)
        if m.type is MessageType.APPEND_RESPONSE and m.match_index == meta.index
    )
    assert not any(m.entries for m in to_n3[snaps[0] : acked])


def test_a_failed_snapshot_transfer_is_retried() -> None:
    net = RaftNet()
    leader = net.elect("n1")
    net.isolate("n3")
    _fill(net, "n1", 4)
    meta = net.compact("n1")
    net.heal()
    failed = 0
    for _ in range(20):
        for nid in net.ids:
            net.nodes[nid].tick()
        while msgs := [m for nid in net.ids for m in net.drain(nid)]:
            for m in msgs:
                if m.type is MessageType.SNAPSHOT and not failed:
                    failed += 1  # the runtime's stream broke
                    leader.snapshot_status(m.dst, False)
                else:
                    net.deliver([m])
    assert failed == 1 and net.installed["n3"] == [meta]
    assert net.nodes["n3"].commit_index == leader.commit_index


def test_snapshot_chunks_before_the_last_are_ignored_by_the_core() -> None:
    node = RaftNode(RaftConfig("n2", PEERS), random.Random(1))
    meta = SnapshotMeta(5, 1, PEERS)
    node.step(Message(MessageType.SNAPSHOT, "n1", "n2", 1, snapshot=meta, data=b"ab", done=False))
    assert node.term == 1 and node.leader_id == "n1"  # the term is learned, nothing else
    assert node.commit_index == 0 and node.ready().snapshot is None


def test_install_snapshot_replaces_a_conflicting_log_and_is_handed_out_first() -> None:
    log = [Entry(1, 1), Entry(1, 2), Entry(2, 3)]
    node = RaftNode(RaftConfig("n2", PEERS), random.Random(1), HardState(2, "", 1), log, applied=1)
    meta = SnapshotMeta(5, 3, PEERS)
    node.step(Message(MessageType.SNAPSHOT, "n1", "n2", 3, snapshot=meta))
    rd = node.ready()
    assert rd.snapshot == meta and rd.committed == [] and rd.entries == []
    (resp,) = rd.messages
    assert resp.type is MessageType.APPEND_RESPONSE and resp.match_index == 5
    node.advance(rd)
    assert node.commit_index == 5 and node.last_index == 5 and node.term_at(3) is None
    assert node.status().applied_index == 5


def test_a_snapshot_whose_last_entry_we_hold_only_commits() -> None:
    log = [Entry(1, 1), Entry(1, 2), Entry(1, 3)]
    node = RaftNode(RaftConfig("n2", PEERS), random.Random(1), HardState(1, "", 0), log)
    node.step(Message(MessageType.SNAPSHOT, "n1", "n2", 1, snapshot=SnapshotMeta(2, 1, PEERS)))
    rd = node.ready()
    assert rd.snapshot is None and [e.index for e in rd.committed] == [1, 2]
    assert node.last_index == 3  # the entry after the snapshot is kept (§7 rule 6)


def test_a_stale_snapshot_is_answered_with_our_commit_index() -> None:
    log = [Entry(1, i) for i in range(1, 6)]
    node = RaftNode(RaftConfig("n2", PEERS), random.Random(1), HardState(1, "", 5), log, applied=5)
    node.step(Message(MessageType.SNAPSHOT, "n1", "n2", 1, snapshot=SnapshotMeta(3, 1, PEERS)))
    (resp,) = drain(node)
    assert resp.match_index == 5 and node.last_index == 5


def test_restart_from_snapshot_and_log() -> None:
    net = RaftNet()
    net.elect("n1")
    _fill(net, "n1", 5)
    meta = net.compact("n2")
    net.propose("n1", b"after")
    net.restart("n2")
    n2 = net.nodes["n2"]
    assert n2.status().snapshot_index == meta.index
    assert n2.status().applied_index == meta.index
    net.tick_all(3)
    # Only what follows the snapshot is applied again.
    assert [e.data for e in net.applied["n2"] if e.data] == [b"after"]
    assert n2.commit_index == net.nodes["n1"].commit_index


def test_a_restarted_node_needs_applied_at_least_the_snapshot_index() -> None:
    meta = SnapshotMeta(4, 1, PEERS)
    with pytest.raises(LogInvariantError):
        RaftNode(RaftConfig("n1", PEERS), random.Random(1), snapshot=meta, applied=2)
    node = RaftNode(
        RaftConfig("n1", PEERS),
        random.Random(1),
        HardState(1, "", 0),
        [Entry(1, i) for i in range(3, 7)],  # entries the snapshot covers are skipped
        applied=4,
        snapshot=meta,
    )
    assert node.commit_index == 4 and node.last_index == 6 and node.term_at(4) == 1


def test_a_leader_restarted_from_a_snapshot_sends_it_to_an_empty_follower() -> None:
    net = RaftNet()
    net.elect("n1")
    _fill(net, "n1", 3)
    meta = net.compact("n1")
    net.restart("n1")
    net.add_node("n4")
    for nid in ("n2", "n3"):  # their leader lease runs out, unheard
        net.tick(nid, 10)
        net.drain(nid)
    net.elect("n1")
    net.tick_all(2)
    net.nodes["n1"].propose_conf_change(ConfChange(ConfChangeKind.ADD_LEARNER, "n4"))
    net.tick_all(3)
    assert net.installed["n4"] == [meta]
    assert net.nodes["n4"].commit_index == net.nodes["n1"].commit_index
    assert net.nodes["n4"].role is Role.FOLLOWER


def test_log_with_a_snapshot_offset_finds_conflicts_within_its_entries() -> None:
    log = RaftLog([Entry(2, 4), Entry(2, 5), Entry(3, 6)], snapshot_index=3, snapshot_term=2)
    assert log.first_index_of_term_at(5) == 4
    assert log.last_index_of_term(2, 6) == 5
    assert log.last_index_of_term(1, 6) == 0
    assert log.slice(1, 5) == [Entry(2, 4)]


def test_the_compaction_index_keeps_a_tail_bounded_by_count_and_by_bytes() -> None:
    net = RaftNet()
    leader = net.elect("n1")
    _fill(net, "n1", 10)  # 10 payloads of 2 bytes after the leader's empty entry
    applied = leader.status().applied_index
    assert leader.log_bytes == sum(len(b"p%d" % i) for i in range(10))
    assert leader.compaction_index(keep_entries=4, keep_bytes=1_000) == applied - 4
    assert leader.compaction_index(keep_entries=4, keep_bytes=4) == applied - 2  # two 2-byte entries fit
    assert leader.compaction_index(keep_entries=0, keep_bytes=1_000) == applied
    net.compact("n1", applied - 3)
    assert leader.compaction_index(keep_entries=100, keep_bytes=1_000) == applied - 3  # never backwards
