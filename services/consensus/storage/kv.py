"""The ordered key-value store under a node's storage: RocksDB (rocksdict)
in production, a sorted in-memory twin in tests and in the whole-node
simulation. Only what the storage needs: point reads, ordered scans, the
last key under a prefix, and atomic batches that may be synced.

Nothing here knows the key layout (``layout.py`` does)."""

from __future__ import annotations

import bisect
import os
from collections.abc import Iterator
from typing import Protocol

from rocksdict import BlockBasedOptions, Options, Rdict, WriteBatch, WriteOptions


class WriteBatchLike(Protocol):
    """Writes applied atomically, in order, by ``KeyValue.write``; made by
    ``KeyValue.batch()`` (RocksDB's own WriteBatch, or ``Batch``)."""

    def put(self, key: bytes, value: bytes) -> None: ...

    def delete(self, key: bytes) -> None: ...

    def delete_range(self, start: bytes, end: bytes) -> None:
        """Delete every key in [start, end)."""
        ...


class Batch:
    """The in-memory twin's batch: the writes, in order."""

    __slots__ = ("ops",)

    def __init__(self) -> None:
        self.ops: list[tuple[int, bytes, bytes]] = []

    def put(self, key: bytes, value: bytes) -> None:
        self.ops.append((_PUT, key, value))

    def delete(self, key: bytes) -> None:
        self.ops.append((_DELETE, key, b""))

    def delete_range(self, start: bytes, end: bytes) -> None:
        """Delete every key in [start, end)."""
        self.ops.append((_RANGE, start, end))


_PUT, _DELETE, _RANGE = 0, 1, 2


class KeyValue(Protocol):
    def batch(self) -> WriteBatchLike: ...

    def get(self, key: bytes) -> bytes | None: ...

    def scan(self, start: bytes, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        """Pairs in key order from ``start`` while keys begin with ``prefix``."""
        ...

    def last_key(self, prefix: bytes) -> bytes | None:
        """The greatest key that begins with ``prefix`` (None: no such key)."""
        ...

    def write(self, batch: WriteBatchLike, *, sync: bool) -> None:
        """Apply a batch of this store's ``batch()`` atomically; durable
        before returning if ``sync``."""
        ...

    def close(self) -> None: ...


class RocksKeyValue:
    """RocksDB through rocksdict, in raw mode."""

    def __init__(self, path: str) -> None:
        os.makedirs(path, exist_ok=True)
        options = Options(raw_mode=True)
        options.create_if_missing(True)
        # Bloom filters: every submission looks its request key up (on the
        # leader twice), and nearly every lookup misses; a filter answers a
        # miss without reading blocks (about 1.2 -> 0.5 µs here).
        table = BlockBasedOptions()
        table.set_bloom_filter(10, False)
        options.set_block_based_table_factory(table)
        self._db = Rdict(path, options)
        self._nosync = WriteOptions()

    def batch(self) -> WriteBatchLike:
        return WriteBatch(raw_mode=True)

    def get(self, key: bytes) -> bytes | None:
        raw: bytes | None = self._db.get(key)  # raw mode: bytes
        return raw

    def scan(self, start: bytes, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        it = self._db.iter()
        it.seek(start)
        while it.valid():
            key = bytes(it.key())
            if not key.startswith(prefix):
                break
            yield key, bytes(it.value())
            it.next()

    def last_key(self, prefix: bytes) -> bytes | None:
        it = self._db.iter()
        it.seek_for_prev(prefix + b"\xff" * 16)
        if it.valid():
            key = bytes(it.key())
            if key.startswith(prefix):
                return key
        return None

    def write(self, batch: WriteBatchLike, *, sync: bool) -> None:
        # A synced write in rocksdict holds the GIL through the fsync and
        # stalls every thread of the process; an unsynced write followed by
        # FlushWAL(sync=true), which releases it, is just as durable.
        self._db.write(batch, self._nosync)  # type: ignore[arg-type]  # a batch() of ours: a WriteBatch
        if sync:
            self._db.flush_wal(True)

    def close(self) -> None:
        self._db.close()


class MemoryKeyValue:
    """The in-memory twin: a dict and a sorted key list. Every write is
    "durable" at once (a simulated crash loses the process, not the disk).
    ``full`` makes every write fail as a full disk would."""

    def __init__(self) -> None:
        self._data: dict[bytes, bytes] = {}
        self._keys: list[bytes] = []
        self.full = False
        self.syncs = 0

    def batch(self) -> WriteBatchLike:
        return Batch()

    def get(self, key: bytes) -> bytes | None:
        return self._data.get(key)

    def scan(self, start: bytes, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        i = bisect.bisect_left(self._keys, start)
        while i < len(self._keys):
            key = self._keys[i]
            if not key.startswith(prefix):
                break
            yield key, self._data[key]
            i += 1

    def last_key(self, prefix: bytes) -> bytes | None:
        i = bisect.bisect_right(self._keys, prefix + b"\xff" * 16)
        if i and self._keys[i - 1].startswith(prefix):
            return self._keys[i - 1]
        return None

    def write(self, batch: WriteBatchLike, *, sync: bool) -> None:
        if self.full:
            raise OSError(28, "No space left on device")
        assert isinstance(batch, Batch)
        for op, key, value in batch.ops:
            if op == _PUT:
                if key not in self._data:
                    bisect.insort(self._keys, key)
                self._data[key] = value
            elif op == _DELETE:
                if self._data.pop(key, None) is not None:
                    del self._keys[bisect.bisect_left(self._keys, key)]
            else:
                lo = bisect.bisect_left(self._keys, key)
                hi = bisect.bisect_left(self._keys, value)
                for k in self._keys[lo:hi]:
                    del self._data[k]
                del self._keys[lo:hi]
        if sync:
            self.syncs += 1

    def close(self) -> None:
        pass
