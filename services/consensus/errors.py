"""The consensus service's errors: one base, meaningful subclasses, each
with a stable code. The table that maps them to gRPC statuses is at the
protobuf edge (``convert.ERRORS``); nothing here imports gRPC."""

from __future__ import annotations

from fleetsuit.errors import ServiceError


class ConsensusError(ServiceError):
    """Base of every error the consensus service raises on purpose."""

    code = "CONSENSUS_ERROR"


class StorageError(ConsensusError):
    """The data directory cannot be used; the node must stop, nothing is written."""

    code = "STORAGE_ERROR"


class StorageFull(StorageError):
    code = "STORAGE_FULL"


class StorageCorrupt(StorageError):
    code = "STORAGE_CORRUPT"


class WrongDataDirectory(StorageError):
    """The directory belongs to another node or cluster."""

    code = "WRONG_DATA_DIRECTORY"


class NoLeader(ConsensusError):
    code = "NO_LEADER"


class CommitTimeout(ConsensusError):
    code = "COMMIT_TIMEOUT"


class InvalidEntry(ConsensusError):
    code = "INVALID_ENTRY"


class BlockNotFound(ConsensusError):
    code = "BLOCK_NOT_FOUND"


class Overloaded(ConsensusError):
    """Too many submissions are waiting for commit on this node; retry later."""

    code = "OVERLOADED"


class ShuttingDown(ConsensusError):
    code = "SHUTTING_DOWN"


class SnapshotRejected(ConsensusError):
    """A snapshot chunk or a received snapshot that is refused (bad offset,
    size, format or checksum); the sender starts over."""

    code = "SNAPSHOT_REJECTED"


class NotLeader(ConsensusError):
    """Only the leader takes this request."""

    code = "NOT_LEADER"

    def __init__(self, message: str, leader_hint: str = "") -> None:
        super().__init__(message)
        self.leader_hint = leader_hint


class MembershipRefused(ConsensusError):
    """A membership change that does not apply, or one while another is pending."""

    code = "MEMBERSHIP_REFUSED"


class ReadTimeout(ConsensusError):
    code = "READ_TIMEOUT"


class ChangePending(ConsensusError):
    """Another membership change (or the leader's first commit) is pending; retry."""

    code = "CHANGE_PENDING"


class WrongCluster(ConsensusError):
    """A peer that names another cluster."""

    code = "WRONG_CLUSTER"


class BadPeerMessage(ConsensusError):
    """A peer message that cannot be read or is not what the call carries."""

    code = "BAD_MESSAGE"


class NoSnapshots(ConsensusError):
    """A snapshot sent to a node that keeps none."""

    code = "NO_SNAPSHOTS"
