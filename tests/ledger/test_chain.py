"""The ledger state machine and the offline chain check."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from fleetsuit.v1 import consensus_pb2 as pb
from services.consensus.ledger.block import GENESIS_HASH, ChainError, make_block, verify_chain
from services.consensus.ledger.codec import encode_batch
from services.consensus.ledger.export import ExportFormatError, read_blocks, write_blocks
from services.consensus.ledger.keys import RequestKey
from services.consensus.ledger.machine import Applied, LedgerMachine
from services.consensus.raft.types import Entry, EntryType
from services.consensus.storage import RocksStorage


def _payload(client: str, rid: int, text: str = "x") -> bytes:
    return pb.LedgerEntry(
        client_id=client, request_id=rid, app=pb.AppEntry(payload=text.encode())
    ).SerializeToString()


def _machine(path: Path) -> tuple[RocksStorage, LedgerMachine]:
    storage = RocksStorage(str(path), node_id="n1", cluster_id="c")
    return storage, LedgerMachine(storage)


def test_one_normal_entry_makes_one_block_and_noops_none(tmp_path: Path) -> None:
    storage, m = _machine(tmp_path)
    results = m.apply([
        Entry(term=1, index=1, type=EntryType.NOOP),
        Entry(term=1, index=2, data=encode_batch([_payload("a", 1), _payload("b", 1)])),
        Entry(term=1, index=3, data=encode_batch([_payload("a", 2)])),
    ])
    assert [(r.index, r.block_height) for r in results if isinstance(r, Applied)] == [(2, 1), (2, 1), (3, 2)]
    assert m.height == 2 and m.applied_index() == 3
    blocks = [m.get_block(1), m.get_block(2)]
    assert verify_chain([b for b in blocks if b]) == m.head_hash
    storage.close()


def test_a_retried_request_is_applied_once_and_gets_the_first_answer(tmp_path: Path) -> None:
    storage, m = _machine(tmp_path)
    m.apply([Entry(term=1, index=1, data=encode_batch([_payload("a", 1)]))])
    results = m.apply([Entry(term=2, index=2, data=encode_batch([_payload("a", 1), _payload("a", 2)]))])
    first = results[0]
    assert (first.index, first.block_height, first.duplicate, first.position, first.outcome) == (1, 1, True, 0, "")
    assert results[1].duplicate is False  # type: ignore[union-attr]
    block = m.get_block(2)
    assert block is not None and len(block.entries) == 1
    storage.close()


def test_a_request_twice_in_one_batch_or_one_apply_is_answered_with_its_block(tmp_path: Path) -> None:
    """A retry that lands in the same batch as the original, or in a later
    entry of the same apply, gets the original's index and block height."""
    storage, m = _machine(tmp_path)
    results = m.apply([
        Entry(term=1, index=1, data=encode_batch([_payload("a", 1), _payload("b", 1), _payload("a", 1)])),
        Entry(term=1, index=2, data=encode_batch([_payload("b", 1), _payload("c", 1)])),
    ])
    answers = [(r.key.client_id, r.index, r.block_height, r.duplicate) for r in results]  # type: ignore[attr-defined]
    assert sorted(answers) == [
        ("a", 1, 1, False), ("a", 1, 1, True), ("b", 1, 1, False), ("b", 1, 1, True), ("c", 2, 2, False),
    ]
    first, second = m.get_block(1), m.get_block(2)
    assert first is not None and len(first.entries) == 2
    assert second is not None and len(second.entries) == 1
    a, c = storage.get_request(RequestKey("a", 1)), storage.get_request(RequestKey("c", 1))
    assert a is not None and (a.index, a.block_height, a.position) == (1, 1, 0)
    assert c is not None and (c.index, c.block_height, c.position) == (2, 2, 0)
    storage.close()


def test_restart_resumes_the_chain(tmp_path: Path) -> None:
    storage, m = _machine(tmp_path)
    m.apply([Entry(term=1, index=1, data=encode_batch([_payload("a", 1)]))])
    head = m.head_hash
    storage.close()
    storage, m = _machine(tmp_path)
    assert m.applied_index() == 1 and m.head_hash == head
    m.apply([Entry(term=1, index=1, data=encode_batch([_payload("a", 1)]))])  # re-delivery is ignored
    assert m.height == 1
    m.apply([Entry(term=1, index=2, data=encode_batch([_payload("b", 1)]))])
    block = m.get_block(2)
    assert block is not None and block.prev_hash == head
    storage.close()


def _chain(n: int) -> list:  # type: ignore[type-arg]
    blocks, prev = [], GENESIS_HASH
    for h in range(1, n + 1):
        b = make_block(h, prev, h + 1, h + 1, 1, [f"entry {h}".encode()])
        blocks.append(b)
        prev = b.hash
    return blocks


def test_every_single_byte_flip_is_detected_and_names_a_block() -> None:
    buf = io.BytesIO()
    write_blocks(buf, _chain(4))
    good = buf.getvalue()
    assert len(list(read_blocks(io.BytesIO(good)))) == 4
    for position in range(len(good)):
        raw = bytearray(good)
        raw[position] ^= 0x40
        with pytest.raises((ChainError, ExportFormatError)):
            verify_chain(list(read_blocks(io.BytesIO(bytes(raw)))))


def test_broken_link_names_the_first_bad_block() -> None:
    blocks = _chain(5)
    forged = make_block(3, bytes(32), 4, 4, 1, [b"forged"])
    with pytest.raises(ChainError) as err:
        verify_chain([*blocks[:2], forged, *blocks[3:]])
    assert err.value.height == 3


def test_huge_declared_length_is_refused_without_allocating() -> None:
    from services.consensus.ledger.export import MAGIC

    with pytest.raises(ExportFormatError, match="declares"):
        list(read_blocks(io.BytesIO(MAGIC + b"\xff\xff\xff\xff")))
