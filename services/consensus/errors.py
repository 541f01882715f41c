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


class ShuttingDown(ConsensusError):
    code = "SHUTTING_DOWN"
    status = grpc.StatusCode.UNAVAILABLE
