"""The one codec edge of the ledger: its typed values (``BlockData``,
``BlockSignature``, ``EntryView``, ``MemberKey``, ``RequestKey``) to and
from their protobuf encodings, which are also how blocks are stored, how a
Raft entry carries a batch of ledger entries, and how a ledger entry is
written (``LedgerEntry``, the ledger's public wire format). The ledger
machine, certification and the runtime work on the typed values only;
besides this module, only ``export.py`` and ``proof.py`` (file formats
read offline) parse protobuf."""

from __future__ import annotations

from collections.abc import Sequence

from google.protobuf.message import DecodeError

from fleetsuit.v1 import consensus_pb2 as pb

from .block import BlockData
from .entries import BlockSignature, EntryView, MemberKey
from .keys import RequestKey


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


def block_to_bytes(block: BlockData) -> bytes:
    """A block as stored (an encoded ``pb.Block``, no certificate)."""
    raw: bytes = block_to_pb(block).SerializeToString()
    return raw


def block_from_bytes(raw: bytes) -> BlockData:
    return block_from_pb(pb.Block.FromString(raw))


def signature_to_pb(s: BlockSignature) -> pb.SignedBlock:
    return pb.SignedBlock(height=s.height, hash=s.hash, node_id=s.node_id, signature=s.signature)


def signature_from_pb(msg: pb.SignedBlock) -> BlockSignature:
    return BlockSignature(msg.height, msg.hash, msg.node_id, msg.signature)


def encode_batch(payloads: Sequence[bytes]) -> bytes:
    """The data of one Raft entry: a batch of encoded ledger entries."""
    raw: bytes = pb.EntryBatch(entries=list(payloads)).SerializeToString()
    return raw


def decode_batch(data: bytes) -> list[bytes]:
    try:
        return list(pb.EntryBatch.FromString(data).entries)
    except DecodeError:
        return []


def decode_entry(payload: bytes) -> EntryView | None:
    """What the ledger needs of one encoded ledger entry, from one parse
    (None: the bytes are not a ledger entry)."""
    try:
        entry = pb.LedgerEntry.FromString(payload)
    except DecodeError:
        return None
    key = RequestKey(entry.client_id, entry.request_id) if entry.client_id else None
    kind = entry.WhichOneof("kind")
    if kind != "membership_changed":
        return EntryView(key, kind)
    members = tuple(
        MemberKey(m.node_id, m.public_key, m.key_proof) for m in entry.membership_changed.members
    )
    return EntryView(key, kind, members)


def encode_key_registration(key: RequestKey, member: MemberKey) -> bytes:
    """The ledger entry by which a node records its block-signing key."""
    entry = pb.LedgerEntry(
        client_id=key.client_id, request_id=key.request_id,
        membership_changed=pb.MembershipChanged(members=[pb.Member(
            node_id=member.node_id, public_key=member.public_key, key_proof=member.key_proof, voter=True,
        )]),
    )
    raw: bytes = entry.SerializeToString()
    return raw
