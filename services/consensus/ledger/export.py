"""The exported ledger file, format version 1:

    b"FLEETSUIT-LEDGER\\x00v1\\n" then, per block, u32 length | encoded Block protobuf

Reading is bounded: a declared length over ``MAX_BLOCK_BYTES`` or a
truncated record is an ``ExportFormatError``, not an allocation.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from typing import BinaryIO

from google.protobuf.message import DecodeError

from fleetsuit.v1 import consensus_pb2 as pb

from .block import BlockData
from .codec import block_from_pb, block_to_pb

MAGIC = b"FLEETSUIT-LEDGER\x00v1\n"
MAX_BLOCK_BYTES = 64 * 1024 * 1024
_LEN = struct.Struct(">I")


class ExportFormatError(ValueError):
    """The file is not a readable ledger export."""


def write_blocks(out: BinaryIO, blocks: Iterable[BlockData]) -> int:
    out.write(MAGIC)
    count = 0
    for block in blocks:
        raw = block_to_pb(block).SerializeToString()
        out.write(_LEN.pack(len(raw)))
        out.write(raw)
        count += 1
    return count


def read_blocks(src: BinaryIO) -> Iterator[BlockData]:
    if src.read(len(MAGIC)) != MAGIC:
        raise ExportFormatError("not a fleetsuit ledger export (bad magic)")
    position = 0
    while True:
        head = src.read(_LEN.size)
        if not head:
            return
        position += 1
        if len(head) != _LEN.size:
            raise ExportFormatError(f"record {position} is truncated")
        (length,) = _LEN.unpack(head)
        if length > MAX_BLOCK_BYTES:
            raise ExportFormatError(f"record {position} declares {length} bytes (limit {MAX_BLOCK_BYTES})")
        raw = src.read(length)
        if len(raw) != length:
            raise ExportFormatError(f"record {position} is truncated")
        try:
            yield block_from_pb(pb.Block.FromString(raw))
        except DecodeError:
            raise ExportFormatError(f"record {position} is not a block") from None
