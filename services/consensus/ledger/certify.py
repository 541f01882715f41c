"""Quorum certificates over blocks: pure functions shared by the nodes, the
exporter and the offline verifier.

Every node signs the hash of each block it applies with its Ed25519 node key;
a block whose signatures come from a majority of the voters is *certified*.
Anyone holding the cluster's anchors (its id and the members' public keys)
can then check, offline, that a majority of the cluster — not merely one
node — committed the block. What is signed (all integers big-endian):

    block:   b"fleetsuit/block-signature/v1" | cluster_id | 0x00 | u64 height | block hash
    key:     b"fleetsuit/member-key/v1" | cluster_id | 0x00 | node_id | 0x00 | public key

The second is a node's proof of possession when it records its key in the
ledger (a ``MembershipChanged`` entry).
"""

from __future__ import annotations

import functools
import json
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .block import BlockData, ChainError
from .codec import decode_entry

BLOCK_DOMAIN = b"fleetsuit/block-signature/v1"
KEY_DOMAIN = b"fleetsuit/member-key/v1"


def block_message(cluster_id: str, height: int, block_hash: bytes) -> bytes:
    return BLOCK_DOMAIN + cluster_id.encode() + b"\x00" + struct.pack(">Q", height) + block_hash


def key_message(cluster_id: str, node_id: str, public_key: bytes) -> bytes:
    return KEY_DOMAIN + cluster_id.encode() + b"\x00" + node_id.encode() + b"\x00" + public_key


@functools.lru_cache(maxsize=256)
def _public_key(raw: bytes) -> Ed25519PublicKey:
    """Loaded once per key: a cluster verifies many blocks with few keys."""
    return Ed25519PublicKey.from_public_bytes(raw)


def verify(public_key: bytes, message: bytes, signature: bytes) -> bool:
    try:
        _public_key(bytes(public_key)).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


def quorum(voters: int) -> int:
    return voters // 2 + 1


@dataclass(frozen=True)
class Anchors:
    """The trust anchors of a cluster: its id and every voter's public key."""

    cluster_id: str
    keys: Mapping[str, bytes]  # node id -> raw Ed25519 public key

    def to_json(self) -> str:
        return json.dumps(
            {
                "cluster_id": self.cluster_id,
                "members": [{"id": nid, "public_key": key.hex()} for nid, key in sorted(self.keys.items())],
            },
            indent=2,
        )

    @classmethod
    def from_json(cls, text: str) -> Anchors:
        try:
            doc = json.loads(text)
            keys = {m["id"]: bytes.fromhex(m["public_key"]) for m in doc["members"]}
            return cls(cluster_id=str(doc["cluster_id"]), keys=keys)
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"not an anchors file: {exc}") from None


def valid_signers(
    anchors: Anchors, height: int, block_hash: bytes, certificate: Iterable[tuple[str, bytes]]
) -> set[str]:
    """The distinct voters whose signature in ``certificate`` verifies."""
    message = block_message(anchors.cluster_id, height, block_hash)
    signers: set[str] = set()
    for node_id, signature in certificate:
        key = anchors.keys.get(node_id)
        if key is not None and node_id not in signers and verify(key, message, signature):
            signers.add(node_id)
    return signers


class NodeKey:
    """A node's block-signing key, kept as PKCS#8 PEM (mode 0600) in its data directory."""

    def __init__(self, private: Ed25519PrivateKey) -> None:
        self._private = private
        self.public = private.public_key().public_bytes_raw()

    @classmethod
    def load_or_create(cls, path: Path) -> NodeKey:
        from cryptography.hazmat.primitives import serialization

        if path.exists():
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
            if not isinstance(key, Ed25519PrivateKey):
                raise ValueError(f"{path} is not an Ed25519 private key")
            return cls(key)
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(pem)
        tmp.chmod(0o600)
        tmp.replace(path)
        return cls(key)

    def sign(self, message: bytes) -> bytes:
        return self._private.sign(message)


def verify_certified_chain(blocks: Iterable[BlockData], anchors: Anchors) -> int:
    """Every block must carry valid signatures of a majority of the anchors'
    voters, every signature it carries must verify, and no block may record a
    member key other than the anchors'.
    Returns the number of blocks; raises ChainError naming the first bad block.
    (Hash links are checked by ``block.verify_chain``.)"""
    need = quorum(len(anchors.keys))
    count = 0
    for block in blocks:
        count += 1
        signers = valid_signers(anchors, block.height, block.hash, block.certificate)
        if len(signers) != len(block.certificate):
            # A certificate is a claim; one signature that does not verify
            # (or a signer twice, or a stranger) means it was tampered with.
            raise ChainError(
                block.height,
                f"certificate holds {len(block.certificate) - len(signers)} signature(s) that do not "
                "verify against the anchors",
            )
        if len(signers) < need:
            raise ChainError(
                block.height,
                f"certificate has {len(signers)} valid signature(s) of {len(anchors.keys)} voters; "
                f"a majority needs {need}",
            )
        for node_id, key in registered_keys(block.entries):
            expected = anchors.keys.get(node_id)
            if expected is not None and key != expected:
                raise ChainError(block.height, f"records a key for {node_id} that is not the anchors' key")
    return count


def registered_keys(entries: Iterable[bytes]) -> list[tuple[str, bytes]]:
    """(node id, public key) of every member key recorded by these ledger entries."""
    out: list[tuple[str, bytes]] = []
    for raw in entries:
        view = decode_entry(raw)
        if view is not None:
            out.extend((m.node_id, m.public_key) for m in view.members if m.public_key)
    return out
