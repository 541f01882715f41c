"""Translation between the consensus service's domain types and protobuf
(STYLE: protobuf at the edges only)."""

from __future__ import annotations

from fleetsuit.v1 import consensus_pb2 as pb

from .ledger.block import BlockData
from .raft.types import Entry, EntryType, Message, MessageType


def entry_to_pb(entry: Entry) -> pb.RaftEntry:
    return pb.RaftEntry(term=entry.term, index=entry.index, type=int(entry.type), data=entry.data)


def entry_from_pb(msg: pb.RaftEntry) -> Entry:
    return Entry(term=msg.term, index=msg.index, type=EntryType(msg.type), data=msg.data)


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
    )
    if msg.entries:
        out.entries.extend(entry_to_pb(e) for e in msg.entries)
    if getattr(msg, "force", False):
        out.force = True
    return out


def message_from_pb(msg: pb.RaftMessage) -> Message:
    """Raises ValueError on an unknown message or entry type."""
    kwargs = {}
    if msg.force:
        kwargs["force"] = True
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
        **kwargs,
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
