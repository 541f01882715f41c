"""Translation between the consensus service's domain types and protobuf
(STYLE: protobuf at the edges only)."""

from __future__ import annotations

import grpc

from fleetsuit.rpc import ErrorTable
from fleetsuit.v1 import consensus_pb2 as pb

from . import errors
from .ledger.codec import block_from_pb, block_to_pb, signature_from_pb, signature_to_pb
from .raft.types import Entry, EntryType, Message, MessageType, SnapshotMeta

# Every consensus error and its gRPC status (fleetsuit.rpc looks errors up
# along their MRO: StorageError and its subclasses not listed map as
# ConsensusError does).
ERRORS: ErrorTable = {
    errors.ConsensusError: grpc.StatusCode.INTERNAL,
    errors.StorageFull: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.StorageCorrupt: grpc.StatusCode.DATA_LOSS,
    errors.WrongDataDirectory: grpc.StatusCode.FAILED_PRECONDITION,
    errors.NoLeader: grpc.StatusCode.UNAVAILABLE,
    errors.OutcomeUnknown: grpc.StatusCode.UNAVAILABLE,
    errors.IdempotencyKeyReused: grpc.StatusCode.ALREADY_EXISTS,
    errors.CheckUnavailable: grpc.StatusCode.UNAVAILABLE,
    errors.ReleaseNotFound: grpc.StatusCode.NOT_FOUND,
    errors.DeviceNotFound: grpc.StatusCode.NOT_FOUND,
    errors.ReleaseRefused: grpc.StatusCode.FAILED_PRECONDITION,
    errors.InvalidEntry: grpc.StatusCode.INVALID_ARGUMENT,
    errors.BlockNotFound: grpc.StatusCode.NOT_FOUND,
    errors.Overloaded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.ShuttingDown: grpc.StatusCode.UNAVAILABLE,
    errors.SnapshotRejected: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotLeader: grpc.StatusCode.FAILED_PRECONDITION,
    errors.MembershipRefused: grpc.StatusCode.FAILED_PRECONDITION,
    errors.ReadTimeout: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.ChangePending: grpc.StatusCode.UNAVAILABLE,
    errors.WrongCluster: grpc.StatusCode.PERMISSION_DENIED,
    errors.BadPeerMessage: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NoSnapshots: grpc.StatusCode.FAILED_PRECONDITION,
}


def entry_to_pb(entry: Entry) -> pb.RaftEntry:
    return pb.RaftEntry(term=entry.term, index=entry.index, type=int(entry.type), data=entry.data)  # type: ignore[arg-type]


def entry_from_pb(msg: pb.RaftEntry) -> Entry:
    return Entry(term=msg.term, index=msg.index, type=EntryType(msg.type), data=msg.data)


def snapshot_meta_to_pb(meta: SnapshotMeta) -> pb.SnapshotMeta:
    return pb.SnapshotMeta(
        index=meta.index, term=meta.term, voters=list(meta.voters), learners=list(meta.learners)
    )


def snapshot_meta_from_pb(msg: pb.SnapshotMeta) -> SnapshotMeta:
    return SnapshotMeta(msg.index, msg.term, tuple(msg.voters), tuple(msg.learners))


def message_to_pb(msg: Message) -> pb.RaftMessage:
    out = pb.RaftMessage(
        type=int(msg.type),  # type: ignore[arg-type]
        src=msg.src,
        dst=msg.dst,
        term=msg.term,
        log_term=msg.log_term,
        index=msg.index,
        commit=msg.commit,
        reject=msg.reject,
        pre_vote=msg.pre_vote,
        conflict_term=msg.conflict_term,
        conflict_index=msg.conflict_index,
        match_index=msg.match_index,
        proposals=list(msg.proposals),
        force=msg.force,
        context=msg.context,
        read_id=msg.read_id,
    )
    if msg.entries:
        out.entries.extend(entry_to_pb(e) for e in msg.entries)
    if msg.snapshot is not None:
        out.snapshot.CopyFrom(snapshot_meta_to_pb(msg.snapshot))
        out.offset = msg.offset
        out.data = msg.data
        out.last = msg.done
    return out


def message_from_pb(msg: pb.RaftMessage) -> Message:
    """Raises ValueError on an unknown message or entry type."""
    snapshot = snapshot_meta_from_pb(msg.snapshot) if msg.HasField("snapshot") else None
    return Message(
        type=MessageType(msg.type),
        src=msg.src,
        dst=msg.dst,
        term=msg.term,
        log_term=msg.log_term,
        index=msg.index,
        entries=tuple(entry_from_pb(e) for e in msg.entries),
        commit=msg.commit,
        reject=msg.reject,
        pre_vote=msg.pre_vote,
        conflict_term=msg.conflict_term,
        conflict_index=msg.conflict_index,
        match_index=msg.match_index,
        proposals=tuple(msg.proposals),
        force=msg.force,
        snapshot=snapshot,
        offset=msg.offset,
        data=msg.data,
        # proto3 bools default to false; only a snapshot chunk can be "not last".
        done=msg.last if snapshot is not None else True,
        context=msg.context,
        read_id=msg.read_id,
    )


__all__ = ["ERRORS", "block_from_pb", "block_to_pb", "signature_from_pb", "signature_to_pb"]
