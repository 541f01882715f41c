"""Content ids, root objects and the local blob store (in-memory and RocksDB)."""

from __future__ import annotations

import hashlib
import pathlib
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.dht.content import (
    Chunker,
    Root,
    content_id_of,
    decode_root,
    digest_of,
    encode_root,
    format_id,
    parse_id,
    split,
)
from services.dht.errors import (
    ChunkCorrupt,
    DigestMismatch,
    InvalidContentId,
    InvalidRoot,
    NotFound,
    StoreFull,
)
from services.dht.kv import MemoryKeyValue, RocksKeyValue
from services.dht.store import BlobStore


def test_content_id_is_prefixed_sha256() -> None:
    cid = content_id_of(b"hello")
    assert cid == "sha256:" + hashlib.sha256(b"hello").hexdigest()
    assert parse_id(cid) == hashlib.sha256(b"hello").digest()


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "sha256:",
        "md5:" + "0" * 64,
        "sha256:" + "0" * 63,
        "sha256:" + "A" * 64,
        "sha256:" + "g" * 64,
    ],
)
def test_bad_content_ids_are_rejected(bad: str) -> None:
    with pytest.raises(InvalidContentId):
        parse_id(bad)


@given(st.binary(max_size=5000), st.integers(min_value=1, max_value=700))
@settings(max_examples=60, deadline=None)
def test_chunker_matches_split(data: bytes, chunk_bytes: int) -> None:
    root, digest, chunks = split(data, chunk_bytes)
    chunker = Chunker(chunk_bytes)
    streamed: list[bytes] = []
    for i in range(0, len(data), 333):
        streamed += chunker.feed(data[i : i + 333])
    tail, whole = chunker.finish()
    if tail is not None:
        streamed.append(tail)
    assert streamed == chunks
    assert whole == digest == hashlib.sha256(data).digest()
    assert decode_root(encode_root(root)) == root


@pytest.mark.parametrize(
    "mangle",
    [
        lambda b: b[:5],
        lambda b: b"XXXX" + b[4:],
        lambda b: b[:4] + b"\x09" + b[5:],
        lambda b: b + b"\x00",
        lambda b: b[:-1],
    ],
)
def test_bad_roots_are_rejected(mangle) -> None:  # type: ignore[no-untyped-def]
    root, _d, _c = split(b"x" * 100, 30)
    with pytest.raises(InvalidRoot):
        decode_root(mangle(encode_root(root)))


def test_root_chunk_count_must_match_size() -> None:
    with pytest.raises(InvalidRoot):
        Root(10, 25, (digest_of(b"a"),))


def _data(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def _put(store: BlobStore, data: bytes, chunk_bytes: int = 100) -> bytes:
    root, digest, chunks = split(data, chunk_bytes)
    pending = store.begin()
    for c in chunks:
        pending.add_chunk(c)
    pending.commit(digest, root)
    return digest


def _read(store: BlobStore, blob: bytes) -> bytes:
    return b"".join(store.iter_chunks(blob))  # type: ignore[arg-type]


def test_put_read_and_idempotent_put() -> None:
    store = BlobStore(MemoryKeyValue(), 10_000)
    data = bytes(range(256)) * 3
    blob = _put(store, data)
    used = store.used_bytes
    assert _put(store, data) == blob
    assert store.used_bytes == used
    assert _read(store, blob) == data
    assert store.is_complete(blob)  # type: ignore[arg-type]


def test_corrupt_chunk_is_dropped_not_served() -> None:
    kv = MemoryKeyValue()
    store = BlobStore(kv, 10_000)
    data = _data(250, 1)
    blob = _put(store, data)
    key = b"c" + split(data, 100)[0].chunks[1]
    kv.data[key] = b"b" * 100
    with pytest.raises(ChunkCorrupt):
        store.read_chunk(blob, 1)  # type: ignore[arg-type]
    assert key not in kv.data
    assert store.missing_chunks(blob) == [1]  # type: ignore[arg-type]
    with pytest.raises(ChunkCorrupt):
        store.put_chunk(blob, 1, b"c" * 100)  # type: ignore[arg-type]
    store.put_chunk(blob, 1, data[100:200])  # type: ignore[arg-type]
    assert _read(store, blob) == data


def test_full_store_refuses_and_keeps_old_data() -> None:
    store = BlobStore(MemoryKeyValue(), 1_000)
    first = _put(store, _data(600, 1))
    store.set_pinned(first, True)  # type: ignore[arg-type]
    with pytest.raises(StoreFull):
        _put(store, _data(600, 2))
    assert _read(store, first) == _data(600, 1)
    assert store.blobs() == [first]
    assert store.used_bytes < 1_000


def test_lru_unpinned_blob_is_evicted_under_pressure() -> None:
    store = BlobStore(MemoryKeyValue(), 1_500)  # chunks plus roots of ~100 bytes each
    old = _put(store, _data(300, 1))
    pinned = _put(store, _data(300, 2))
    store.set_pinned(pinned, True)  # type: ignore[arg-type]
    recent = _put(store, _data(200, 3))
    store.touch(old)  # type: ignore[arg-type]
    newest = _put(store, _data(300, 4))  # needs room: `recent` is least recently used
    assert set(store.blobs()) == {old, pinned, newest}
    assert recent not in store.blobs()
    assert store.evictions == 1


def test_pending_chunks_from_peer_are_verified() -> None:
    store = BlobStore(MemoryKeyValue(), 10_000)
    root, digest, chunks = split(b"z" * 150, 100)
    pending = store.begin()
    with pytest.raises(DigestMismatch):
        pending.add_chunk(b"y" * 100, index=0, expected=root.chunks[0])
    pending.add_chunk(chunks[1], index=1, expected=root.chunks[1])
    pending.add_chunk(chunks[0], index=0, expected=root.chunks[0])
    pending.verify_whole(digest)
    with pytest.raises(DigestMismatch):
        pending.verify_whole(digest_of(b"other"))
    pending.commit(digest, root)
    assert _read(store, digest) == b"z" * 150


def test_rocksdb_store_survives_reopen_and_drops_orphans(tmp_path: pathlib.Path) -> None:
    path = str(tmp_path / "db")
    store = BlobStore(RocksKeyValue(path), 100_000)
    blob = _put(store, b"q" * 1000)
    store.set_pinned(blob, True)  # type: ignore[arg-type]
    orphan = store.begin()
    orphan.add_chunk(b"never committed")
    used = store.used_bytes
    store.close()
    store = BlobStore(RocksKeyValue(path), 100_000)
    assert store.used_bytes == used - len(b"never committed")
    assert store.is_pinned(blob)  # type: ignore[arg-type]
    assert _read(store, blob) == b"q" * 1000
    with pytest.raises(NotFound):
        store.read_chunk(digest_of(b"nothing"), 0)
    store.close()
    assert format_id(blob).startswith("sha256:")


class CrashingKeyValue(MemoryKeyValue):
    """Unlogged writes live in a 'memtable' until persist; ``crash`` loses them."""

    def __init__(self) -> None:
        super().__init__()
        self.memtable: dict[bytes, bytes] = {}

    def get(self, key: bytes) -> bytes | None:
        return self.memtable.get(key, self.data.get(key))

    def write(self, puts, deletes=()):  # type: ignore[no-untyped-def]
        for key in deletes:
            self.memtable.pop(key, None)
        super().write(puts, deletes)

    def write_unlogged(self, puts):  # type: ignore[no-untyped-def]
        for key, value in puts:
            self.memtable[key] = bytes(value)

    def persist(self) -> None:
        self.data.update(self.memtable)
        self.memtable.clear()

    def scan_keys(self, prefix: bytes):  # type: ignore[no-untyped-def]
        return iter(sorted(k for k in {**self.data, **self.memtable} if k.startswith(prefix)))

    def crash(self) -> None:
        self.memtable.clear()


def test_unlogged_chunks_are_durable_before_their_root() -> None:
    kv = CrashingKeyValue()
    store = BlobStore(kv, 1 << 20)
    root, digest, chunks = split(random.Random(8).randbytes(10_000), 4096)
    pending = store.begin()
    for chunk in chunks:
        pending.add_chunk(chunk)
    kv.crash()  # before commit: the chunks vanish, no root was written
    reopened = BlobStore(kv, 1 << 20)
    assert reopened.blobs() == [] and not kv.data.keys() - {b"!format"}
    store = BlobStore(kv, 1 << 20)
    pending = store.begin()
    for chunk in chunks:
        pending.add_chunk(chunk)
    pending.commit(digest, root)
    kv.crash()  # after commit: everything the root lists survives
    reopened = BlobStore(kv, 1 << 20)
    assert reopened.is_complete(digest)
    assert b"".join(reopened.iter_chunks(digest)) == b"".join(chunks)
