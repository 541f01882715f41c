"""Data types of the Raft core and the contract between the core and its
runtime.

The runtime drives the core like this (etcd-io/raft's Ready/Advance):

    node.tick() / node.step(msg) / node.propose(payloads)
    if node.has_ready():
        rd = node.ready()
        storage.append(rd.entries); storage.set_hard_state(rd.hard_state); sync  # 1. persist
        transport.send(rd.messages)                                             # 2. send
        application.apply(rd.committed)                                         # 3. apply
        node.advance(rd)                                                        # 4. advance

Persisting before sending is what makes a vote or an append acknowledgement
safe (Raft §5.1, Figure 2 "respond to RPCs only after updating stable storage").

Snapshots (Raft §7). The core never holds snapshot data; the runtime does:

- Compaction: the runtime writes a snapshot of its state machine at an applied
  index together with ``meta = node.snapshot_meta(index)``, then calls
  ``node.compact(index)``; the core forgets the entries up to ``index`` (it
  keeps their last term) and the runtime may delete them from its log.
- Sending (leader): a follower whose next entry was compacted gets a
  ``MessageType.SNAPSHOT`` message carrying ``snapshot`` (the meta of the
  leader's latest compaction) and no data. The runtime streams that snapshot
  to the peer as copies of the message with ``offset``/``data``/``done`` set
  (``done`` on the last chunk only), then calls
  ``node.snapshot_status(peer, ok)`` exactly once per SNAPSHOT message
  (``ok=False`` when the stream failed; the core retries later). Until then
  the core sends that follower nothing but heartbeats.
- Receiving (follower): the runtime stages the chunks and steps only the
  final message (``done=True``, all chunks present) into the core; the core
  ignores SNAPSHOT messages with ``done=False``. If it accepts the snapshot it
  hands it back in ``Ready.snapshot``: the runtime installs it (replaces its
  state machine and its whole stored log with it) before persisting
  ``Ready.entries``; no committed entry at or below ``snapshot.index`` is
  handed out afterwards.
- Restart: ``RaftNode(config, rng, hard_state, log, applied=..., snapshot=meta)``
  with ``log`` holding the entries after ``meta.index`` (older ones are
  ignored) and ``applied >= meta.index``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import NewType

NodeId = NewType("NodeId", str)
Term = NewType("Term", int)
Index = NewType("Index", int)


class Role(enum.Enum):
    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre_candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


class EntryType(enum.IntEnum):
    NORMAL = 0  # an application payload
    NOOP = 1  # a new leader's empty entry, commits the previous terms' entries (§5.4.2, §8)
    CONFIG = 2  # a membership change


@dataclass(frozen=True, slots=True)
class Entry:
    term: int
    index: int
    type: EntryType = EntryType.NORMAL
    data: bytes = b""


@dataclass(frozen=True, slots=True)
class HardState:
    """What must be durable before any message that depends on it is sent."""

    term: int = 0
    vote: str = ""  # "" = voted for nobody this term
    commit: int = 0


class MessageType(enum.IntEnum):
    VOTE = 1
    VOTE_RESPONSE = 2
    APPEND = 3
    APPEND_RESPONSE = 4
    PROPOSE = 5  # a follower forwards client payloads to the leader
    TIMEOUT_NOW = 6  # leadership transfer
    SNAPSHOT = 7  # InstallSnapshot (Raft §7), chunked by the runtime
    READ_INDEX = 8  # a follower forwards a read-index request to the leader
    READ_INDEX_RESPONSE = 9  # the leader answers it once leadership is confirmed


@dataclass(frozen=True, slots=True)
class SnapshotMeta:
    """Where a snapshot ends: the last index and term it covers and the
    membership in effect at that index (the latest CONFIG entry at or below
    it, or the bootstrap membership)."""

    index: int
    term: int
    voters: tuple[str, ...]
    learners: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ReadState:
    """Dissertation §6.4: a read with ``context`` is linearizable once the
    local state machine has applied ``index``."""

    index: int
    context: bytes


@dataclass(frozen=True, slots=True)
class Message:
    """One Raft message; field meaning depends on ``type``:

    VOTE:            log_term/index = candidate's last log term/index; pre_vote;
                     force (a leadership transfer: voters ignore their leader
                     lease, §3.10 of the dissertation).
    VOTE_RESPONSE:   reject; pre_vote.
    APPEND:          log_term/index = prev log term/index; entries; commit.
                     A heartbeat is an APPEND without entries.
    APPEND_RESPONSE: reject; match_index (on success); index = the prev index
                     that was rejected, conflict_term / conflict_index (on
                     reject, the fast-backtracking hint, §5.3).
    PROPOSE:         proposals (payloads to append as NORMAL entries).
    TIMEOUT_NOW:     no fields: the receiver campaigns at once.
    SNAPSHOT:        snapshot (meta); offset/data/done: one chunk of the
                     snapshot data, filled by the runtime (see the module
                     docstring). Answered with an APPEND_RESPONSE whose
                     match_index is snapshot.index.
    READ_INDEX:      context (the read request's id, opaque to the core).
    READ_INDEX_RESPONSE: context; index = the read index; reject when the
                     leader could not serve it (the follower's runtime retries).

    read_id: on a heartbeat (APPEND), the leader's read-index round; echoed in
    the APPEND_RESPONSE so the leader can count leadership confirmations.
    """

    type: MessageType
    src: str
    dst: str
    term: int
    log_term: int = 0
    index: int = 0
    entries: tuple[Entry, ...] = ()
    commit: int = 0
    reject: bool = False
    pre_vote: bool = False
    conflict_term: int = 0
    conflict_index: int = 0
    match_index: int = 0
    proposals: tuple[bytes, ...] = ()
    force: bool = False
    snapshot: SnapshotMeta | None = None
    offset: int = 0  # SNAPSHOT chunk: byte offset of ``data`` in the snapshot
    data: bytes = b""  # SNAPSHOT chunk
    done: bool = True  # SNAPSHOT chunk: the last one
    context: bytes = b""
    read_id: int = 0


@dataclass(slots=True)
class Ready:
    """The core's output; the runtime must handle it in field order."""

    # 1. Persist: hard_state (None = unchanged) and entries. If entries[0].index
    #    is at or below the stored last index, the stored log is first
    #    truncated from entries[0].index on (a follower overwriting a conflict).
    hard_state: HardState | None = None
    entries: list[Entry] = field(default_factory=list)
    # 2. Send, only after step 1 is durable.
    messages: list[Message] = field(default_factory=list)
    # 3. Apply, in order. Every one is committed (and durable on a quorum).
    committed: list[Entry] = field(default_factory=list)
    # 1a. Install before anything else in step 1 (a snapshot received from the
    #     leader): replace the state machine and the whole stored log with it.
    snapshot: SnapshotMeta | None = None
    # 4. Reads confirmed linearizable: answer each once applied >= its index.
    read_states: list[ReadState] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class RaftConfig:
    node_id: str
    # The bootstrap membership, in effect until a snapshot or CONFIG entry
    # says otherwise. A node joining a running cluster starts with
    # peers = the current voters and learners = (node_id,): a learner never
    # campaigns, so its bootstrap view does no harm.
    peers: tuple[str, ...]  # every voter
    election_ticks: int = 10  # the election timeout is random in [election_ticks, 2*election_ticks)
    heartbeat_ticks: int = 1
    pre_vote: bool = True
    check_quorum: bool = True
    max_entries_per_append: int = 512
    max_bytes_per_append: int = 2 * 1024 * 1024
    max_inflight_appends: int = 64  # pipelining window, per follower
    # Nagle's rule for appends: while an append is in flight to a follower,
    # entries that would not fill a whole append wait for its answer and then
    # go together. Full appends (a catch-up, a burst) still fill the window.
    # Under load this cuts messages and the follower's syncs per entry.
    hold_small_appends: bool = True
    learners: tuple[str, ...] = ()  # bootstrap non-voting members
    # A learner is promoted to voter by the leader once its log is within this
    # many entries of the leader's (0 disables automatic promotion).
    promote_lag_entries: int = 16
    # Dissertation §6.4.1: answer reads from the leader lease, without a
    # heartbeat round. Relies on bounded clock drift; needs check_quorum.
    lease_reads: bool = False

    def validate(self) -> None:
        if self.node_id not in self.peers and self.node_id not in self.learners:
            raise ValueError(f"node_id {self.node_id!r} is in neither peers nor learners")
        if not self.peers:
            raise ValueError("peers must name at least one voter")
        if set(self.peers) & set(self.learners):
            raise ValueError("a node cannot be both in peers and in learners")
        if self.promote_lag_entries < 0:
            raise ValueError("promote_lag_entries must be >= 0")
        if self.lease_reads and not self.check_quorum:
            raise ValueError("lease_reads needs check_quorum")
        if self.heartbeat_ticks < 1:
            raise ValueError("heartbeat_ticks must be >= 1")
        if self.election_ticks <= self.heartbeat_ticks:
            raise ValueError("election_ticks must be greater than heartbeat_ticks")
        if self.max_inflight_appends < 1:
            raise ValueError("max_inflight_appends must be >= 1")


class ProposalDropped(Exception):
    """A proposal cannot be taken now: no leader is known (retry later)."""


class NotLeader(ProposalDropped):
    """Only the leader takes this request; ``leader_hint`` is "" when unknown."""

    def __init__(self, leader_hint: str) -> None:
        super().__init__(f"not the leader (leader: {leader_hint or 'unknown'})")
        self.leader_hint = leader_hint


@dataclass(frozen=True, slots=True)
class Status:
    node_id: str
    role: Role
    term: int
    leader_id: str  # "" when unknown
    commit_index: int
    last_index: int
    voters: tuple[str, ...] = ()  # the membership in effect (latest CONFIG entry in the log)
    learners: tuple[str, ...] = ()
    applied_index: int = 0
    snapshot_index: int = 0  # the log starts after this index
    pending_conf_index: int = 0  # leader: a membership change not yet committed (0: none)
