"""The on-disk and on-wire format of a ledger snapshot (Raft §7): the applied
state of the ledger state machine at one Raft index, as one byte stream that
can be cut into chunks anywhere.

Format version 1 (integers big-endian)::

    b"FSNAP" | u8 version | u32 header_len | header (JSON, sorted keys):
        {"index": i, "learners": [...], "term": t, "v": 1, "voters": [...]}
    record*   : u32 key_len | u32 value_len | key | value
    trailer   : u32 0xFFFFFFFF | SHA-256 of every byte before the trailer

Records hold the keys of the applied state only (``layout.is_state_key``): blocks, the request table, member keys, block signatures,
peer addresses, the applied and certified heights. A reader refuses any other
key, so a snapshot can never overwrite a node's identity or its log. Every
length is checked against its bound before anything is read or allocated.
This module parses and writes bytes; it knows nothing of RocksDB or gRPC.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Iterable, Iterator
from typing import BinaryIO

from ..raft.types import SnapshotMeta
from .layout import is_state_key

MAGIC = b"FSNAP"
VERSION = 1
MAX_HEADER_BYTES = 64 * 1024
MAX_KEY_BYTES = 4 * 1024
MAX_VALUE_BYTES = 16 * 1024 * 1024
END = 0xFFFFFFFF
_U32 = struct.Struct(">I")
_REC = struct.Struct(">II")



class SnapshotFormatError(ValueError):
    """Bytes that are not a complete, intact version-1 snapshot."""


def encode_header(meta: SnapshotMeta) -> bytes:
    doc = {
        "index": meta.index,
        "learners": list(meta.learners),
        "term": meta.term,
        "v": VERSION,
        "voters": list(meta.voters),
    }
    body = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    return MAGIC + bytes([VERSION]) + _U32.pack(len(body)) + body


def _decode_header_body(body: bytes) -> SnapshotMeta:
    try:
        doc = json.loads(body)
        if doc["v"] != VERSION:
            raise SnapshotFormatError(f"snapshot header version {doc['v']!r} is not supported")
        voters, learners = doc["voters"], doc["learners"]
        if not all(isinstance(n, str) for n in [*voters, *learners]):
            raise SnapshotFormatError("member ids must be strings")
        index, term = int(doc["index"]), int(doc["term"])
    except SnapshotFormatError:
        raise
    except (ValueError, KeyError, TypeError) as exc:
        raise SnapshotFormatError(f"malformed snapshot header: {exc}") from exc
    if index < 1 or term < 1:
        raise SnapshotFormatError(f"snapshot at index {index}, term {term} is impossible")
    return SnapshotMeta(index, term, tuple(voters), tuple(learners))


class SnapshotWriter:
    """Writes one snapshot to a binary file, hashing as it goes."""

    def __init__(self, out: BinaryIO, meta: SnapshotMeta) -> None:
        self._out = out
        self._hash = hashlib.sha256()
        self.size = 0
        self.records = 0
        self._write(encode_header(meta))

    def _write(self, data: bytes) -> None:
        self._out.write(data)
        self._hash.update(data)
        self.size += len(data)

    def add(self, key: bytes, value: bytes) -> None:
        if not is_state_key(key):
            raise SnapshotFormatError(f"key {key[:40]!r} is not part of the applied state")
        if len(key) > MAX_KEY_BYTES or len(value) > MAX_VALUE_BYTES:
            raise SnapshotFormatError(f"record {key[:40]!r} exceeds the record bounds")
        self._write(_REC.pack(len(key), len(value)) + key + value)
        self.records += 1

    def finish(self) -> int:
        digest = self._hash.digest()
        self._out.write(_U32.pack(END) + digest)
        self.size += 4 + len(digest)
        return self.size


def write_snapshot(out: BinaryIO, meta: SnapshotMeta, records: Iterable[tuple[bytes, bytes]]) -> int:
    """Write a whole snapshot; returns its size in bytes."""
    writer = SnapshotWriter(out, meta)
    for key, value in records:
        writer.add(key, value)
    return writer.finish()


class _Reader:
    def __init__(self, src: BinaryIO, limit: int) -> None:
        self._src = src
        self._limit = limit
        self.pos = 0
        self.hash = hashlib.sha256()

    def read(self, n: int, *, hashed: bool = True) -> bytes:
        if self.pos + n > self._limit:
            raise SnapshotFormatError(f"snapshot exceeds its limit of {self._limit} bytes")
        data = self._src.read(n)
        if len(data) != n:
            raise SnapshotFormatError(f"snapshot truncated at byte {self.pos + len(data)}")
        self.pos += n
        if hashed:
            self.hash.update(data)
        return data


def read_header(src: BinaryIO, limit: int) -> SnapshotMeta:
    """Only the meta (for listing stored snapshots)."""
    return _read_header(_Reader(src, limit))


def _read_header(r: _Reader) -> SnapshotMeta:
    head = r.read(len(MAGIC) + 1 + 4)
    if head[: len(MAGIC)] != MAGIC:
        raise SnapshotFormatError("not a snapshot (bad magic)")
    if head[len(MAGIC)] != VERSION:
        raise SnapshotFormatError(f"snapshot format version {head[len(MAGIC)]} is not supported")
    (length,) = _U32.unpack_from(head, len(MAGIC) + 1)
    if length > MAX_HEADER_BYTES:
        raise SnapshotFormatError(f"snapshot header of {length} bytes exceeds {MAX_HEADER_BYTES}")
    return _decode_header_body(r.read(length))


def read_snapshot(src: BinaryIO, limit: int) -> tuple[SnapshotMeta, Iterator[tuple[bytes, bytes]]]:
    """The meta and an iterator over the records. The iterator checks the
    trailer at its end and raises ``SnapshotFormatError`` on anything wrong,
    so a caller must not commit what it read before the iterator is exhausted."""
    r = _Reader(src, limit)
    meta = _read_header(r)

    def records() -> Iterator[tuple[bytes, bytes]]:
        while True:
            (key_len,) = _U32.unpack(r.read(4, hashed=False))
            if key_len == END:
                digest = r.hash.digest()
                if r.read(len(digest), hashed=False) != digest:
                    raise SnapshotFormatError("snapshot fails its checksum")
                if src.read(1):
                    raise SnapshotFormatError("bytes after the snapshot's trailer")
                return
            r.hash.update(_U32.pack(key_len))
            (value_len,) = _U32.unpack(r.read(4))
            if key_len > MAX_KEY_BYTES or value_len > MAX_VALUE_BYTES:
                raise SnapshotFormatError(f"record at byte {r.pos} exceeds the record bounds")
            key = r.read(key_len)
            if not is_state_key(key):
                raise SnapshotFormatError(f"key {key[:40]!r} is not part of the applied state")
            yield key, r.read(value_len)

    return meta, records()


def verify_snapshot(src: BinaryIO, limit: int) -> SnapshotMeta:
    """Parse a whole snapshot and check its trailer; returns its meta."""
    meta, records = read_snapshot(src, limit)
    for _ in records:
        pass
    return meta
