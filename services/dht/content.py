"""Content ids, chunking and the root object (sans-I/O).

Content id
    A blob's id is the SHA-256 digest of its *whole content*, written
    ``sha256:<64 lowercase hex>``. The prefix names the hash so the form can
    grow (another algorithm gets another prefix) and a bare hex string is never
    mistaken for an id. Using the whole-content digest (not the digest of the
    root object) makes a blob's id equal to the image digest a SUIT manifest
    already carries, so a manifest names its payload directly.

Chunks
    A blob is cut into fixed-size chunks (default 1 MiB; the last may be
    shorter). A chunk's id is the SHA-256 of its bytes, in the same string form.

Root object
    A small versioned record listing the chunk size, the total size and the
    chunk digests in order. It is stored under the blob's id. A root is only
    trusted once the concatenation of its chunks (each verified against its
    own digest) has hashed to the blob's id; after that, any byte range can be
    served and verified chunk by chunk (this is what makes resume cheap).

    Encoding, version 1 (big-endian)::

        magic   b"FSRT"      4 bytes
        version 1            1 byte
        chunk_bytes          4 bytes
        total_size           8 bytes
        chunk_count          4 bytes
        digests              32 bytes * chunk_count

This module does no I/O.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NewType

from services.dht.errors import InvalidContentId, InvalidRoot

ContentId = NewType("ContentId", str)
Digest = NewType("Digest", bytes)  # 32 raw bytes

PREFIX = "sha256:"
DIGEST_BYTES = 32
DEFAULT_CHUNK_BYTES = 1024 * 1024
MAX_CHUNK_BYTES = 4 * 1024 * 1024
ROOT_MAGIC = b"FSRT"
ROOT_VERSION = 1
_HEADER = struct.Struct(">4sBIQI")
# A root for a 1 TiB blob of 1 MiB chunks is 32 MiB; refuse anything bigger
# before parsing (STYLE: decoders are size-bounded).
MAX_ROOT_BYTES = _HEADER.size + DIGEST_BYTES * (1 << 20)


def digest_of(data: bytes | memoryview) -> Digest:
    return Digest(hashlib.sha256(data).digest())


def format_id(digest: bytes) -> ContentId:
    if len(digest) != DIGEST_BYTES:
        raise InvalidContentId(f"digest must be {DIGEST_BYTES} bytes, got {len(digest)}")
    return ContentId(PREFIX + digest.hex())


def parse_id(text: str) -> Digest:
    """The digest named by ``text``; raises InvalidContentId for anything else."""
    if not text.startswith(PREFIX):
        raise InvalidContentId(f"content id must start with {PREFIX!r}: {text[:80]!r}")
    hexpart = text[len(PREFIX) :]
    if len(hexpart) != 2 * DIGEST_BYTES or hexpart != hexpart.lower():
        raise InvalidContentId(f"content id needs {2 * DIGEST_BYTES} lowercase hex digits")
    try:
        return Digest(bytes.fromhex(hexpart))
    except ValueError:
        raise InvalidContentId(f"content id is not hex: {text[:80]!r}") from None


def content_id_of(data: bytes) -> ContentId:
    return format_id(digest_of(data))


@dataclass(frozen=True, slots=True)
class Root:
    """The chunk list of one blob."""

    chunk_bytes: int
    total_size: int
    chunks: tuple[Digest, ...]

    def __post_init__(self) -> None:
        if not 0 < self.chunk_bytes <= MAX_CHUNK_BYTES:
            raise InvalidRoot(f"chunk_bytes {self.chunk_bytes} out of range")
        expected = -(-self.total_size // self.chunk_bytes)
        if len(self.chunks) != expected:
            raise InvalidRoot(
                f"{len(self.chunks)} chunks for {self.total_size} bytes "
                f"of {self.chunk_bytes}-byte chunks (expected {expected})"
            )

    def chunk_size(self, index: int) -> int:
        if not 0 <= index < len(self.chunks):
            raise IndexError(index)
        if index < len(self.chunks) - 1:
            return self.chunk_bytes
        return self.total_size - self.chunk_bytes * index

    def chunk_range(self, offset: int) -> Iterator[tuple[int, int]]:
        """(chunk index, offset inside that chunk) from byte ``offset`` on."""
        if offset >= self.total_size:
            return
        first = offset // self.chunk_bytes
        yield first, offset - first * self.chunk_bytes
        for index in range(first + 1, len(self.chunks)):
            yield index, 0


def encode_root(root: Root) -> bytes:
    header = _HEADER.pack(
        ROOT_MAGIC, ROOT_VERSION, root.chunk_bytes, root.total_size, len(root.chunks)
    )
    return header + b"".join(root.chunks)


def decode_root(data: bytes) -> Root:
    if len(data) > MAX_ROOT_BYTES:
        raise InvalidRoot(f"root object of {len(data)} bytes exceeds {MAX_ROOT_BYTES}")
    if len(data) < _HEADER.size:
        raise InvalidRoot("root object truncated")
    magic, version, chunk_bytes, total_size, count = _HEADER.unpack_from(data)
    if magic != ROOT_MAGIC:
        raise InvalidRoot("not a root object (bad magic)")
    if version != ROOT_VERSION:
        raise InvalidRoot(f"unsupported root version {version}")
    body = data[_HEADER.size :]
    if len(body) != DIGEST_BYTES * count:
        raise InvalidRoot(f"root lists {count} chunks but carries {len(body)} digest bytes")
    chunks = tuple(Digest(body[i : i + DIGEST_BYTES]) for i in range(0, len(body), DIGEST_BYTES))
    return Root(chunk_bytes=chunk_bytes, total_size=total_size, chunks=chunks)


class Chunker:
    """Cuts a byte stream into chunks and hashes the whole content as it goes.

    ``feed`` returns the chunks completed by that input; ``finish`` returns
    the last, short chunk (if any) and the blob's digest.
    """

    def __init__(self, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> None:
        self._chunk_bytes = chunk_bytes
        self._buffer = bytearray()
        self._whole = hashlib.sha256()
        self.total_size = 0

    def feed(self, data: bytes | memoryview) -> list[bytes]:
        self._whole.update(data)
        self.total_size += len(data)
        self._buffer += data
        out: list[bytes] = []
        size = self._chunk_bytes
        if len(self._buffer) >= size:
            view = memoryview(self._buffer)
            full = len(self._buffer) // size * size
            out = [bytes(view[i : i + size]) for i in range(0, full, size)]
            view.release()
            del self._buffer[:full]
        return out

    def finish(self) -> tuple[bytes | None, Digest]:
        tail = bytes(self._buffer) if self._buffer else None
        self._buffer.clear()
        return tail, Digest(self._whole.digest())


def split(data: bytes, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> tuple[Root, Digest, list[bytes]]:
    """Chunk a whole in-memory blob: its root, its digest and its chunks."""
    chunks = [data[i : i + chunk_bytes] for i in range(0, len(data), chunk_bytes)]
    root = Root(chunk_bytes, len(data), tuple(digest_of(c) for c in chunks))
    return root, digest_of(data), chunks
