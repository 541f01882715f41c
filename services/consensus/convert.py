"""Translation between the consensus service's domain types and protobuf
(STYLE: protobuf at the edges only)."""

from __future__ import annotations

from fleetsuit.v1 import consensus_pb2 as pb

from .ledger.block import BlockData
from .raft.types import Entry, EntryType, Message, MessageType, SnapshotMeta


def entry_to_pb(entry: Entry) -> pb.RaftEntry:
    return pb.RaftEntry(term=entry.term, index=entry.index, type=int(entry.type), data=entry.data)


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
        type=int(msg.type),
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


def block_to_pb(block: BlockData) -> pb.Block:
    return pb.Block(
        height=block.height,
        prev_hash=block.prev_hash,
        first_index=block.first_index,
        last_index=block.last_index,
        entries=list(block.entries),
        hash=block.hash,
        term=block.term,
        certificate=[pb.BlockSignature(node_id=n, signature=sig) for n, sig in block.certificate],
    )


def block_from_pb(msg: pb.Block) -> BlockData:
    return BlockData(
        height=msg.height,
        prev_hash=msg.prev_hash,
        first_index=msg.first_index,
        last_index=msg.last_index,
        term=msg.term,
        entries=tuple(msg.entries),
        hash=msg.hash,
        certificate=tuple((c.node_id, c.signature) for c in msg.certificate),
    )
