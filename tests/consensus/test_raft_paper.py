"""One test per rule of the Raft paper (Ongaro & Ousterhout, "In Search of an
Understandable Consensus Algorithm"), section numbers in the test names."""

from __future__ import annotations

import random

from services.consensus.raft.memory import MemoryStorage
from services.consensus.raft.node import RaftNode
from services.consensus.raft.types import (
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    RaftConfig,
    Role,
)

from .raftnet import RaftNet

PEERS = ("n1", "n2", "n3")


def make(
    nid: str = "n1",
    *,
    term: int = 0,
    vote: str = "",
    log: tuple[tuple[int, int], ...] = (),
    commit: int = 0,
    peers: tuple[str, ...] = PEERS,
    **config: int | bool,
) -> RaftNode:
    """A node restarted from a persisted state; ``log`` is (index, term) pairs."""
    cfg = RaftConfig(node_id=nid, peers=peers, **config)  # type: ignore[arg-type]
    entries = [Entry(t, i, data=f"{i}".encode()) for i, t in log]
    hs = HardState(term=term, vote=vote, commit=commit)
    return RaftNode(cfg, random.Random(1), hs, entries, applied=commit)


def drain(node: RaftNode) -> list[Message]:
    out: list[Message] = []
    while node.has_ready():
        rd = node.ready()
        out.extend(rd.messages)
        node.advance(rd)
    return out


def vote(src: str, dst: str, term: int, log_term: int, index: int) -> Message:
    return Message(MessageType.VOTE, src, dst, term, log_term=log_term, index=index)


def append(src: str, dst: str, term: int, prev: tuple[int, int], *ents: tuple[int, int]) -> Message:
    entries = tuple(Entry(t, i, data=f"{i}".encode()) for i, t in ents)
    return Message(
        MessageType.APPEND, src, dst, term, log_term=prev[1], index=prev[0], entries=entries
    )


# -- §5.1 terms -----------------------------------------------------------------------


def test_5_1_a_leader_that_sees_a_higher_term_becomes_follower() -> None:
    net = RaftNet(pre_vote=False, check_quorum=False)
    leader = net.elect("n1")
    leader.step(Message(MessageType.APPEND_RESPONSE, "n2", "n1", leader.term + 3))
    assert leader.role is Role.FOLLOWER
    assert leader.term == 4 and leader.leader_id == ""


def test_5_1_a_request_with_a_stale_term_is_rejected() -> None:
    node = make(term=5, log=((1, 1),))
    drain(node)
    node.step(append("n2", "n1", 3, (1, 1), (2, 3)))
    (resp,) = drain(node)
    assert resp.type is MessageType.APPEND_RESPONSE and resp.reject and resp.term == 5
    assert node.last_index == 1 and node.term == 5


# -- §5.2 leader election ---------------------------------------------------------------


def test_5_2_a_follower_that_hears_nothing_for_an_election_timeout_becomes_candidate() -> None:
    node = make(pre_vote=False)
    for _ in range(2 * 10):
        node.tick()
        if node.role is not Role.FOLLOWER:
            break
    assert node.role is Role.CANDIDATE
    assert node.term == 1
    rd = node.ready()
    assert rd.hard_state == HardState(term=1, vote="n1", commit=0)  # vote is durable first
    votes = [m for m in rd.messages if m.type is MessageType.VOTE]
    assert sorted(m.dst for m in votes) == ["n2", "n3"]
    assert all(m.term == 1 and not m.pre_vote for m in votes)


def test_5_2_election_timeouts_are_randomized_in_one_to_two_election_timeouts() -> None:
    seen = set()
    for seed in range(200):
        cfg = RaftConfig(node_id="n1", peers=PEERS, election_ticks=10, pre_vote=False)
        node = RaftNode(cfg, random.Random(seed))
        ticks = 0
        while node.role is Role.FOLLOWER and ticks < 100:
            node.tick()
            ticks += 1
        seen.add(ticks)
    assert min(seen) >= 10 and max(seen) <= 19
    assert len(seen) > 5  # actually random, not a constant


def test_5_2_a_candidate_with_a_majority_of_votes_becomes_leader_and_sends_a_noop() -> None:
    node = make(pre_vote=False)
    node.tick()
    while node.role is Role.FOLLOWER:
        node.tick()
    drain(node)
    node.step(Message(MessageType.VOTE_RESPONSE, "n2", "n1", 1))
    assert node.role is Role.LEADER
    rd = node.ready()
    assert [(e.index, e.term, e.type) for e in rd.entries] == [(1, 1, EntryType.NOOP)]  # §8
    assert {m.dst for m in rd.messages if m.type is MessageType.APPEND} == {"n2", "n3"}


def test_5_2_a_candidate_that_hears_from_a_leader_of_its_term_becomes_follower() -> None:
    node = make(pre_vote=False)
    while node.role is Role.FOLLOWER:
        node.tick()
    node.step(append("n2", "n1", node.term, (0, 0)))
    assert node.role is Role.FOLLOWER and node.leader_id == "n2"


def test_5_2_a_candidate_refused_by_a_majority_becomes_follower() -> None:
    node = make(pre_vote=False)
    while node.role is Role.FOLLOWER:
        node.tick()
    for src in ("n2", "n3"):
        node.step(Message(MessageType.VOTE_RESPONSE, src, "n1", node.term, reject=True))
    assert node.role is Role.FOLLOWER and node.term == 1


def test_5_2_each_server_votes_for_at_most_one_candidate_per_term() -> None:
    node = make(term=1, check_quorum=False)
    node.step(vote("n2", "n1", 2, 0, 0))
    node.step(vote("n3", "n1", 2, 0, 0))
    node.step(vote("n2", "n1", 2, 0, 0))  # a retry by the same candidate is granted again
    granted = [m.dst for m in drain(node) if not m.reject]
    assert granted == ["n2", "n2"]


def test_5_2_a_vote_survives_a_restart() -> None:
    node = make(term=1, check_quorum=False)
    node.step(vote("n2", "n1", 2, 0, 0))
    storage = MemoryStorage()
    while node.has_ready():
        rd = node.ready()
        storage.save(rd.hard_state, rd.entries)
        node.advance(rd)
    hs, log = storage.load()
    again = RaftNode(
        RaftConfig(node_id="n1", peers=PEERS, check_quorum=False), random.Random(0), hs, log
    )
    again.step(vote("n3", "n1", 2, 0, 0))
    (resp,) = drain(again)
    assert resp.reject


# -- §5.3 log replication ------------------------------------------------------------------


def test_5_3_an_entry_commits_once_a_majority_stores_it_and_followers_learn_it() -> None:
    net = RaftNet()
    net.elect("n1")
    (index,) = net.propose("n1", b"x")
    assert all(net.nodes[n].commit_index == index for n in net.ids)
    assert all(net.applied[n][-1].data == b"x" for n in net.ids)


def test_5_3_a_follower_rejects_an_append_whose_previous_entry_does_not_match() -> None:
    node = make(term=2, log=((1, 1), (2, 1)))
    node.step(append("n2", "n1", 2, (2, 2), (3, 2)))
    (resp,) = drain(node)
    assert resp.reject and resp.index == 2
    assert node.last_index == 2


def test_5_3_a_follower_truncates_from_the_first_conflict_and_storage_follows() -> None:
    node = make(term=2, log=((1, 1), (2, 1), (3, 1)))
    drain(node)
    # Entries 1..2 match; 3 conflicts; entry 2 must not be rewritten.
    node.step(append("n2", "n1", 3, (1, 1), (2, 1), (3, 3), (4, 3)))
    rd = node.ready()
    assert [(e.index, e.term) for e in rd.entries] == [(3, 3), (4, 3)]
    storage = MemoryStorage()
    storage.save(None, [Entry(1, 1), Entry(1, 2), Entry(1, 3)])
    storage.save(rd.hard_state, rd.entries)
    assert [(e.index, e.term) for e in storage.load()[1]] == [(1, 1), (2, 1), (3, 3), (4, 3)]


def test_5_3_an_old_append_does_not_truncate_newer_matching_entries() -> None:
    node = make(term=2, log=((1, 1), (2, 2), (3, 2)))
    drain(node)
    node.step(append("n2", "n1", 2, (1, 1), (2, 2)))  # a delayed duplicate
    assert node.last_index == 3
    assert not node.ready().entries


def test_5_3_a_follower_commits_no_further_than_the_entries_it_was_sent() -> None:
    node = make(term=1, log=((1, 1), (2, 1), (3, 1)))
    # Its entry 3 may differ from the leader's; only 1..2 are verified by this append.
    msg = append("n2", "n1", 2, (1, 1), (2, 1))
    node.step(Message(**{**_fields(msg), "commit": 3}))
    assert node.commit_index == 2


def _fields(m: Message) -> dict[str, object]:
    return {f: getattr(m, f) for f in Message.__slots__}


def test_5_3_a_lagging_follower_is_brought_up_to_date() -> None:
    net = RaftNet()
    net.elect("n1")
    net.isolate("n3")
    for i in range(20):
        net.propose("n1", f"p{i}".encode())
    net.heal()
    net.tick("n1", 1)
    net.stabilize()
    assert net.nodes["n3"].last_index == net.nodes["n1"].last_index
    assert [e.data for e in net.applied["n3"]] == [e.data for e in net.applied["n1"]]


# -- §5.4 safety -------------------------------------------------------------------------------


def test_5_4_1_vote_denied_to_a_candidate_with_a_lower_last_term() -> None:
    node = make(term=3, log=((1, 1), (2, 3)), check_quorum=False)
    node.step(vote("n2", "n1", 4, 2, 5))  # longer log but older last term
    (resp,) = drain(node)
    assert resp.reject
    assert node.term == 4  # the term is still adopted (§5.1)


def test_5_4_1_vote_denied_to_a_candidate_with_a_shorter_log_of_the_same_last_term() -> None:
    node = make(term=3, log=((1, 1), (2, 3), (3, 3)), check_quorum=False)
    node.step(vote("n2", "n1", 4, 3, 2))
    (resp,) = drain(node)
    assert resp.reject


def test_5_4_1_vote_granted_to_a_candidate_at_least_as_up_to_date() -> None:
    node = make(term=3, log=((1, 1), (2, 3)), check_quorum=False)
    node.step(vote("n2", "n1", 4, 3, 2))
    (resp,) = drain(node)
    assert not resp.reject and resp.term == 4


def test_5_4_2_leader_never_commits_an_entry_from_an_earlier_term_by_counting_replicas() -> None:
    # Figure 8: n1 led term 2 and wrote index 2 only on n2; now n1 leads term 4.
    node = make(term=3, log=((1, 1), (2, 2)), commit=1, pre_vote=False, max_entries_per_append=1)
    while node.role is Role.FOLLOWER:
        node.tick()
    drain(node)
    node.step(Message(MessageType.VOTE_RESPONSE, "n3", "n1", node.term))
    assert node.role is Role.LEADER and node.term == 4
    drain(node)  # the NOOP at index 3 is now durable on n1
    # n3 acknowledges index 2 (term 2): a majority holds it, yet it stays uncommitted.
    node.step(Message(MessageType.APPEND_RESPONSE, "n3", "n1", 4, match_index=2))
    drain(node)
    assert node.commit_index == 1
    # Once the current-term NOOP is on a majority, index 2 commits with it.
    node.step(Message(MessageType.APPEND_RESPONSE, "n3", "n1", 4, match_index=3))
    drain(node)
    assert node.commit_index == 3


def test_5_4_leader_counts_its_own_entries_only_once_persisted() -> None:
    net = RaftNet(max_inflight_appends=8)
    leader = net.elect("n1")
    (index,) = leader.propose([b"x"])
    rd = leader.ready()  # not yet persisted: no advance
    assert rd.entries
    for m in rd.messages:
        if m.dst == "n2":
            net.nodes["n2"].step(m)
    for m in net.drain("n2"):
        leader.step(m)
    assert leader.commit_index < index  # n2 alone is not a majority of three
    net.storage["n1"].save(rd.hard_state, rd.entries)
    leader.advance(rd)
    assert leader.commit_index == index


def test_5_4_3_committed_entries_survive_a_leader_crash() -> None:
    net = RaftNet()
    net.elect("n1")
    net.propose("n1", b"a", b"b")
    net.isolate("n1")
    net.tick_all(40)
    new_leader = next(n for n in ("n2", "n3") if net.nodes[n].role is Role.LEADER)
    assert [e.data for e in net.applied[new_leader] if e.data] == [b"a", b"b"]


def test_5_5_a_restarted_node_redelivers_committed_entries_beyond_applied() -> None:
    cfg = RaftConfig(node_id="n1", peers=PEERS)
    log = [Entry(1, i, data=bytes([i])) for i in range(1, 5)]
    node = RaftNode(cfg, random.Random(0), HardState(1, "", 3), log, applied=1)
    rd = node.ready()
    assert [e.index for e in rd.committed] == [2, 3]
    assert rd.hard_state is None and not rd.entries
    node.advance(rd)
    assert not node.has_ready()
