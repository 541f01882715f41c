"""The consensus service's errors: one base, meaningful subclasses, and the
table that maps them to gRPC status codes (STYLE: Errors)."""

from __future__ import annotations

import grpc


class ConsensusError(Exception):
    """Base of every error the consensus service raises on purpose."""

    code = "CONSENSUS_ERROR"
    status = grpc.StatusCode.INTERNAL


class StorageError(ConsensusError):
    """The data directory cannot be used; the node must stop, nothing is written."""

    code = "STORAGE_ERROR"


class StorageFull(StorageError):
    code = "STORAGE_FULL"
    status = grpc.StatusCode.RESOURCE_EXHAUSTED


class StorageCorrupt(StorageError):
    code = "STORAGE_CORRUPT"
    status = grpc.StatusCode.DATA_LOSS


class WrongDataDirectory(StorageError):
    """The directory belongs to another node or cluster."""

    code = "WRONG_DATA_DIRECTORY"
    status = grpc.StatusCode.FAILED_PRECONDITION


class NoLeader(ConsensusError):
    code = "NO_LEADER"
    status = grpc.StatusCode.UNAVAILABLE


class CommitTimeout(ConsensusError):
    code = "COMMIT_TIMEOUT"
    status = grpc.StatusCode.DEADLINE_EXCEEDED


class InvalidEntry(ConsensusError):
    code = "INVALID_ENTRY"
    status = grpc.StatusCode.INVALID_ARGUMENT


class BlockNotFound(ConsensusError):
    code = "BLOCK_NOT_FOUND"
    status = grpc.StatusCode.NOT_FOUND


class Overloaded(ConsensusError):
    """Too many submissions are waiting for commit on this node; retry later."""

    code = "OVERLOADED"
    status = grpc.StatusCode.RESOURCE_EXHAUSTED


class ShuttingDown(ConsensusError):
    code = "SHUTTING_DOWN"
    status = grpc.StatusCode.UNAVAILABLE


class SnapshotRejected(ConsensusError):
    """A snapshot chunk or a received snapshot that is refused (bad offset,
    size, format or checksum); the sender starts over."""

    code = "SNAPSHOT_REJECTED"
    status = grpc.StatusCode.INVALID_ARGUMENT


class NotLeader(ConsensusError):
    """Only the leader takes this request."""

    code = "NOT_LEADER"
    status = grpc.StatusCode.FAILED_PRECONDITION

    def __init__(self, message: str, leader_hint: str = "") -> None:
        super().__init__(message)
        self.leader_hint = leader_hint


class MembershipRefused(ConsensusError):
    """A membership change that does not apply, or one while another is pending."""

    code = "MEMBERSHIP_REFUSED"
    status = grpc.StatusCode.FAILED_PRECONDITION


class ReadTimeout(ConsensusError):
    code = "READ_TIMEOUT"
    status = grpc.StatusCode.DEADLINE_EXCEEDED


class ChangePending(ConsensusError):
    """Another membership change (or the leader's first commit) is pending; retry."""

    code = "CHANGE_PENDING"
    status = grpc.StatusCode.UNAVAILABLE
