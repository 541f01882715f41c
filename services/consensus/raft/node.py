"""The Raft consensus algorithm as a pure state machine.

``RaftNode`` owns the Raft state of one member (voter or learner): term,
vote, role, membership, the log (``log.py``), and as leader the per-follower
progress (``progress.py``) and pending reads (``readindex.py``). Its inputs
are ``tick()``, ``step(msg)``, ``propose(payloads)``,
``propose_conf_change(change)``, ``read_index(ctx)``, ``compact(index)`` and
``snapshot_status(peer, ok)``; its output is a ``Ready`` (types.py) that the
runtime installs, persists, sends and applies before calling ``advance()``.
It does no I/O, reads no clock and draws randomness only from the injected
``random.Random``.

Implemented: elections with randomized timeouts (§5.2), the up-to-date vote
check (§5.4.1), log replication with batching and pipelining (§5.3), the
fast-backtracking conflict hint (§5.3, dissertation §5.3), commit by counting
current-term replicas only (§5.4.2) with a NOOP from each new leader (§8),
pre-vote and check-quorum (dissertation §9.6, §6.2), follower forwarding of
proposals and leadership transfer (dissertation §3.10), log compaction and
InstallSnapshot (§7), single-server membership changes with learners
(dissertation §4.1-§4.3, ``membership.py``), and linearizable reads by
ReadIndex or, when configured, the leader lease (dissertation §6.4).

Role behaviour is swapped (``self._step_role``), not branched on.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Sequence
from typing import Any

from .commit_notice import CommitNotices, owes_commit
from .log import LogInvariantError, RaftLog
from .membership import (
    ConfChange,
    ConfChangeError,
    ConfChangeKind,
    ConfChangePending,
    Membership,
    decode_config,
    encode_config,
)
from .progress import Progress, ProgressState
from .quorum import committed_index, quorum_size, vote_result
from .readindex import PendingRead, ReadIndexTracker
from .types import (
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    NotLeader,
    ProposalDropped,
    RaftConfig,
    ReadState,
    Ready,
    Role,
    SnapshotMeta,
    Status,
)

_NONE = ""
_INITIAL = HardState()
# Messages only a leader sends: they carry its identity to followers.
_FROM_LEADER = frozenset({MessageType.APPEND, MessageType.SNAPSHOT})


class RaftNode:
    def __init__(
        self,
        config: RaftConfig,
        rng: random.Random,
        hard_state: HardState = _INITIAL,
        log: Sequence[Entry] = (),
        *,
        applied: int = 0,
        snapshot: SnapshotMeta | None = None,
    ) -> None:
        config.validate()
        snap_index, snap_term = (snapshot.index, snapshot.term) if snapshot else (0, 0)
        if applied > max(hard_state.commit, snap_index):
            raise LogInvariantError(f"applied {applied} beyond commit {hard_state.commit}")
        if applied < snap_index:
            raise LogInvariantError(f"applied {applied} below the snapshot's index {snap_index}")
        self._config = config
        self._rng = rng
        self._id = config.node_id
        self._log = RaftLog(
            log, hard_state.commit, snapshot_index=snap_index, snapshot_term=snap_term
        )
        # The membership history: (index, term, membership) of the base (the
        # snapshot's or the bootstrap one) and of every CONFIG entry after it.
        # The last one is in effect (dissertation §4.1: on append).
        base = (
            Membership.of(snapshot.voters, snapshot.learners)
            if snapshot
            else Membership.of(config.peers, config.learners)
        )
        self._conf: list[tuple[int, int, Membership]] = [(snap_index, snap_term, base)]
        for e in self._log.slice(self._log.first_index, self._log.last_index + 1):
            if e.type is EntryType.CONFIG:
                self._conf.append((e.index, e.term, decode_config(e.data)[0]))
        self._membership = self._conf[-1][2]
        self._snapshot = snapshot  # the latest snapshot: what a lagging follower is sent
        self._pending_snapshot: SnapshotMeta | None = None  # received, for Ready.snapshot
        self._pending_conf_index = 0  # leader: the last CONFIG entry it appended
        self._reads = ReadIndexTracker()
        self._reads_waiting: list[tuple[bytes, str]] = []  # until a current-term commit
        self._read_states: list[ReadState] = []
        self._term = hard_state.term
        self._vote = hard_state.vote
        self._lead = _NONE
        self._role = Role.FOLLOWER
        self._step_role: Callable[[Message], None] = self._step_follower
        self._applied = applied  # applied by the runtime (advance)
        self._applying = applied  # handed out in a Ready, not yet advanced
        self._prev_hard_state = hard_state
        self._msgs: list[Message] = []
        # Who is told the commit index outside an append, and when.
        self._notices = CommitNotices()
        self._votes: dict[str, bool] = {}
        self._progress: dict[str, Progress] = {}
        self._transferee = _NONE
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._randomized_timeout = config.election_ticks
        # Leader lease (lease_reads only): ticks since start, the tick each
        # read round was first sent, and the tick the lease runs out.
        self._now = 0
        self._round_sent: dict[int, int] = {}
        self._lease_until = 0
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

    @property
    def voters(self) -> frozenset[str]:
        return self._membership.voters

    @property
    def learners(self) -> frozenset[str]:
        return self._membership.learners

    def status(self) -> Status:
        return Status(
            node_id=self._id,
            role=self._role,
            term=self._term,
            leader_id=self._lead,
            commit_index=self._log.commit,
            last_index=self._log.last_index,
            voters=tuple(sorted(self._membership.voters)),
            learners=tuple(sorted(self._membership.learners)),
            applied_index=self._applied,
            snapshot_index=self._log.snapshot_index,
            pending_conf_index=self._conf_pending(),
        )

    def _is_voter(self, nid: str) -> bool:
        return nid in self._membership.voters

    def _has_quorum(self, acks: set[str]) -> bool:
        voters = self._membership.voters
        return len(acks & voters) >= quorum_size(len(voters))

    def _conf_pending(self) -> int:
        """Leader: the index of an appended, uncommitted CONFIG entry (0: none)."""
        if self._role is Role.LEADER and self._pending_conf_index > self._log.commit:
            return self._pending_conf_index
        return 0

    # -- inputs ----------------------------------------------------------------

    def clock_jumped(self, ticks: int) -> None:
        """``ticks`` ticks passed that the runtime did not deliver (it was
        stalled): they count against the leader lease, but fire no election
        or heartbeat timer, so a stall alone does not start an election."""
        if ticks > 0:
            self._now += ticks

    def tick(self) -> None:
        self._now += 1
        if self._role is Role.LEADER:
            self._tell_commit_due()
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

    def propose_conf_change(self, change: ConfChange) -> int:
        """Append a CONFIG entry for ``change`` (dissertation §4.1); returns its
        index. Raises ``NotLeader`` on a non-leader, ``ConfChangePending``
        while another change is uncommitted or before this leader committed an
        entry of its term, ``ConfChangeInvalid`` if it does not apply."""
        if self._role is not Role.LEADER:
            raise NotLeader(self._lead)
        if self._transferee:
            raise ProposalDropped("leadership transfer in progress")
        if self._pending_conf_index > self._log.commit:
            raise ConfChangePending(
                f"change at index {self._pending_conf_index} is not committed "
                f"(commit {self._log.commit})"
            )
        new = self._membership.apply(change)
        (index,) = self._append_own([(EntryType.CONFIG, encode_config(new, change))])
        self._pending_conf_index = index
        self._conf.append((index, self._term, new))
        self._set_membership(new)
        self._broadcast_append()
        return index

    def read_index(self, context: bytes) -> None:
        """Ask for a linearizable read (dissertation §6.4). ``Ready.read_states``
        later holds ``ReadState(index, context)``: the read may be served once
        the state machine has applied ``index``. A follower forwards the
        request to its leader. Nothing comes back if leadership is lost or a
        message is lost: the runtime retries after a timeout. Raises
        ``ProposalDropped`` when no leader is known."""
        if self._role is Role.LEADER:
            if self._transferee:
                raise ProposalDropped("leadership transfer in progress")
            self._leader_read(context, _NONE)
        elif self._lead:
            self._send(MessageType.READ_INDEX, self._lead, context=context)
        else:
            raise ProposalDropped("no leader known")

    def snapshot_meta(self, index: int) -> SnapshotMeta:
        """What a snapshot of the state machine at applied ``index`` must be
        stored with: the term there and the membership in effect there."""
        if index == self._log.snapshot_index and self._snapshot is not None:
            return self._snapshot
        term = self._log.term_at(index)
        if term is None or index > self._applied or index < 1:
            raise LogInvariantError(
                f"no snapshot at {index}: applied {self._applied}, "
                f"log {self._log.first_index}..{self._log.last_index}"
            )
        m = self._membership_at(index)
        return SnapshotMeta(index, term, tuple(sorted(m.voters)), tuple(sorted(m.learners)))

    @property
    def log_bytes(self) -> int:
        """Payload bytes of the entries the core holds in memory."""
        return self._log.size()

    def compaction_index(self, keep_entries: int, keep_bytes: int) -> int:
        """Where to compact so that at most ``keep_entries`` entries and at
        most ``keep_bytes`` bytes of them stay behind the applied index (a
        tail for followers a little behind): never past the applied index,
        never before the current compaction point."""
        by_count = self._applied - keep_entries
        by_bytes = self._log.tail_start(keep_bytes)
        return max(self._log.snapshot_index, min(self._applied, max(by_count, by_bytes)))

    def compact(self, index: int) -> SnapshotMeta:
        """The state machine holds everything up to applied ``index`` durably
        (the runtime's ledger, or a snapshot file): drop the log up to it
        (Raft §7). Returns the snapshot's meta (``snapshot_meta(index)``).
        A lagging follower is then sent a snapshot at or after ``index``."""
        meta = self.snapshot_meta(index)
        if index <= self._log.snapshot_index:
            return meta
        self._log.compact(index)
        m = self._membership_at(index)
        self._conf = [(index, meta.term, m)] + [c for c in self._conf if c[0] > index]
        self._snapshot = meta
        return meta

    def snapshot_status(self, peer: str, ok: bool) -> None:
        """The runtime finished streaming a snapshot to ``peer`` (``ok``) or gave
        up (not ``ok``). Either way the follower is probed again: the answer
        to the probe tells whether the snapshot arrived."""
        pr = self._progress.get(peer)
        if pr is None or pr.state is not ProgressState.SNAPSHOT:
            return
        if ok:
            pr.become_probe(pr.pending_snapshot + 1)
            pr.probe_sent = True  # wait for the follower's answer or the next heartbeat
        else:
            pr.become_probe(pr.match_index + 1)

    def transfer_leadership(self, target: str) -> None:
        """Dissertation §3.10: catch ``target`` up, then tell it to campaign."""
        if (
            self._role is not Role.LEADER
            or target == self._id
            or target not in self._progress
            or not self._is_voter(target)
        ):
            return
        if self._transferee == target:
            return
        self._transferee = target
        self._election_elapsed = 0  # the transfer is abandoned after one election timeout
        # TimeoutNow lets the target be elected at once, past the followers'
        # lease: our lease ends here and is renewed only by a later round.
        self._lease_until = 0
        if self._progress[target].match_index == self._log.last_index:
            self._send(MessageType.TIMEOUT_NOW, target)
        else:
            # Even with nothing new to send, an empty append finds out whether
            # the appends in flight arrived.
            self._send_append(target, send_if_empty=True)

    def step(self, msg: Message) -> None:
        # Senders outside our membership are heard: our configuration may be
        # behind theirs (a new leader we have not learned about yet).
        if msg.dst != self._id or msg.src == self._id or not msg.src:
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
            or self._pending_snapshot is not None
            or bool(self._read_states)
        )

    def ready(self) -> Ready:
        hs = self._hard_state()
        rd = Ready(
            hard_state=hs if hs != self._prev_hard_state else None,
            entries=self._log.unstable(),
            messages=self._msgs,
            committed=self._log.slice(self._applying + 1, self._log.commit + 1),
            snapshot=self._pending_snapshot,
            read_states=self._read_states,
        )
        self._msgs = []
        self._read_states = []
        if rd.committed:
            self._applying = rd.committed[-1].index
        return rd

    def advance(self, rd: Ready) -> None:
        if rd.snapshot is not None:
            if rd.snapshot is self._pending_snapshot:
                self._pending_snapshot = None
            self._applied = max(self._applied, rd.snapshot.index)
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
        """We heard from a live leader less than an election timeout ago.
        With lease reads, also during our first election timeout after a
        restart: we may have acknowledged a leader's lease just before a
        crash and must not help elect another leader while that lease runs.
        (A node that never had a term never acknowledged one.)"""
        if self._config.lease_reads and self._term > 0 and self._now < self._config.election_ticks:
            return True
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
        lead = msg.src if msg.type in _FROM_LEADER else _NONE
        self._become_follower(msg.term, lead)
        return True

    def _answer_stale(self, msg: Message) -> None:
        if msg.type in _FROM_LEADER and (self._config.check_quorum or self._config.pre_vote):
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
        self._notices.role_changed()
        self._transferee = _NONE
        self._reads.clear()
        self._reads_waiting = []
        self._round_sent = {}
        self._lease_until = 0

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
        self._sync_progress(self._log.last_index + 1)
        # §8: a NOOP of our own term lets earlier-term entries commit (§5.4.2).
        # No membership change before it commits (the §4.1 fix, membership.py).
        (self._pending_conf_index,) = self._append_own([(EntryType.NOOP, b"")])
        self._broadcast_append()

    def _campaign(self, *, pre_vote: bool, force: bool = False) -> None:
        if pre_vote:
            self._become_pre_candidate()
            term = self._term + 1
        else:
            self._become_candidate()
            term = self._term
        self._votes[self._id] = True
        if vote_result(self._votes, len(self._membership.voters)):
            self._won_election()
            return
        for p in sorted(self._membership.voters - {self._id}):
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
        if self._election_elapsed >= self._randomized_timeout and self._is_voter(self._id):
            # §5.2: no word from a leader for an election timeout. Learners and
            # removed servers never campaign.
            self._campaign(pre_vote=self._config.pre_vote)

    def _tick_leader(self) -> None:
        self._heartbeat_elapsed += 1
        self._election_elapsed += 1
        if self._election_elapsed >= self._config.election_ticks:
            self._election_elapsed = 0
            self._transferee = _NONE  # a transfer that did not finish in time is abandoned
            if self._config.check_quorum:
                active = {p for p, pr in self._progress.items() if pr.recent_active}
                active.add(self._id)
                for pr in self._progress.values():
                    pr.recent_active = False
                if not self._has_quorum(active):
                    # Dissertation §6.2: a leader cut off from a quorum steps down.
                    self._become_follower(self._term, _NONE)
                    return
        if self._heartbeat_elapsed >= self._config.heartbeat_ticks:
            self._heartbeat_elapsed = 0
            # Pending reads ride on every heartbeat, so a lost round is retried.
            read_id = self._reads.round if self._reads else 0
            for p, pr in self._progress.items():
                pr.loss_check = True
                self._send_heartbeat(p, read_id=read_id)

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
        elif msg.type is MessageType.SNAPSHOT:
            if msg.done:
                self._election_elapsed = 0
                self._lead = msg.src
                self._handle_snapshot(msg)
        elif msg.type is MessageType.TIMEOUT_NOW:
            # Dissertation §3.10: campaign at once, skipping pre-vote; the
            # voters' lease is overridden by ``force``.
            if self._is_voter(self._id):
                self._campaign(pre_vote=False, force=True)
        elif msg.type is MessageType.READ_INDEX_RESPONSE and not msg.reject:
            self._read_states.append(ReadState(msg.index, msg.context))
        # PROPOSE or READ_INDEX to a follower: the sender's leader is stale; dropped.

    def _step_candidate(self, msg: Message) -> None:
        if msg.type in _FROM_LEADER:
            if msg.type is MessageType.SNAPSHOT and not msg.done:
                return
            # §5.2: a leader of our term exists.
            self._become_follower(msg.term, msg.src)
            self._step_follower(msg)
        elif msg.type is MessageType.VOTE_RESPONSE:
            pre = self._role is Role.PRE_CANDIDATE
            if msg.pre_vote != pre:
                return
            if pre and not msg.reject and msg.term != self._term + 1:
                return
            if not self._is_voter(msg.src):
                return
            self._votes.setdefault(msg.src, not msg.reject)
            result = vote_result(self._votes, len(self._membership.voters))
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
            indexes = self._append_own([(EntryType.NORMAL, p) for p in msg.proposals])
            if msg.src in self._progress:
                self._notices.forwarded(msg.src, indexes[-1])
            self._broadcast_append()
        elif msg.type is MessageType.READ_INDEX:
            if self._transferee:
                self._send(
                    MessageType.READ_INDEX_RESPONSE, msg.src, reject=True, context=msg.context
                )
                return
            self._leader_read(msg.context, msg.src)

    # -- replication: follower side ------------------------------------------------

    def _handle_append(self, msg: Message) -> None:
        log = self._log
        rid = msg.read_id
        if msg.index < log.commit:
            # Everything up to our commit index is already known to match.
            self._send(MessageType.APPEND_RESPONSE, msg.src, match_index=log.commit, read_id=rid)
            return
        if log.maybe_append(msg.index, msg.log_term, msg.entries):
            if msg.entries:
                self._sync_membership(msg.entries)
            last_new = msg.index + len(msg.entries)
            # §5.3 receiver rule 5: commit = min(leaderCommit, index of last new entry).
            log.commit_to(min(msg.commit, last_new))
            self._send(MessageType.APPEND_RESPONSE, msg.src, match_index=last_new, read_id=rid)
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
            read_id=rid,
        )

    def _handle_snapshot(self, msg: Message) -> None:
        """Raft §7 InstallSnapshot receiver rules, after the runtime staged the data."""
        snap = msg.snapshot
        if snap is None:
            return
        log = self._log
        if snap.index <= log.commit:
            self._send(MessageType.APPEND_RESPONSE, msg.src, match_index=log.commit)
            return
        if log.term_at(snap.index) == snap.term:
            # Rule 6: we hold the snapshot's last entry, so (log matching) the
            # whole prefix it covers; keep our log and just commit.
            log.commit_to(snap.index)
        else:
            # Rule 7: discard the whole log; the snapshot replaces it.
            log.restore(snap.index, snap.term)
            self._conf = [(snap.index, snap.term, Membership.of(snap.voters, snap.learners))]
            self._set_membership(self._conf[-1][2])
            self._snapshot = snap
            self._pending_snapshot = snap
            self._applying = max(self._applying, snap.index)
        self._send(MessageType.APPEND_RESPONSE, msg.src, match_index=snap.index)

    # -- membership ---------------------------------------------------------------

    def _membership_at(self, index: int) -> Membership:
        m = self._conf[0][2]
        for i, _, c in self._conf:
            if i > index:
                break
            m = c
        return m

    def _sync_membership(self, entries: Sequence[Entry]) -> None:
        """A follower's log changed: forget CONFIG entries it no longer holds
        (a conflicting suffix was replaced) and take on the new ones."""
        changed = False
        while len(self._conf) > 1 and self._log.term_at(self._conf[-1][0]) != self._conf[-1][1]:
            self._conf.pop()
            changed = True
        for e in entries:
            if (
                e.type is EntryType.CONFIG
                and e.index > self._conf[-1][0]
                and self._log.term_at(e.index) == e.term
            ):
                self._conf.append((e.index, e.term, decode_config(e.data)[0]))
                changed = True
        if changed:
            self._set_membership(self._conf[-1][2])

    def _set_membership(self, m: Membership) -> None:
        self._membership = m
        if self._role is Role.LEADER:
            self._sync_progress()
            if self._transferee and not self._is_voter(self._transferee):
                self._transferee = _NONE

    def _sync_progress(self, nxt: int = 0) -> None:
        """Leader: track every member but us, and nobody else. A new member
        starts at ``nxt`` (default: our last entry, the CONFIG entry that
        added it, so the next broadcast probes it at once)."""
        members = self._membership.members() - {self._id}
        for p in list(self._progress):
            if p not in members:
                del self._progress[p]
                self._notices.forget(p)
        nxt = nxt or max(self._log.last_index, 1)
        for p in sorted(members - self._progress.keys()):
            self._progress[p] = Progress(nxt, self._config.max_inflight_appends)

    def _maybe_promote(self) -> None:
        """Promote a learner whose log is within ``promote_lag_entries`` of ours."""
        lag = self._config.promote_lag_entries
        if lag == 0 or self._role is not Role.LEADER or self._conf_pending() or self._transferee:
            return
        for nid in sorted(self._membership.learners):
            pr = self._progress.get(nid)
            if (
                pr is not None
                and pr.state is ProgressState.REPLICATE
                and pr.match_index + lag >= self._log.last_index
            ):
                with contextlib.suppress(ConfChangeError):
                    self.propose_conf_change(ConfChange(ConfChangeKind.PROMOTE, nid))
                return

    def _maybe_step_down_removed(self) -> bool:
        """Dissertation §4.2.2: a leader that is not in the configuration steps
        down once that configuration is committed. It first hands over to an
        up-to-date voter (TimeoutNow) so nobody waits for an election timeout."""
        if self._is_voter(self._id) or self._conf[-1][0] > self._log.commit:
            return False
        last = self._log.last_index
        for p in sorted(self._membership.voters):
            pr = self._progress.get(p)
            if pr is not None and pr.match_index == last:
                self._send(MessageType.TIMEOUT_NOW, p)
                break
        self._become_follower(self._term, _NONE)
        return True

    # -- linearizable reads ---------------------------------------------------------

    def _leader_read(self, context: bytes, origin: str) -> None:
        commit = self._log.commit
        if self._log.term_at(commit) != self._term:
            # Dissertation §6.4 step 1: until an entry of our term is committed
            # our commit index may lag the previous leader's.
            self._reads_waiting.append((context, origin))
            return
        if self._config.lease_reads and not self._transferee and self._now < self._lease_until:
            self._read_done(PendingRead(commit, context, origin, 0))
            return
        round_ = self._reads.add(commit, context, origin)
        self._round_sent.setdefault(round_, self._now)
        self._reads_confirmed(self._reads.ack(self._id, round_, self._has_quorum))
        if self._reads:
            for p in sorted(self._membership.voters & self._progress.keys()):
                self._send_heartbeat(p, read_id=round_)

    def _reads_confirmed(self, done: list[PendingRead]) -> None:
        """A quorum answered these reads' round. With lease reads that also
        renews the lease (dissertation §6.4.1): every member of that quorum
        heard from us at or after the round was first sent, and rejects votes
        for an election timeout after hearing from us, so no other leader can
        be elected before sent + election_ticks. A margin of a quarter of it
        allows for clocks that run at different rates."""
        for r in done:
            sent = self._round_sent.get(r.round)
            if sent is not None and self._config.lease_reads:
                margin = max(1, self._config.election_ticks // 4)
                self._lease_until = max(self._lease_until, sent + self._config.election_ticks - margin)
            self._read_done(r)
        if done:
            last = done[-1].round
            self._round_sent = {k: v for k, v in self._round_sent.items() if k > last}

    def _read_done(self, r: PendingRead) -> None:
        if r.origin == _NONE:
            self._read_states.append(ReadState(r.index, r.context))
        else:
            self._send(MessageType.READ_INDEX_RESPONSE, r.origin, index=r.index, context=r.context)

    def _release_waiting_reads(self) -> None:
        if self._reads_waiting and self._log.term_at(self._log.commit) == self._term:
            waiting, self._reads_waiting = self._reads_waiting, []
            for context, origin in waiting:
                self._leader_read(context, origin)

    # -- replication: leader side ------------------------------------------------

    def _append_own(self, items: Sequence[tuple[EntryType, bytes]]) -> list[int]:
        first = self._log.last_index + 1
        entries = [
            Entry(self._term, first + i, etype, data) for i, (etype, data) in enumerate(items)
        ]
        self._log.append(entries)
        return [e.index for e in entries]

    def _broadcast_append(self) -> None:
        for p in list(self._progress):
            self._fill_pipeline(p)

    def _fill_pipeline(self, to: str) -> None:
        # Bounded: every send either pauses the follower or moves next_index on.
        while self._send_append(to):
            if self._progress[to].state is ProgressState.PROBE:
                break

    def _send_append(self, to: str, *, send_if_empty: bool = False, read_id: int = 0) -> bool:
        pr = self._progress[to]
        if pr.paused:
            return False
        prev = pr.next_index - 1
        prev_term = self._log.term_at(prev)
        if prev_term is None:
            if prev > self._log.last_index:
                raise LogInvariantError(f"next_index {pr.next_index} of {to} beyond our log")
            if pr.recent_active:
                # Not to a follower we have not heard from lately (down, or
                # cut off): a snapshot may have to be written for it, for
                # nothing. Heartbeats reach it meanwhile, and its first
                # answer makes it active again (etcd's raft does the same).
                self._send_snapshot(to, pr)
            return False
        cfg = self._config
        entries = self._log.slice_limited(
            pr.next_index, cfg.max_entries_per_append, cfg.max_bytes_per_append
        )
        if not entries and not send_if_empty:
            return False
        if (
            entries
            and not send_if_empty
            and cfg.hold_small_appends
            and pr.inflight
            and len(entries) < cfg.max_entries_per_append
            and entries[-1].index >= self._log.last_index
        ):
            return False  # not a full append: it goes when the one in flight is answered
        self._send(
            MessageType.APPEND,
            to,
            log_term=prev_term,
            index=prev,
            entries=tuple(entries),
            commit=self._log.commit,
            read_id=read_id,
        )
        last = entries[-1].index if entries else prev
        pr.commit_sent = max(pr.commit_sent, min(self._log.commit, last))
        pr.sent(last)
        return bool(entries)

    def _send_snapshot(self, to: str, pr: Progress) -> None:
        """Raft §7: the entries ``to`` needs are compacted; send the snapshot
        (the runtime streams its data and reports with ``snapshot_status``)."""
        snap = self._snapshot
        if snap is None:
            raise LogInvariantError(f"{to} needs compacted entries but no snapshot is known")
        self._send(MessageType.SNAPSHOT, to, snapshot=snap)
        pr.become_snapshot(snap.index)

    def _send_heartbeat(self, to: str, *, read_id: int = 0) -> None:
        pr = self._progress[to]
        if pr.state is ProgressState.PROBE:
            # The heartbeat doubles as the probe, retried once per heartbeat.
            pr.probe_sent = False
            if self._send_append(to, send_if_empty=True, read_id=read_id):
                return
            if pr.state is ProgressState.PROBE and self._log.term_at(pr.next_index - 1) is not None:
                return
        # Anchored at the known match, so it always succeeds and carries a commit
        # index the follower is sure to hold. Below our snapshot the match's
        # term is unknown: an empty heartbeat that only resets the timer.
        match = pr.match_index
        term = self._log.term_at(match)
        if term is None:
            match, term = 0, 0
        pr.commit_sent = max(pr.commit_sent, min(self._log.commit, match))
        self._send(
            MessageType.APPEND,
            to,
            log_term=term,
            index=match,
            commit=min(self._log.commit, match),
            read_id=read_id,
        )

    def _handle_append_response(self, msg: Message) -> None:
        pr = self._progress.get(msg.src)
        if pr is None:
            return
        pr.recent_active = True
        if msg.read_id and self._is_voter(msg.src):
            self._reads_confirmed(self._reads.ack(msg.src, msg.read_id, self._has_quorum))
        if msg.reject:
            self._handle_reject(msg, pr)
            return
        if pr.maybe_update(msg.match_index):
            if pr.state is ProgressState.PROBE or (
                pr.state is ProgressState.SNAPSHOT and pr.match_index >= pr.pending_snapshot
            ):
                pr.become_replicate()
            if self._maybe_commit():
                self._on_commit_advanced()
                if self._role is not Role.LEADER:
                    return
            self._fill_pipeline(msg.src)
            self._maybe_send_commit(msg.src, pr)
            if msg.src == self._transferee and pr.match_index == self._log.last_index:
                self._send(MessageType.TIMEOUT_NOW, msg.src)
            if msg.src in self._membership.learners:
                self._maybe_promote()
            return
        # A stale, duplicated or heartbeat answer that acknowledges nothing new.
        if pr.state is not ProgressState.REPLICATE or pr.match_index >= self._log.last_index:
            return  # a lost probe is retried by the next heartbeat
        if not pr.loss_check:
            # At most once per heartbeat interval: while appends are in flight
            # (a follower's fsync), every unproductive answer would otherwise
            # beget an empty append, whose answer begets another, and so on.
            return
        pr.loss_check = False
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
        if self._maybe_step_down_removed():
            return
        self._release_waiting_reads()
        self._maybe_promote()

    def _maybe_send_commit(self, to: str, pr: Progress) -> None:
        """Tell ``to`` the commit index now, at the next tick, or with its
        next append (``commit_notice.py``)."""
        if self._notices.at_commit(to, pr, self._log.commit, self._log.last_index):
            self._send_heartbeat(to)

    def _tell_commit_due(self) -> None:
        for to in self._notices.take_due():
            pr = self._progress.get(to)
            if pr is not None and owes_commit(pr, self._log.commit):
                self._send_heartbeat(to)

    def _handle_reject(self, msg: Message, pr: Progress) -> None:
        if pr.state is ProgressState.SNAPSHOT:
            return  # an answer to a heartbeat or an older append; wait for the snapshot
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
        # Only voters count; a leader being removed does not count itself
        # (dissertation §4.2.2).
        voters = self._membership.voters
        matches = [pr.match_index for p, pr in self._progress.items() if p in voters]
        if self._id in voters:
            matches.append(self._log.stable_index)
        if not matches:
            return False
        n = committed_index(matches)
        # §5.4.2: only entries of the current term are committed by counting.
        if n > self._log.commit and self._log.term_at(n) == self._term:
            return self._log.commit_to(n)
        return False

    # -- output -------------------------------------------------------------------

    def _send(self, mtype: MessageType, to: str, *, term: int | None = None, **fields: Any) -> None:
        t = self._term if term is None else term
        self._msgs.append(Message(mtype, self._id, to, t, **fields))
