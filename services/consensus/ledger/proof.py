"""Offline check of an ``EntryProof``: one ledger entry, the Merkle path to
its block's entries root, the block header and the block's quorum
certificate. What a device or an auditor runs with only the anchors: no
node, no network. Bounded: a proof over ``MAX_PROOF_BYTES`` is refused
before it is parsed.
"""

from __future__ import annotations

from google.protobuf.message import DecodeError

from fleetsuit.v1 import consensus_pb2 as pb

from .block import header_hash, root_from_path
from .certify import Anchors, quorum, valid_signers

MAX_PROOF_BYTES = 4 * 1024 * 1024
MAX_PATH = 64


class ProofError(ValueError):
    """The proof does not show that the entry is in a certified block."""


def verify_entry_proof(raw: bytes, anchors: Anchors) -> pb.LedgerEntry:
    """Return the proven ledger entry, or raise ProofError saying why not."""
    if len(raw) > MAX_PROOF_BYTES:
        raise ProofError(f"proof of {len(raw)} bytes exceeds {MAX_PROOF_BYTES}")
    try:
        proof = pb.EntryProof.FromString(raw)
    except DecodeError:
        raise ProofError("not an entry proof") from None
    if proof.cluster_id != anchors.cluster_id:
        raise ProofError(f"proof is for cluster {proof.cluster_id!r}, anchors for {anchors.cluster_id!r}")
    if len(proof.path) > MAX_PATH or len(proof.prev_hash) != 32:
        raise ProofError("malformed proof")
    root = root_from_path(proof.entry, [(s.sibling_is_left, s.hash) for s in proof.path])
    recomputed = header_hash(
        proof.height, proof.prev_hash, proof.first_index, proof.last_index, proof.term,
        proof.entry_count, root,
    )
    if recomputed != proof.block_hash:
        raise ProofError(f"the entry and its path do not lead to the hash of block {proof.height}")
    signers = valid_signers(
        anchors, proof.height, proof.block_hash, [(c.node_id, c.signature) for c in proof.certificate]
    )
    need = quorum(len(anchors.keys))
    if len(signers) != len(proof.certificate):
        raise ProofError(f"the certificate of block {proof.height} holds signatures that do not verify")
    if len(signers) < need:
        raise ProofError(
            f"block {proof.height} has {len(signers)} valid signature(s); a majority of "
            f"{len(anchors.keys)} needs {need}"
        )
    try:
        entry: pb.LedgerEntry = pb.LedgerEntry.FromString(proof.entry)
        return entry
    except DecodeError:
        raise ProofError("the proven entry is not a ledger entry") from None
