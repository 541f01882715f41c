"""The Raft consensus algorithm as a pure state machine.

``RaftNode`` owns the Raft state of one voter: term, vote, role, the log
(``log.py``), and as leader the per-follower progress (``progress.py``). Its
inputs are ``tick()``, ``step(msg)`` and ``propose(payloads)``; its output is a
``Ready`` (types.py) that the runtime persists, sends and applies before
calling ``advance()``. It does no I/O, reads no clock and draws randomness only
from the injected ``random.Random``.

Implemented: elections with randomized timeouts (§5.2), the up-to-date vote
check (§5.4.1), log replication with batching and pipelining (§5.3), the
fast-backtracking conflict hint (§5.3, dissertation §5.3), commit by counting
current-term replicas only (§5.4.2) with a NOOP from each new leader (§8),
pre-vote and check-quorum (dissertation §9.6, §6.2), follower forwarding of
proposals and leadership transfer (dissertation §3.10). Not implemented:
snapshots, membership changes, read-index.

Role behaviour is swapped (``self._step_role``), not branched on.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

from .log import LogInvariantError, RaftLog
from .progress import Progress, ProgressState
from .quorum import committed_index, quorum_size, vote_result
from .types import (
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    ProposalDropped,
    RaftConfig,
    Ready,
    Role,
    Status,
)

_NONE = ""
_INITIAL = HardState()


class RaftNode:
    def __init__(
        self,
        config: RaftConfig,
        rng: random.Random,
        hard_state: HardState = _INITIAL,
        log: Sequence[Entry] = (),
        *,
        applied: int = 0,
    ) -> None:
        config.validate()
        if applied > hard_state.commit:
            raise LogInvariantError(f"applied {applied} beyond commit {hard_state.commit}")
        self._config = config
        self._rng = rng
        self._id = config.node_id
        self._peers = tuple(p for p in config.peers if p != config.node_id)
        self._quorum = quorum_size(len(config.peers))
        self._log = RaftLog(log, hard_state.commit)
        self._term = hard_state.term
        self._vote = hard_state.vote
        self._lead = _NONE
        self._role = Role.FOLLOWER
        self._step_role: Callable[[Message], None] = self._step_follower
        self._applied = applied  # applied by the runtime (advance)
        self._applying = applied  # handed out in a Ready, not yet advanced
        self._prev_hard_state = hard_state
        self._msgs: list[Message] = []
        self._votes: dict[str, bool] = {}
        self._progress: dict[str, Progress] = {}
        self._transferee = _NONE
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._randomized_timeout = config.election_ticks
        self._reset_timeout()

    # -- read-only conveniences ---------------------------------------------

    @property
    def role(self) -> Role:
        return self._role

    @property
    def term(self) -> int:
        return self._term

    @property
    def leader_id(self) -> str:
        return self._lead

    @property
    def commit_index(self) -> int:
        return self._log.commit

    @property
    def last_index(self) -> int:
        return self._log.last_index

    def term_at(self, index: int) -> int | None:
        """Term of the log entry at ``index`` (None when absent); for tests."""
        return self._log.term_at(index)

    def status(self) -> Status:
        return Status(
            node_id=self._id,
            role=self._role,
            term=self._term,
            leader_id=self._lead,
            commit_index=self._log.commit,
            last_index=self._log.last_index,
        )

    # -- inputs ----------------------------------------------------------------

    def tick(self) -> None:
        if self._role is Role.LEADER:
            self._tick_leader()
        else:
            self._tick_election()

    def propose(self, payloads: Sequence[bytes]) -> list[int]:
        if self._role is Role.LEADER:
            if self._transferee:
                raise ProposalDropped("leadership transfer in progress")
            if not payloads:
                return []
            indexes = self._append_own([(EntryType.NORMAL, p) for p in payloads])
            self._broadcast_append()
            return indexes
        if not self._lead:
            raise ProposalDropped("no leader known")
        if payloads:
            self._send(MessageType.PROPOSE, self._lead, proposals=tuple(payloads))
        return []

    def transfer_leadership(self, target: str) -> None:
        """Dissertation §3.10: catch ``target`` up, then tell it to campaign."""
        if self._role is not Role.LEADER or target == self._id or target not in self._progress:
            return
        if self._transferee == target:
            return
        self._transferee = target
        self._election_elapsed = 0  # the transfer is abandoned after one election timeout
        if self._progress[target].match_index == self._log.last_index:
            self._send(MessageType.TIMEOUT_NOW, target)
        else:
            # Even with nothing new to send, an empty append finds out whether
            # the appends in flight arrived.
            self._send_append(target, send_if_empty=True)

    def step(self, msg: Message) -> None:
        if msg.dst != self._id or msg.src == self._id or msg.src not in self._config.peers:
            return
        if msg.term > self._term:
            if not self._accept_higher_term(msg):
                return
        elif msg.term < self._term:
            self._answer_stale(msg)
            return
        if msg.type is MessageType.VOTE:
            self._handle_vote(msg)
        else:
            self._step_role(msg)

    # -- the Ready / advance contract ------------------------------------------

    def _hard_state(self) -> HardState:
        return HardState(self._term, self._vote, self._log.commit)

    def has_ready(self) -> bool:
        return (
            bool(self._msgs)
            or self._log.stable_index < self._log.last_index
            or self._log.commit > self._applying
            or self._hard_state() != self._prev_hard_state
        )

    def ready(self) -> Ready:
        hs = self._hard_state()
        rd = Ready(
            hard_state=hs if hs != self._prev_hard_state else None,
            entries=self._log.unstable(),
            messages=self._msgs,
            committed=self._log.slice(self._applying + 1, self._log.commit + 1),
        )
        self._msgs = []
        if rd.committed:
            self._applying = rd.committed[-1].index
        return rd

    def advance(self, rd: Ready) -> None:
        if rd.hard_state is not None:
            self._prev_hard_state = rd.hard_state
        if rd.entries:
            last = rd.entries[-1]
            self._log.stable_to(last.index, last.term)
            if self._role is Role.LEADER and self._maybe_commit():
                # The leader's own entries count toward a quorum only once durable.
                self._on_commit_advanced()
        if rd.committed:
            self._applied = max(self._applied, rd.committed[-1].index)

    # -- terms and roles --------------------------------------------------------

    def _in_lease(self) -> bool:
        """We heard from a live leader less than an election timeout ago."""
        return bool(self._lead) and self._election_elapsed < self._config.election_ticks

    def _accept_higher_term(self, msg: Message) -> bool:
        """A message from a higher term; False when it must be ignored."""
        if msg.type is MessageType.VOTE:
            # Dissertation §4.2.3/§9.6: a server that believes a leader is alive
            # neither grants nor bumps its term, so a partitioned or removed
            # server cannot disrupt a working cluster. A transfer is exempt.
            lease_applies = self._config.check_quorum or msg.pre_vote
            if lease_applies and not msg.force and self._in_lease():
                return False
            if msg.pre_vote:
                return True  # a pre-vote never changes our term
        if msg.type is MessageType.VOTE_RESPONSE and msg.pre_vote and not msg.reject:
            return True  # granted pre-votes carry the term we are about to ask for
        lead = msg.src if msg.type is MessageType.APPEND else _NONE
        self._become_follower(msg.term, lead)
        return True

    def _answer_stale(self, msg: Message) -> None:
        if msg.type is MessageType.APPEND and (self._config.check_quorum or self._config.pre_vote):
            # A deposed leader whose term was overtaken while it could not hear
            # us: tell it, or it would keep heartbeating forever.
            self._send(MessageType.APPEND_RESPONSE, msg.src, reject=True, index=msg.index)
        elif msg.type is MessageType.VOTE and msg.pre_vote:
            # Let the pre-candidate learn our term and rejoin it.
            self._send(MessageType.VOTE_RESPONSE, msg.src, reject=True, pre_vote=True)

    def _reset(self, term: int) -> None:
        if term != self._term:
            self._term = term
            self._vote = _NONE
        self._lead = _NONE
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._reset_timeout()
        self._votes = {}
        self._progress = {}
        self._transferee = _NONE

    def _reset_timeout(self) -> None:
        e = self._config.election_ticks
        self._randomized_timeout = self._rng.randrange(e, 2 * e)

    def _become_follower(self, term: int, lead: str) -> None:
        self._reset(term)
        self._lead = lead
        self._role = Role.FOLLOWER
        self._step_role = self._step_follower

    def _become_pre_candidate(self) -> None:
        # Dissertation §9.6: no term bump, no vote change; only role and votes.
        self._votes = {}
        self._lead = _NONE
        self._election_elapsed = 0
        self._reset_timeout()
        self._role = Role.PRE_CANDIDATE
        self._step_role = self._step_candidate

    def _become_candidate(self) -> None:
        self._reset(self._term + 1)
        self._vote = self._id
        self._role = Role.CANDIDATE
        self._step_role = self._step_candidate

    def _become_leader(self) -> None:
        self._reset(self._term)
        self._lead = self._id
        self._role = Role.LEADER
        self._step_role = self._step_leader
        nxt = self._log.last_index + 1
        self._progress = {p: Progress(nxt, self._config.max_inflight_appends) for p in self._peers}
        # §8: a NOOP of our own term lets earlier-term entries commit (§5.4.2).
        self._append_own([(EntryType.NOOP, b"")])
        self._broadcast_append()

    def _campaign(self, *, pre_vote: bool, force: bool = False) -> None:
        if pre_vote:
            self._become_pre_candidate()
            term = self._term + 1
        else:
            self._become_candidate()
            term = self._term
        self._votes[self._id] = True
        if vote_result(self._votes, len(self._config.peers)):
            self._won_election()
            return
        for p in self._peers:
            self._send(
                MessageType.VOTE,
                p,
                log_term=self._log.last_term,
                index=self._log.last_index,
                pre_vote=pre_vote,
                force=force,
                term=term,
            )

    def _won_election(self) -> None:
        if self._role is Role.PRE_CANDIDATE:
            self._campaign(pre_vote=False)
        else:
            self._become_leader()

    # -- ticks --------------------------------------------------------------------

    def _tick_election(self) -> None:
        self._election_elapsed += 1
        if self._election_elapsed >= self._randomized_timeout:
            # §5.2: no word from a leader for an election timeout.
            self._campaign(pre_vote=self._config.pre_vote)

    def _tick_leader(self) -> None:
        self._heartbeat_elapsed += 1
        self._election_elapsed += 1
        if self._election_elapsed >= self._config.election_ticks:
            self._election_elapsed = 0
            self._transferee = _NONE  # a transfer that did not finish in time is abandoned
            if self._config.check_quorum:
                active = 1 + sum(1 for pr in self._progress.values() if pr.recent_active)
                for pr in self._progress.values():
                    pr.recent_active = False
                if active < self._quorum:
                    # Dissertation §6.2: a leader cut off from a quorum steps down.
                    self._become_follower(self._term, _NONE)
                    return
        if self._heartbeat_elapsed >= self._config.heartbeat_ticks:
            self._heartbeat_elapsed = 0
            for p in self._peers:
                self._send_heartbeat(p)

    # -- votes --------------------------------------------------------------------

    def _handle_vote(self, msg: Message) -> None:
        # Either we already voted for this candidate in this term, or we have
        # not voted and know no leader, or it is a pre-vote for a later term.
        can_vote = (
            self._vote == msg.src
            or (self._vote == _NONE and self._lead == _NONE)
            or (msg.pre_vote and msg.term > self._term)
        )
        if can_vote and self._log.is_up_to_date(msg.log_term, msg.index):
            self._send(MessageType.VOTE_RESPONSE, msg.src, pre_vote=msg.pre_vote, term=msg.term)
            if not msg.pre_vote:
                self._vote = msg.src
                self._election_elapsed = 0
        else:
            self._send(MessageType.VOTE_RESPONSE, msg.src, reject=True, pre_vote=msg.pre_vote)

    # -- role step functions ----------------------------------------------------

    def _step_follower(self, msg: Message) -> None:
        if msg.type is MessageType.APPEND:
            self._election_elapsed = 0
            self._lead = msg.src
            self._handle_append(msg)
        elif msg.type is MessageType.TIMEOUT_NOW:
            # Dissertation §3.10: campaign at once, skipping pre-vote; the
            # voters' lease is overridden by ``force``.
            self._campaign(pre_vote=False, force=True)
        # PROPOSE to a follower: the proposer's leader is stale; dropped.

    def _step_candidate(self, msg: Message) -> None:
        if msg.type is MessageType.APPEND:
            # §5.2: a leader of our term exists.
            self._become_follower(msg.term, msg.src)
            self._handle_append(msg)
        elif msg.type is MessageType.VOTE_RESPONSE:
            pre = self._role is Role.PRE_CANDIDATE
            if msg.pre_vote != pre:
                return
            if pre and not msg.reject and msg.term != self._term + 1:
                return
            self._votes.setdefault(msg.src, not msg.reject)
            result = vote_result(self._votes, len(self._config.peers))
            if result is True:
                self._won_election()
            elif result is False:
                self._become_follower(self._term, _NONE)

    def _step_leader(self, msg: Message) -> None:
        if msg.type is MessageType.APPEND_RESPONSE:
            self._handle_append_response(msg)
        elif msg.type is MessageType.PROPOSE:
            if self._transferee or not msg.proposals:
                return
            self._append_own([(EntryType.NORMAL, p) for p in msg.proposals])
            self._broadcast_append()

    # -- replication: follower side ------------------------------------------------

    def _handle_append(self, msg: Message) -> None:
        log = self._log
        if msg.index < log.commit:
            # Everything up to our commit index is already known to match.
            self._send(MessageType.APPEND_RESPONSE, msg.src, match_index=log.commit)
            return
        if log.maybe_append(msg.index, msg.log_term, msg.entries):
            last_new = msg.index + len(msg.entries)
            # §5.3 receiver rule 5: commit = min(leaderCommit, index of last new entry).
            log.commit_to(min(msg.commit, last_new))
            self._send(MessageType.APPEND_RESPONSE, msg.src, match_index=last_new)
            return
        # Reject with the fast-backtracking hint (§5.3, dissertation §5.3).
        term = log.term_at(msg.index)
        if term is None:
            conflict_term, conflict_index = 0, log.last_index + 1
        else:
            conflict_term, conflict_index = term, log.first_index_of_term_at(msg.index)
        self._send(
            MessageType.APPEND_RESPONSE,
            msg.src,
            reject=True,
            index=msg.index,
            conflict_term=conflict_term,
            conflict_index=conflict_index,
        )

    # -- replication: leader side ------------------------------------------------

    def _append_own(self, items: Sequence[tuple[EntryType, bytes]]) -> list[int]:
        first = self._log.last_index + 1
        entries = [
            Entry(self._term, first + i, etype, data) for i, (etype, data) in enumerate(items)
        ]
        self._log.append(entries)
        return [e.index for e in entries]

    def _broadcast_append(self) -> None:
        for p in self._peers:
            self._fill_pipeline(p)

    def _fill_pipeline(self, to: str) -> None:
        # Bounded: every send either pauses the follower or moves next_index on.
        while self._send_append(to):
            if self._progress[to].state is ProgressState.PROBE:
                break

    def _send_append(self, to: str, *, send_if_empty: bool = False) -> bool:
        pr = self._progress[to]
        if pr.paused:
            return False
        prev = pr.next_index - 1
        prev_term = self._log.term_at(prev)
        if prev_term is None:
            raise LogInvariantError(f"next_index {pr.next_index} of {to} beyond our log")
        cfg = self._config
        entries = self._log.slice_limited(
            pr.next_index, cfg.max_entries_per_append, cfg.max_bytes_per_append
        )
        if not entries and not send_if_empty:
            return False
        self._send(
            MessageType.APPEND,
            to,
            log_term=prev_term,
            index=prev,
            entries=tuple(entries),
            commit=self._log.commit,
        )
        last = entries[-1].index if entries else prev
        pr.commit_sent = max(pr.commit_sent, min(self._log.commit, last))
        pr.sent(last)
        return bool(entries)

    def _send_heartbeat(self, to: str) -> None:
        pr = self._progress[to]
        if pr.state is ProgressState.PROBE:
            # The heartbeat doubles as the probe, retried once per heartbeat.
            pr.probe_sent = False
            self._send_append(to, send_if_empty=True)
            return
        # Anchored at the known match, so it always succeeds and carries a commit
        # index the follower is sure to hold.
        match = pr.match_index
        pr.commit_sent = max(pr.commit_sent, min(self._log.commit, match))
        self._send(
            MessageType.APPEND,
            to,
            log_term=self._log.term_at(match) or 0,
            index=match,
            commit=min(self._log.commit, match),
        )

    def _handle_append_response(self, msg: Message) -> None:
        pr = self._progress.get(msg.src)
        if pr is None:
            return
        pr.recent_active = True
        if msg.reject:
            self._handle_reject(msg, pr)
            return
        if pr.maybe_update(msg.match_index):
            if pr.state is ProgressState.PROBE:
                pr.become_replicate()
            if self._maybe_commit():
                self._on_commit_advanced()
            self._fill_pipeline(msg.src)
            self._maybe_send_commit(msg.src, pr)
            if msg.src == self._transferee and pr.match_index == self._log.last_index:
                self._send(MessageType.TIMEOUT_NOW, msg.src)
            return
        # A stale, duplicated or heartbeat answer that acknowledges nothing new.
        if pr.state is ProgressState.PROBE or pr.match_index >= self._log.last_index:
            return  # a lost probe is retried by the next heartbeat
        if pr.paused:
            # The pipeline is full and this answer freed nothing: its oldest
            # append may be lost. Give one slot back so we can send again.
            pr.free_one()
        if not self._send_append(msg.src) and pr.next_index > pr.match_index + 1:
            # Nothing new to send but appends are unacknowledged: if the last
            # ones were lost, this empty append is rejected and we probe again.
            self._send_append(msg.src, send_if_empty=True)

    def _on_commit_advanced(self) -> None:
        for p, pr in self._progress.items():
            self._maybe_send_commit(p, pr)

    def _maybe_send_commit(self, to: str, pr: Progress) -> None:
        """Tell an idle, caught-up follower a commit index it has not heard yet;
        busy ones learn it from their next append."""
        if (
            pr.state is ProgressState.REPLICATE
            and not pr.inflight
            and pr.commit_sent < min(self._log.commit, pr.match_index)
        ):
            self._send_heartbeat(to)

    def _handle_reject(self, msg: Message, pr: Progress) -> None:
        if msg.conflict_index == 0 or msg.index <= pr.match_index:
            # No hint: an answer to an append of an older term. Or stale: that
            # prefix is already known to match.
            return
        if pr.state is ProgressState.PROBE and msg.index != pr.next_index - 1:
            return  # an answer to an older probe
        if pr.state is ProgressState.REPLICATE and msg.index >= pr.next_index:
            return
        # Fast backtracking: skip the follower's whole conflicting term at once.
        nxt = msg.conflict_index
        if msg.conflict_term > 0:
            ours = self._log.last_index_of_term(msg.conflict_term, msg.index)
            if ours > 0:
                nxt = ours + 1
        nxt = max(min(nxt, msg.index), 1)
        pr.become_probe(nxt)
        self._send_append(msg.src, send_if_empty=True)

    def _maybe_commit(self) -> bool:
        matches = [pr.match_index for pr in self._progress.values()]
        matches.append(self._log.stable_index)
        n = committed_index(matches)
        # §5.4.2: only entries of the current term are committed by counting.
        if n > self._log.commit and self._log.term_at(n) == self._term:
            return self._log.commit_to(n)
        return False

    # -- output -------------------------------------------------------------------

    def _send(self, mtype: MessageType, to: str, *, term: int | None = None, **fields: Any) -> None:
        t = self._term if term is None else term
        self._msgs.append(Message(mtype, self._id, to, t, **fields))
