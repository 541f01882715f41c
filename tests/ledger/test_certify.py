"""Certificates and member keys: pure rules, no processes."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetsuit.v1 import consensus_pb2 as pb
from services.consensus.ledger.block import (
    GENESIS_HASH,
    ChainError,
    make_block,
    merkle_path,
    merkle_root,
    root_from_path,
)
from services.consensus.ledger.certify import (
    Anchors,
    NodeKey,
    block_message,
    key_message,
    verify_certified_chain,
)
from services.consensus.ledger.codec import encode_batch
from services.consensus.ledger.machine import LedgerMachine
from services.consensus.raft.types import Entry
from services.consensus.storage import RocksStorage


def _keys(tmp_path: Path, n: int) -> dict[str, NodeKey]:
    return {f"n{i}": NodeKey.load_or_create(tmp_path / f"n{i}.key") for i in range(1, n + 1)}


def test_key_file_is_reused_and_private(tmp_path: Path) -> None:
    a = NodeKey.load_or_create(tmp_path / "k")
    b = NodeKey.load_or_create(tmp_path / "k")
    assert a.public == b.public and len(a.public) == 32
    assert (tmp_path / "k").stat().st_mode & 0o077 == 0


def test_certificate_needs_a_majority_of_valid_signatures(tmp_path: Path) -> None:
    keys = _keys(tmp_path, 3)
    anchors = Anchors("c", {nid: k.public for nid, k in keys.items()})
    block = make_block(1, GENESIS_HASH, 2, 2, 1, [b"x"])

    def cert(*signers: str) -> tuple[tuple[str, bytes], ...]:
        return tuple((s, keys[s].sign(block_message("c", 1, block.hash))) for s in signers)

    verify_certified_chain([block.__class__(**{**_as_dict(block), "certificate": cert("n1", "n3")})], anchors)
    for bad in (cert("n1"), cert("n1", "n1"), (*cert("n1", "n2"), ("n9", b"x" * 64))):
        with pytest.raises(ChainError) as err:
            verify_certified_chain([block.__class__(**{**_as_dict(block), "certificate": bad})], anchors)
        assert err.value.height == 1
    # A signature for another cluster does not count.
    other = (("n1", keys["n1"].sign(block_message("other", 1, block.hash))),) + cert("n2")
    with pytest.raises(ChainError):
        verify_certified_chain([block.__class__(**{**_as_dict(block), "certificate": other})], anchors)


def test_member_key_needs_proof_of_possession_and_first_key_stands(tmp_path: Path) -> None:
    keys = _keys(tmp_path, 2)
    storage = RocksStorage(str(tmp_path / "db"), node_id="n1", cluster_id="c")
    machine = LedgerMachine(storage, cluster_id="c")

    def registration(node_id: str, key: NodeKey, proof_key: NodeKey, rid: int) -> bytes:
        proof = proof_key.sign(key_message("c", node_id, key.public))
        return pb.LedgerEntry(client_id=f"node/{node_id}", request_id=rid, membership_changed=pb.MembershipChanged(
            members=[pb.Member(node_id=node_id, public_key=key.public, key_proof=proof)])).SerializeToString()

    machine.apply([Entry(term=1, index=1, data=encode_batch([registration("n1", keys["n1"], keys["n2"], 1)]))])
    assert machine.member_key("n1") is None  # proof made with another key
    machine.apply([Entry(term=1, index=2, data=encode_batch([registration("n1", keys["n1"], keys["n1"], 2)]))])
    assert machine.member_key("n1") == keys["n1"].public
    machine.apply([Entry(term=1, index=3, data=encode_batch([registration("n1", keys["n2"], keys["n2"], 3)]))])
    assert machine.member_key("n1") == keys["n1"].public
    storage.close()


@pytest.mark.parametrize("count", [1, 2, 3, 4, 5, 7, 8, 13])
def test_merkle_paths_prove_every_entry(count: int) -> None:
    entries = [f"e{i}".encode() for i in range(count)]
    root = merkle_root(entries)
    for i, entry in enumerate(entries):
        path = merkle_path(entries, i)
        assert root_from_path(entry, path) == root
        assert root_from_path(entry + b"!", path) != root


def _as_dict(block: object) -> dict:  # type: ignore[type-arg]
    return {name: getattr(block, name) for name in block.__dataclass_fields__}  # type: ignore[attr-defined]
