"""Blocks and their hashes: pure functions shared by the state machine, the
exporter and the offline verifier.

A block's hash is SHA-256 over a canonical header (all integers big-endian):

    b"fleetsuit/block/v1" | u64 height | prev_hash (32 bytes) | u64 first_index
    | u64 last_index | u64 term | u32 count | (u32 len | entry bytes) * count

The first block (height 1) links to ``GENESIS_HASH`` (32 zero bytes).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass

DOMAIN = b"fleetsuit/block/v1"
GENESIS_HASH = bytes(32)
_HEAD = struct.Struct(">QQQQ")
_LEN = struct.Struct(">I")


@dataclass(frozen=True, slots=True)
class BlockData:
    height: int
    prev_hash: bytes
    first_index: int
    last_index: int
    term: int
    entries: tuple[bytes, ...]
    hash: bytes


def block_hash(
    height: int,
    prev_hash: bytes,
    first_index: int,
    last_index: int,
    term: int,
    entries: Sequence[bytes],
) -> bytes:
    h = hashlib.sha256()
    h.update(DOMAIN)
    h.update(struct.pack(">Q", height))
    h.update(prev_hash)
    h.update(struct.pack(">QQQ", first_index, last_index, term))
    h.update(_LEN.pack(len(entries)))
    for entry in entries:
        h.update(_LEN.pack(len(entry)))
        h.update(entry)
    return h.digest()


def make_block(
    height: int, prev_hash: bytes, first_index: int, last_index: int, term: int, entries: Sequence[bytes]
) -> BlockData:
    return BlockData(
        height=height,
        prev_hash=prev_hash,
        first_index=first_index,
        last_index=last_index,
        term=term,
        entries=tuple(entries),
        hash=block_hash(height, prev_hash, first_index, last_index, term, entries),
    )


class ChainError(ValueError):
    """A chain does not verify; ``height`` names the first bad block."""

    def __init__(self, height: int, reason: str) -> None:
        super().__init__(f"block {height}: {reason}")
        self.height = height
        self.reason = reason


def verify_chain(blocks: Sequence[BlockData], *, start_prev_hash: bytes = GENESIS_HASH) -> bytes:
    """Check heights, hash links and every block hash; return the head hash.

    Raises ChainError naming the first bad block.
    """
    prev = start_prev_hash
    expected_height = blocks[0].height if blocks else 1
    if blocks and start_prev_hash == GENESIS_HASH and expected_height != 1:
        raise ChainError(blocks[0].height, "chain does not start at height 1")
    last_index = 0
    for block in blocks:
        if block.height != expected_height:
            raise ChainError(block.height, f"expected height {expected_height}")
        if block.prev_hash != prev:
            raise ChainError(block.height, "previous-hash link is broken")
        if block.first_index > block.last_index or block.first_index <= last_index:
            raise ChainError(block.height, "raft indexes are out of order")
        recomputed = block_hash(
            block.height, block.prev_hash, block.first_index, block.last_index, block.term, block.entries
        )
        if recomputed != block.hash:
            raise ChainError(block.height, "block hash does not match its contents")
        prev = block.hash
        last_index = block.last_index
        expected_height += 1
    return prev
