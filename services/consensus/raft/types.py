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


@dataclass(frozen=True, slots=True)
class RaftConfig:
    node_id: str
    peers: tuple[str, ...]  # every voter, including node_id
    election_ticks: int = 10  # the election timeout is random in [election_ticks, 2*election_ticks)
    heartbeat_ticks: int = 1
    pre_vote: bool = True
    check_quorum: bool = True
    max_entries_per_append: int = 512
    max_bytes_per_append: int = 2 * 1024 * 1024
    max_inflight_appends: int = 64  # pipelining window, per follower

    def validate(self) -> None:
        if self.node_id not in self.peers:
            raise ValueError(f"node_id {self.node_id!r} is not in peers")
        if self.heartbeat_ticks < 1:
            raise ValueError("heartbeat_ticks must be >= 1")
        if self.election_ticks <= self.heartbeat_ticks:
            raise ValueError("election_ticks must be greater than heartbeat_ticks")
        if self.max_inflight_appends < 1:
            raise ValueError("max_inflight_appends must be >= 1")


class ProposalDropped(Exception):
    """A proposal cannot be taken now: no leader is known (retry later)."""


@dataclass(frozen=True, slots=True)
class Status:
    node_id: str
    role: Role
    term: int
    leader_id: str  # "" when unknown
    commit_index: int
    last_index: int
