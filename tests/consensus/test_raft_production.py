"""What production Raft adds to the paper, one test per rule: pre-vote and
check-quorum (dissertation §9.6, §6.2), fast backtracking (§5.3 optimisation),
batching and pipelining, follower forwarding, tolerance of stale and duplicate
messages, and the Ready contract."""

from __future__ import annotations

import pytest

from services.consensus.raft.node import RaftNode
from services.consensus.raft.types import HardState, Message, MessageType, ProposalDropped, Role

from .raftnet import RaftNet
from .test_raft_paper import drain, make, vote

# -- pre-vote --------------------------------------------------------------------------


def test_pre_vote_does_not_bump_terms_of_a_partitioned_node() -> None:
    net = RaftNet()
    leader = net.elect("n1")
    term = leader.term
    net.isolate("n3")
    for _ in range(100):
        net.tick_all()
    assert net.nodes["n3"].term == term
    assert net.nodes["n3"].role is Role.PRE_CANDIDATE
    net.heal()
    net.tick_all(3)
    # Rejoining does not disrupt the working leader.
    assert leader.role is Role.LEADER and leader.term == term
    assert net.nodes["n3"].leader_id == "n1"


def test_pre_vote_grant_changes_neither_the_voters_term_nor_its_vote() -> None:
    node = make(term=2, log=((1, 2),))
    node.step(Message(MessageType.VOTE, "n2", "n1", 3, log_term=2, index=1, pre_vote=True))
    (resp,) = drain(node)
    assert not resp.reject and resp.pre_vote and resp.term == 3
    assert node.term == 2
    assert node.ready().hard_state is None


def test_pre_vote_denied_while_the_voter_hears_from_a_leader() -> None:
    net = RaftNet()
    net.elect("n1")
    n2 = net.nodes["n2"]
    n2.step(Message(MessageType.VOTE, "n3", "n2", n2.term + 1, log_term=9, index=9, pre_vote=True))
    assert not [m for m in net.drain("n2") if m.type is MessageType.VOTE_RESPONSE]


def test_pre_candidate_learns_a_higher_term_from_a_pre_vote_rejection() -> None:
    node = make(term=1)
    while node.role is Role.FOLLOWER:
        node.tick()
    assert node.role is Role.PRE_CANDIDATE and node.term == 1
    node.step(Message(MessageType.VOTE_RESPONSE, "n2", "n1", 5, reject=True, pre_vote=True))
    assert node.role is Role.FOLLOWER and node.term == 5


def test_pre_vote_majority_starts_a_real_election() -> None:
    node = make(term=1)
    while node.role is Role.FOLLOWER:
        node.tick()
    drain(node)
    node.step(Message(MessageType.VOTE_RESPONSE, "n2", "n1", 2, pre_vote=True))
    assert node.role is Role.CANDIDATE and node.term == 2
    msgs = drain(node)
    assert {m.dst for m in msgs if m.type is MessageType.VOTE and not m.pre_vote} == {"n2", "n3"}


# -- check-quorum ----------------------------------------------------------------------


def test_check_quorum_a_leader_cut_off_from_a_quorum_steps_down() -> None:
    net = RaftNet(election_ticks=10)
    leader = net.elect("n1")
    net.isolate("n1")
    for _ in range(2 * 10):
        leader.tick()
        net.drain("n1")
    assert leader.role is Role.FOLLOWER
    with pytest.raises(ProposalDropped):
        leader.propose([b"x"])


def test_check_quorum_a_leader_that_hears_from_a_quorum_stays() -> None:
    net = RaftNet()
    leader = net.elect("n1")
    net.isolate("n3")
    net.tick_all(100)
    assert leader.role is Role.LEADER


def test_check_quorum_followers_ignore_votes_while_their_leader_is_alive() -> None:
    net = RaftNet(pre_vote=False)
    net.elect("n1")
    n2 = net.nodes["n2"]
    term = n2.term
    n2.step(vote("n3", "n2", term + 1, 99, 99))
    assert n2.term == term and n2.leader_id == "n1"
    assert not [m for m in net.drain("n2") if m.type is MessageType.VOTE_RESPONSE]


def test_check_quorum_lease_expires_after_an_election_timeout() -> None:
    net = RaftNet(pre_vote=False)
    net.elect("n1")
    n2 = net.nodes["n2"]
    net.tick("n2", 10)  # no heartbeats delivered
    n2.step(vote("n3", "n2", n2.term + 1, 99, 99))
    (resp,) = [m for m in net.drain("n2") if m.type is MessageType.VOTE_RESPONSE]
    assert not resp.reject


# -- replication: backtracking, batching, pipelining -----------------------------------------


def _shuttle(a: RaftNode, b: RaftNode) -> list[Message]:
    """Exchange messages between a and b only; return everything sent."""
    nodes = {"n1": a, "n2": b} if a.status().node_id == "n1" else {"n2": a, "n1": b}
    seen: list[Message] = []
    for _ in range(100):
        msgs = [m for n in nodes.values() for m in drain(n) if m.dst in nodes]
        if not msgs:
            return seen
        seen.extend(msgs)
        for m in msgs:
            nodes[m.dst].step(m)
    raise AssertionError("no quiescence")


def _lead(node: RaftNode) -> None:
    """Make a restarted node leader with n3's vote (pre_vote off)."""
    while node.role is Role.FOLLOWER:
        node.tick()
    drain(node)
    node.step(Message(MessageType.VOTE_RESPONSE, "n3", node.status().node_id, node.term))
    assert node.role is Role.LEADER


def test_fast_backtracking_skips_a_whole_conflicting_term_at_once() -> None:
    leader = make("n1", term=3, log=((1, 1), *((i, 3) for i in range(2, 7))), pre_vote=False)
    follower = make("n2", term=2, log=((1, 1), *((i, 2) for i in range(2, 12))), pre_vote=False)
    _lead(leader)
    sent = _shuttle(leader, follower)
    rejects = [m for m in sent if m.type is MessageType.APPEND_RESPONSE and m.reject]
    assert len(rejects) == 1  # one probe per term, not one per entry
    assert (rejects[0].conflict_term, rejects[0].conflict_index) == (2, 2)
    assert [follower.term_at(i) for i in range(1, 8)] == [1, 3, 3, 3, 3, 3, 4]
    assert follower.last_index == 7


def test_fast_backtracking_lands_after_the_leaders_last_entry_of_the_conflict_term() -> None:
    leader_log = ((1, 1), (2, 2), (3, 2), (4, 3), (5, 3), (6, 3))
    leader = make("n1", term=3, log=leader_log, pre_vote=False)
    follower = make("n2", term=2, log=((1, 1), *((i, 2) for i in range(2, 7))), pre_vote=False)
    _lead(leader)
    sent = _shuttle(leader, follower)
    rejects = [m for m in sent if m.type is MessageType.APPEND_RESPONSE and m.reject]
    assert len(rejects) == 1
    probe = [m for m in sent if m.type is MessageType.APPEND and m.dst == "n2"][1]
    assert (probe.index, probe.log_term) == (3, 2)  # next = last index of term 2 + 1


def test_a_shorter_follower_log_hints_its_last_index() -> None:
    node = make(term=2, log=((1, 1), (2, 1)))
    node.step(Message(MessageType.APPEND, "n2", "n1", 2, log_term=2, index=9))
    (resp,) = drain(node)
    assert resp.reject and (resp.conflict_term, resp.conflict_index) == (0, 3)


def test_batching_respects_max_entries_and_max_bytes() -> None:
    net = RaftNet(max_entries_per_append=3, max_bytes_per_append=10)
    leader = net.elect("n1")
    net.sent.clear()
    leader.propose([b"aaaa"] * 10)
    net.stabilize()
    appends = [m for m in net.of_type(MessageType.APPEND) if m.entries]
    assert appends and all(len(m.entries) <= 2 for m in appends)  # 3 * 4 bytes > 10
    big = leader.propose([b"x" * 50])  # an oversized entry still goes, alone
    net.stabilize()
    assert net.nodes["n2"].last_index == big[0]


def test_pipelining_sends_up_to_max_inflight_appends_without_waiting() -> None:
    net = RaftNet(max_entries_per_append=1, max_inflight_appends=3)
    leader = net.elect("n1")
    net.propose("n1", b"warm-up")  # n2 and n3 are now in replicate state
    for i in range(6):
        leader.propose([bytes([i])])
    to_n2 = [m for m in net.drain("n1") if m.dst == "n2" and m.entries]
    assert len(to_n2) == 3  # the window, each with one entry
    assert [m.index for m in to_n2] == [to_n2[0].index + k for k in range(3)]
    net.deliver(to_n2)
    for m in net.drain("n2"):
        leader.step(m)
    assert len([m for m in net.drain("n1") if m.dst == "n2" and m.entries]) == 3


def test_small_appends_wait_for_the_one_in_flight_and_then_go_together() -> None:
    net = RaftNet(max_entries_per_append=16)  # hold_small_appends is on by default
    leader = net.elect("n1")
    net.propose("n1", b"warm-up")  # n2 and n3 are now in replicate state
    leader.propose([b"first"])
    (first,) = [m for m in net.drain("n1") if m.dst == "n2" and m.entries]
    for i in range(5):
        leader.propose([bytes([i])])
    assert not [m for m in net.drain("n1") if m.dst == "n2" and m.entries]  # held
    net.deliver([first])
    for m in net.drain("n2"):
        leader.step(m)
    (together,) = [m for m in net.drain("n1") if m.dst == "n2" and m.entries]
    assert [e.data for e in together.entries] == [bytes([i]) for i in range(5)]


def test_full_appends_still_fill_the_pipeline_while_one_is_in_flight() -> None:
    net = RaftNet(max_entries_per_append=2, max_inflight_appends=8)
    leader = net.elect("n1")
    net.propose("n1", b"warm-up")
    leader.propose([b"first"])
    net.drain("n1")
    leader.propose([bytes([i]) for i in range(5)])  # two full appends and a partial one
    to_n2 = [m for m in net.drain("n1") if m.dst == "n2" and m.entries]
    assert [len(m.entries) for m in to_n2] == [2, 2]  # the partial one waits (window of 8)


def test_without_the_hold_every_proposal_is_sent_at_once() -> None:
    net = RaftNet(max_entries_per_append=16, hold_small_appends=False)
    leader = net.elect("n1")
    net.propose("n1", b"warm-up")
    for i in range(4):
        leader.propose([bytes([i])])
    assert len([m for m in net.drain("n1") if m.dst == "n2" and m.entries]) == 4


def test_probing_keeps_one_append_in_flight() -> None:
    net = RaftNet(max_inflight_appends=8)
    net.isolate("n2")
    leader = net.elect("n1")  # n2 never answered: it is probed, and that probe was lost
    net.heal()
    for i in range(4):
        leader.propose([bytes([i])])
    assert not [m for m in net.drain("n1") if m.dst == "n2"]  # paused until the next heartbeat
    leader.tick()  # the heartbeat retries the probe
    (probe,) = [m for m in net.drain("n1") if m.dst == "n2"]
    assert probe.type is MessageType.APPEND and probe.entries


def test_a_lost_tail_of_appends_is_recovered_without_new_proposals() -> None:
    net = RaftNet(max_entries_per_append=1)
    leader = net.elect("n1")
    net.propose("n1", b"warm-up")
    leader.propose([b"a", b"b"])
    lost = net.drain("n1")  # every append of the pipeline is dropped
    assert lost
    for _ in range(3):
        net.tick_all()
    assert all(net.nodes[n].commit_index == leader.last_index for n in net.ids)


def test_heartbeats_carry_commit_bounded_by_the_followers_match() -> None:
    net = RaftNet()
    leader = net.elect("n1")
    net.propose("n1", b"a")
    net.isolate("n3")
    net.propose("n1", b"b")
    leader.tick()
    beats = {m.dst: m for m in net.drain("n1") if m.type is MessageType.APPEND}
    assert beats["n2"].commit == leader.commit_index
    assert beats["n3"].commit == beats["n3"].index < leader.commit_index


def test_stale_and_duplicate_messages_are_harmless() -> None:
    net = RaftNet()
    net.elect("n1")
    for i in range(5):
        net.propose("n1", bytes([i]))
    before = {n: (net.nodes[n].commit_index, net.nodes[n].last_index) for n in net.ids}
    history = list(net.sent)
    net.deliver(reversed(history))  # every message again, in reverse order
    net.deliver(history)
    net.stabilize()
    assert {n: (net.nodes[n].commit_index, net.nodes[n].last_index) for n in net.ids} == before
    assert net.nodes["n1"].role is Role.LEADER
    net.propose("n1", b"after")
    assert all(net.applied[n][-1].data == b"after" for n in net.ids)


def test_messages_for_another_node_or_without_a_sender_are_ignored() -> None:
    node = make(term=1)
    node.step(Message(MessageType.APPEND, "n2", "n9", 5))
    node.step(Message(MessageType.APPEND, "", "n1", 5))
    assert node.term == 1 and not node.has_ready()


def test_a_leader_outside_our_configuration_is_heard() -> None:
    # Our configuration may lag: the leader can be a server added by a CONFIG
    # entry we have not received yet (dissertation §4.1).
    node = make(term=1)
    node.step(Message(MessageType.APPEND, "n9", "n1", 5))
    assert node.term == 5 and node.leader_id == "n9"


# -- forwarding ------------------------------------------------------------------------------


def test_a_follower_forwards_proposals_to_the_leader() -> None:
    net = RaftNet()
    net.elect("n1")
    assert net.nodes["n2"].propose([b"via-n2"]) == []
    (fwd,) = net.drain("n2")
    assert (fwd.type, fwd.dst, fwd.proposals) == (MessageType.PROPOSE, "n1", (b"via-n2",))
    net.deliver([fwd])
    net.stabilize()
    net.spread_commit()
    assert all(net.applied[n][-1].data == b"via-n2" for n in net.ids)


def test_a_proposal_without_a_known_leader_is_dropped() -> None:
    node = make()
    with pytest.raises(ProposalDropped):
        node.propose([b"x"])


def test_a_forwarded_proposal_reaching_a_non_leader_is_dropped() -> None:
    node = make(term=1)
    node.step(Message(MessageType.PROPOSE, "n2", "n1", 1, proposals=(b"x",)))
    assert node.last_index == 0 and not node.has_ready()


# -- the Ready contract -------------------------------------------------------------------------


def test_ready_carries_hard_state_only_when_it_changed() -> None:
    node = make(term=1, check_quorum=False)
    assert node.ready().hard_state is None
    node.step(vote("n2", "n1", 2, 0, 0))
    rd = node.ready()
    assert rd.hard_state == HardState(term=2, vote="n2", commit=0)
    node.advance(rd)
    assert not node.has_ready()


def test_a_single_node_cluster_commits_after_its_own_write() -> None:
    node = make(peers=("n1",))
    while node.role is not Role.LEADER:
        node.tick()
    drain(node)  # the NOOP
    (index,) = node.propose([b"solo"])
    rd = node.ready()
    assert not rd.committed or rd.committed[-1].index < index
    node.advance(rd)
    assert [e.data for e in node.ready().committed] == [b"solo"]


# -- commit propagation ----------------------------------------------------------


def test_a_new_commit_index_rides_on_the_next_append_not_on_an_extra_message() -> None:
    net = RaftNet()
    leader = net.elect("n1")
    net.spread_commit()
    (first,) = leader.propose([b"a"])
    net.stabilize()
    assert leader.commit_index == first
    # The followers acknowledged, the leader committed: nothing was sent yet
    # only to tell them so.
    assert all(net.nodes[n].commit_index < first for n in ("n2", "n3"))
    assert not [m for nid in net.ids for m in net.drain(nid)]
    # The next proposal's appends carry it.
    leader.propose([b"b"])
    appends = [m for m in net.drain("n1") if m.type is MessageType.APPEND]
    assert {m.dst for m in appends} == {"n2", "n3"}
    assert all(m.commit >= first and m.entries for m in appends)


def test_an_idle_follower_learns_the_commit_index_at_the_next_tick() -> None:
    net = RaftNet()
    leader = net.elect("n1")
    net.spread_commit()
    (index,) = leader.propose([b"a"])
    net.stabilize()
    assert all(net.nodes[n].commit_index < index for n in ("n2", "n3"))
    net.tick("n1")
    net.stabilize()
    assert all(net.nodes[n].commit_index == index for n in net.ids)
    assert all(net.applied[n][-1].data == b"a" for n in net.ids)


@pytest.mark.parametrize("first_ack", ["n2", "n3"])
def test_a_follower_that_forwarded_a_proposal_learns_its_commit_at_once(first_ack: str) -> None:
    # n2's client waits on n2 applying its forwarded entry: the leader tells n2
    # the commit index as it commits (no tick), whichever ack makes the quorum.
    # n3 forwarded nothing and still learns it at the next tick.
    net = RaftNet()
    leader = net.elect("n1")
    net.spread_commit()
    net.nodes["n2"].propose([b"via-n2"])
    net.deliver(net.drain("n2"))
    net.deliver(net.drain("n1"))  # the leader appends and persists it, then replicates
    index = leader.last_index
    acks = {n: net.drain(n) for n in ("n2", "n3")}
    net.deliver(acks[first_ack])
    assert leader.commit_index == index
    out = net.drain("n1")
    if first_ack == "n3":
        # n2's append is still in flight: its answer brings the notice.
        assert not out
        net.deliver(acks["n2"])
        out = net.drain("n1")
    else:
        net.deliver(acks["n3"])
        out += net.drain("n1")
    assert [(m.type, m.dst, m.commit, m.entries) for m in out] == [
        (MessageType.APPEND, "n2", index, ())
    ]
    net.deliver(out)
    net.stabilize()
    assert net.nodes["n2"].commit_index == index
    assert net.applied["n2"][-1].data == b"via-n2"
    assert net.nodes["n3"].commit_index < index
    net.tick("n1")
    net.stabilize()
    assert net.nodes["n3"].commit_index == index


def test_only_the_forwarded_commit_is_told_at_once() -> None:
    # Once told, n2 is an ordinary idle follower again: the leader's own
    # proposal reaches it at the next tick, like every other commit.
    net = RaftNet()
    leader = net.elect("n1")
    net.spread_commit()
    net.nodes["n2"].propose([b"via-n2"])
    net.stabilize()
    assert net.nodes["n2"].commit_index == leader.commit_index
    (own,) = leader.propose([b"own"])
    net.stabilize()
    assert leader.commit_index == own
    assert all(net.nodes[n].commit_index < own for n in ("n2", "n3"))
    net.tick("n1")
    net.stabilize()
    assert all(net.nodes[n].commit_index == own for n in net.ids)
