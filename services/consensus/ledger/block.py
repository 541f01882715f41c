"""Blocks and their hashes: pure functions shared by the state machine, the
exporter and the offline verifier.

A block's hash is SHA-256 over a canonical header (all integers big-endian):

    b"fleetsuit/block/v2" | u64 height | prev_hash (32 bytes) | u64 first_index
    | u64 last_index | u64 term | u32 count | entries_root (32 bytes)

where ``entries_root`` is the Merkle root of the block's entries (RFC 6962
style: a leaf is SHA-256(0x00 | entry), an inner node SHA-256(0x01 | left |
right), an odd node is promoted), so one entry's membership in a block can be
proven with a path of log2(count) hashes instead of the whole block. The
first block (height 1) links to ``GENESIS_HASH`` (32 zero bytes).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass

DOMAIN = b"fleetsuit/block/v2"
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
    # (node id, signature) pairs over the hash; not covered by the hash.
    certificate: tuple[tuple[str, bytes], ...] = ()


_LEAF = hashlib.sha256(b"\x00")


def leaf_hash(entry: bytes) -> bytes:
    h = _LEAF.copy()  # no copy of the entry to put the prefix before it
    h.update(entry)
    return h.digest()


def _node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def merkle_root(entries: Sequence[bytes], leaves: Sequence[bytes] | None = None) -> bytes:
    """The Merkle root of ``entries`` (``leaves``: their leaf hashes, when
    the caller has them already)."""
    level = list(leaves) if leaves is not None else [leaf_hash(e) for e in entries]
    if not level:
        return hashlib.sha256(b"").digest()
    while len(level) > 1:
        nxt = [_node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]


def merkle_path(entries: Sequence[bytes], position: int) -> list[tuple[bool, bytes]]:
    """The sibling hashes from leaf ``position`` up to the root; each item is
    (sibling_is_left, hash)."""
    if not 0 <= position < len(entries):
        raise IndexError(f"no entry {position} in a block of {len(entries)}")
    level = [leaf_hash(e) for e in entries]
    path: list[tuple[bool, bytes]] = []
    pos = position
    while len(level) > 1:
        sibling = pos ^ 1
        if sibling < len(level):
            path.append((sibling < pos, level[sibling]))
        nxt = [_node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
        pos //= 2
    return path


def root_from_path(entry: bytes, path: Sequence[tuple[bool, bytes]]) -> bytes:
    node = leaf_hash(entry)
    for sibling_is_left, sibling in path:
        node = _node_hash(sibling, node) if sibling_is_left else _node_hash(node, sibling)
    return node


def header_hash(
    height: int,
    prev_hash: bytes,
    first_index: int,
    last_index: int,
    term: int,
    count: int,
    entries_root: bytes,
) -> bytes:
    h = hashlib.sha256()
    h.update(DOMAIN)
    h.update(struct.pack(">Q", height))
    h.update(prev_hash)
    h.update(struct.pack(">QQQ", first_index, last_index, term))
    h.update(_LEN.pack(count))
    h.update(entries_root)
    return h.digest()


def block_hash(
    height: int,
    prev_hash: bytes,
    first_index: int,
    last_index: int,
    term: int,
    entries: Sequence[bytes],
    leaves: Sequence[bytes] | None = None,
) -> bytes:
    return header_hash(
        height, prev_hash, first_index, last_index, term, len(entries), merkle_root(entries, leaves)
    )


def make_block(
    height: int,
    prev_hash: bytes,
    first_index: int,
    last_index: int,
    term: int,
    entries: Sequence[bytes],
    leaves: Sequence[bytes] | None = None,
) -> BlockData:
    """A block of ``entries`` (``leaves``: their leaf hashes, if known: the
    ledger machine hashes each entry once, for its digest and the root)."""
    return BlockData(
        height=height,
        prev_hash=prev_hash,
        first_index=first_index,
        last_index=last_index,
        term=term,
        entries=tuple(entries),
        hash=block_hash(height, prev_hash, first_index, last_index, term, entries, leaves),
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
