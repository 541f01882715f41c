"""The local blob store: chunks, roots, pins, LRU and the disk-use limit.

Layout in the key-value store (on-disk format version 1)::

    b"!format"              -> b"1"
    b"c" + chunk digest     -> chunk bytes (shared by every blob that lists it)
    b"r" + blob digest      -> encoded root object (services/dht/content.py)
    b"m" + blob digest      -> meta: pinned (1 byte), last access sequence (8 bytes)

Rules this module keeps:

- A root is written only after every chunk it lists is stored and verified
  and (for data from peers) the chunks hash to the blob's id, so a root on
  disk always means "this blob was complete and correct".
- Every chunk is verified against its digest when read; a corrupt chunk is
  deleted at once and ``ChunkCorrupt`` raised, so corrupt data is never
  returned. The blob stays known (its root remains) but is incomplete until a
  peer supplies the chunk again (``put_chunk``).
- ``max_disk_bytes`` bounds the logical bytes stored (chunk and root values;
  RocksDB's own overhead is not counted). Before any write the store makes
  room by evicting least-recently-used, unpinned, idle blobs; if that is not
  enough it raises ``StoreFull`` and writes nothing, so a full store never
  damages what it holds.
- Chunks written by an unfinished upload are held by a ``PendingBlob``; if
  the process dies they are orphans, removed when the store next opens.
- Chunk values are written without the write-ahead log (``write_unlogged``)
  and made durable (``persist``) before the root that lists them is
  written, so a root on disk still means its chunks are on disk. A chunk
  re-fetched for a blob already here is not persisted at once: lost in a
  crash, it is simply missing when the store reopens and fetched again.

Blocking I/O; the runtime calls it from its event loop (values are at most a
few MiB).
"""

from __future__ import annotations

import hashlib
import struct
from collections import OrderedDict
from collections.abc import Iterator

from services.dht.content import (
    DEFAULT_CHUNK_BYTES,
    Digest,
    Root,
    decode_root,
    digest_of,
    encode_root,
)
from services.dht.errors import (
    ChunkCorrupt,
    DigestMismatch,
    InvalidArgument,
    NotFound,
    StoreFull,
)
from services.dht.kv import KeyValue

FORMAT_KEY = b"!format"
FORMAT_VERSION = b"1"
_CHUNK = b"c"
_ROOT = b"r"
_META = b"m"
_META_FMT = struct.Struct(">BQ")


class PendingBlob:
    """Chunks being written for one blob that has no root yet.

    Chunks may arrive in any order (parallel fetches from several holders).
    """

    def __init__(self, store: BlobStore) -> None:
        self._store = store
        self.held: dict[int, Digest] = {}
        self.size = 0
        self.closed = False

    def add_chunk(
        self,
        data: bytes,
        index: int | None = None,
        expected: Digest | None = None,
        digest: Digest | None = None,
    ) -> Digest:
        """Hold chunk ``index``; ``digest`` is its SHA-256 when the caller
        already hashed ``data`` (in a worker thread, off the event loop)."""
        if self.closed:
            raise InvalidArgument("upload already finished")
        index = len(self.held) if index is None else index
        digest = digest_of(data) if digest is None else digest
        if expected is not None and digest != expected:
            raise DigestMismatch(f"chunk {index} does not hash to sha256:{expected.hex()}")
        if index in self.held:
            return digest
        self._store._hold_chunk(digest, data)
        self.held[index] = digest
        self.size += len(data)
        return digest

    def verify_whole(self, blob: Digest) -> None:
        """Check that the held chunks, in order, hash to ``blob``."""
        whole = hashlib.sha256()
        for index in range(len(self.held)):
            whole.update(self._store._read_raw(self.held[index]))
        if whole.digest() != blob:
            raise DigestMismatch(f"chunks do not hash to sha256:{blob.hex()}")

    def commit(self, blob: Digest, root: Root) -> None:
        self._store._commit(self, blob, root)

    def abort(self) -> None:
        if not self.closed:
            self.closed = True
            self._store._release(list(self.held.values()))


class BlobStore:
    def __init__(self, kv: KeyValue, max_disk_bytes: int) -> None:
        if max_disk_bytes <= 0:
            raise InvalidArgument("max_disk_bytes must be positive")
        self._kv = kv
        self.max_disk_bytes = max_disk_bytes
        self._roots: dict[Digest, Root] = {}
        self._pinned: set[Digest] = set()
        self._lru: OrderedDict[Digest, int] = OrderedDict()  # oldest first
        self._refs: dict[Digest, int] = {}
        self._present: dict[Digest, int] = {}  # chunk digest -> size
        self._busy: dict[Digest, int] = {}
        self._seq = 0
        self.used_bytes = 0
        self.evictions = 0  # blobs dropped by _make_room since open
        self._open()

    # ------------------------------------------------------------ opening

    def _open(self) -> None:
        version = self._kv.get(FORMAT_KEY)
        if version is None:
            self._kv.write([(FORMAT_KEY, FORMAT_VERSION)])
        elif version != FORMAT_VERSION:
            raise InvalidArgument(f"unsupported blob store format {version!r}")
        metas: list[tuple[int, Digest]] = []
        for key, value in self._kv.scan(_ROOT):
            blob = Digest(key[1:])
            root = decode_root(value)
            self._roots[blob] = root
            self.used_bytes += len(value)
            for chunk in root.chunks:
                self._refs[chunk] = self._refs.get(chunk, 0) + 1
            meta = self._kv.get(_META + blob)
            pinned, seq = _META_FMT.unpack(meta) if meta else (0, 0)
            if pinned:
                self._pinned.add(blob)
            metas.append((seq, blob))
            self._seq = max(self._seq, seq)
        for _seq, blob in sorted(metas):
            self._lru[blob] = _seq
        orphans: list[bytes] = []
        sizes = self._chunk_sizes()
        for key in self._kv.scan_keys(_CHUNK):
            chunk = Digest(key[1:])
            if chunk not in self._refs:
                orphans.append(key)
                continue
            self._present[chunk] = sizes[chunk]
            self.used_bytes += sizes[chunk]
        if orphans:
            self._kv.write([], orphans)

    def _chunk_sizes(self) -> dict[Digest, int]:
        sizes: dict[Digest, int] = {}
        for root in self._roots.values():
            for index, chunk in enumerate(root.chunks):
                sizes[chunk] = root.chunk_size(index)
        return sizes

    def close(self) -> None:
        self._kv.close()

    # ------------------------------------------------------------ queries

    def blobs(self) -> list[Digest]:
        return list(self._roots)

    def root(self, blob: Digest) -> Root | None:
        return self._roots.get(blob)

    def has_root(self, blob: Digest) -> bool:
        return blob in self._roots

    def missing_chunks(self, blob: Digest) -> list[int]:
        root = self._roots.get(blob)
        if root is None:
            raise NotFound(f"sha256:{blob.hex()} is not stored here")
        return [i for i, c in enumerate(root.chunks) if c not in self._present]

    def is_complete(self, blob: Digest) -> bool:
        root = self._roots.get(blob)
        return root is not None and all(c in self._present for c in root.chunks)

    def is_pinned(self, blob: Digest) -> bool:
        return blob in self._pinned

    def encoded_root(self, blob: Digest) -> bytes:
        root = self._roots.get(blob)
        if root is None:
            raise NotFound(f"sha256:{blob.hex()} is not stored here")
        return encode_root(root)

    # ------------------------------------------------------------ reads

    def read_chunk(self, blob: Digest, index: int) -> bytes:
        """Chunk ``index`` of ``blob``, verified; corrupt chunks are dropped."""
        root = self._roots.get(blob)
        if root is None:
            raise NotFound(f"sha256:{blob.hex()} is not stored here")
        if not 0 <= index < len(root.chunks):
            raise InvalidArgument(f"chunk index {index} out of range")
        digest = root.chunks[index]
        data = self._kv.get(_CHUNK + digest) if digest in self._present else None
        if data is None:
            raise NotFound(f"chunk {index} of sha256:{blob.hex()} is missing")
        if hashlib.sha256(data).digest() != digest:
            self._drop_chunk(digest)
            raise ChunkCorrupt(blob, index, "on disk")
        return data

    def peek_chunk(self, blob: Digest, index: int) -> bytes | None:
        """Chunk ``index`` if present and verified, else None; changes nothing.

        Safe to call from a worker thread: it only reads.
        """
        root = self._roots.get(blob)
        if root is None or not 0 <= index < len(root.chunks):
            return None
        digest = root.chunks[index]
        data = self._kv.get(_CHUNK + digest) if digest in self._present else None
        if data is None or hashlib.sha256(data).digest() != digest:
            return None
        return data

    def read_held(self, digest: Digest) -> bytes | None:
        """A chunk by its digest if present and verified, else None.

        Serves chunks of blobs still being fetched (no root yet). Safe to call
        from a worker thread: it only reads.
        """
        data = self._kv.get(_CHUNK + digest) if digest in self._present else None
        if data is None or hashlib.sha256(data).digest() != digest:
            return None
        return data

    def chunk_digests(self) -> list[Digest]:
        """Every chunk stored under a root (what the scrub walks)."""
        return [c for c in self._present if c in self._refs]

    def blobs_listing(self, chunk: Digest) -> list[tuple[Digest, int]]:
        """(blob, index) pairs whose root lists ``chunk``."""
        return [
            (blob, index)
            for blob, root in self._roots.items()
            for index, digest in enumerate(root.chunks)
            if digest == chunk
        ]

    def verify_chunk(self, digest: Digest) -> bool | None:
        """Re-hash one stored chunk: True if intact, False if it was corrupt
        (and is now dropped), None if it is not stored. For the scrub."""
        if digest not in self._present:
            return None
        data = self._kv.get(_CHUNK + digest)
        if data is not None and hashlib.sha256(data).digest() == digest:
            return True
        self._drop_chunk(digest)
        return False

    def touch(self, blob: Digest) -> None:
        if blob in self._roots:
            self._seq += 1
            self._lru[blob] = self._seq
            self._lru.move_to_end(blob)
            self._kv.write([(_META + blob, self._meta(blob))])

    def acquire(self, blob: Digest) -> None:
        """Protect ``blob`` from eviction while it is being read."""
        self._busy[blob] = self._busy.get(blob, 0) + 1

    def release(self, blob: Digest) -> None:
        left = self._busy.get(blob, 0) - 1
        if left <= 0:
            self._busy.pop(blob, None)
        else:
            self._busy[blob] = left

    def iter_chunks(self, blob: Digest) -> Iterator[bytes]:
        root = self._roots.get(blob)
        if root is None:
            raise NotFound(f"sha256:{blob.hex()} is not stored here")
        for index in range(len(root.chunks)):
            yield self.read_chunk(blob, index)

    # ------------------------------------------------------------ writes

    def begin(self) -> PendingBlob:
        return PendingBlob(self)

    def put_chunk(self, blob: Digest, index: int, data: bytes) -> None:
        """Store a re-fetched chunk of a blob whose root is already here."""
        root = self._roots.get(blob)
        if root is None:
            raise NotFound(f"sha256:{blob.hex()} is not stored here")
        digest = root.chunks[index]
        if digest_of(data) != digest:
            raise ChunkCorrupt(blob, index, "received")
        if digest in self._present:
            return
        self._make_room(len(data))
        self._kv.write_unlogged([(_CHUNK + digest, data)])
        self._present[digest] = len(data)
        self.used_bytes += len(data)

    def persist(self) -> None:
        """Make the chunks written so far durable (``commit`` does it too);
        safe to call from a worker thread, so the event loop need not wait."""
        self._kv.persist()

    def set_pinned(self, blob: Digest, pinned: bool) -> None:
        if blob not in self._roots:
            raise NotFound(f"sha256:{blob.hex()} is not stored here")
        if pinned:
            self._pinned.add(blob)
        else:
            self._pinned.discard(blob)
        self._kv.write([(_META + blob, self._meta(blob))])

    def delete(self, blob: Digest) -> None:
        root = self._roots.pop(blob, None)
        if root is None:
            return
        self._pinned.discard(blob)
        self._lru.pop(blob, None)
        self.used_bytes -= len(encode_root(root))
        self._kv.write([], [_ROOT + blob, _META + blob])
        self._release(list(root.chunks))

    # ------------------------------------------------------------ internals

    def _meta(self, blob: Digest) -> bytes:
        return _META_FMT.pack(1 if blob in self._pinned else 0, self._lru.get(blob, 0))

    def _hold_chunk(self, digest: Digest, data: bytes) -> None:
        if digest not in self._present:
            self._make_room(len(data))
            self._kv.write_unlogged([(_CHUNK + digest, data)])
            self._present[digest] = len(data)
            self.used_bytes += len(data)
        self._refs[digest] = self._refs.get(digest, 0) + 1

    def _release(self, chunks: list[Digest]) -> None:
        dead: list[bytes] = []
        for digest in chunks:
            left = self._refs.get(digest, 0) - 1
            if left > 0:
                self._refs[digest] = left
                continue
            self._refs.pop(digest, None)
            size = self._present.pop(digest, None)
            if size is not None:
                self.used_bytes -= size
                dead.append(_CHUNK + digest)
        if dead:
            self._kv.write([], dead)

    def _read_raw(self, digest: Digest) -> bytes:
        data = self._kv.get(_CHUNK + digest)
        if data is None or hashlib.sha256(data).digest() != digest:
            raise DigestMismatch(f"chunk sha256:{digest.hex()} vanished or changed")
        return data

    def _drop_chunk(self, digest: Digest) -> None:
        size = self._present.pop(digest, None)
        if size is not None:
            self.used_bytes -= size
        self._kv.write([], [_CHUNK + digest])

    def _commit(self, pending: PendingBlob, blob: Digest, root: Root) -> None:
        if pending.closed:
            raise InvalidArgument("upload already finished")
        if pending.held != dict(enumerate(root.chunks)) or root.total_size != pending.size:
            raise InvalidArgument("root does not match the uploaded chunks")
        pending.closed = True
        if blob in self._roots:  # idempotent Put: the blob was already here
            self._release(list(pending.held.values()))
            self.touch(blob)
            return
        encoded = encode_root(root)
        try:
            self._make_room(len(encoded))
        except StoreFull:
            self._release(list(pending.held.values()))
            raise
        self._kv.persist()  # the chunks are durable before the root names them
        self._roots[blob] = root  # refs move from the pending blob to the root
        self._seq += 1
        self._lru[blob] = self._seq
        self.used_bytes += len(encoded)
        self._kv.write([(_ROOT + blob, encoded), (_META + blob, self._meta(blob))])

    def _make_room(self, needed: int) -> None:
        if self.used_bytes + needed <= self.max_disk_bytes:
            return
        for blob in list(self._lru):
            if self.used_bytes + needed <= self.max_disk_bytes:
                return
            if blob in self._pinned or blob in self._busy:
                continue
            self.delete(blob)
            self.evictions += 1
        if self.used_bytes + needed > self.max_disk_bytes:
            raise StoreFull(needed, self.used_bytes, self.max_disk_bytes)


__all__ = ["DEFAULT_CHUNK_BYTES", "BlobStore", "PendingBlob"]
