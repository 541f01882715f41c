"""The key-value port under the blob store, and its two implementations.

``KeyValue`` is the small interface the blob store needs: point reads,
atomic batches, ordered prefix scans. ``RocksKeyValue`` is the real one
(rocksdict, raw bytes keys and values); ``MemoryKeyValue`` is the in-memory
one the unit tests use. Neither knows what the keys mean.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Protocol

import rocksdict


class KeyValue(Protocol):
    def get(self, key: bytes) -> bytes | None: ...

    def write(self, puts: Iterable[tuple[bytes, bytes]], deletes: Iterable[bytes] = ()) -> None:
        """Apply every put and delete atomically."""
        ...

    def write_unlogged(self, puts: Iterable[tuple[bytes, bytes]]) -> None:
        """Puts that may be lost in a crash until ``persist`` returns."""
        ...

    def persist(self) -> None:
        """Make every earlier ``write_unlogged`` durable."""
        ...

    def scan_keys(self, prefix: bytes) -> Iterator[bytes]: ...

    def scan(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]: ...

    def close(self) -> None: ...


class MemoryKeyValue:
    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}

    def get(self, key: bytes) -> bytes | None:
        return self.data.get(key)

    def write(self, puts: Iterable[tuple[bytes, bytes]], deletes: Iterable[bytes] = ()) -> None:
        for key in deletes:
            self.data.pop(key, None)
        for key, value in puts:
            self.data[key] = bytes(value)

    def write_unlogged(self, puts: Iterable[tuple[bytes, bytes]]) -> None:
        self.write(puts)

    def persist(self) -> None:
        pass

    def scan_keys(self, prefix: bytes) -> Iterator[bytes]:
        return iter(sorted(k for k in list(self.data) if k.startswith(prefix)))

    def scan(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        return iter([(k, self.data[k]) for k in self.scan_keys(prefix)])

    def close(self) -> None:
        pass


class RocksKeyValue:
    def __init__(self, path: str) -> None:
        options = rocksdict.Options(raw_mode=True)
        # Payloads are usually compressed already (firmware images); block
        # compression only cost CPU on every flush and compaction (bench/dht.py).
        options.set_compression_type(rocksdict.DBCompressionType.none())
        self._db = rocksdict.Rdict(path, options=options)
        # Chunks skip the write-ahead log: with 1 MiB values the WAL wrote every
        # payload byte a second time, half of Put's RocksDB CPU (bench/dht.py).
        # ``persist`` flushes the memtable to a table file (synced by RocksDB)
        # before a root that lists those chunks is written (store.py).
        self._unlogged = rocksdict.WriteOptions()
        # A property at run time; rocksdict's stub wrongly declares a method.
        self._unlogged.disable_wal = True  # type: ignore[method-assign,assignment]

    def get(self, key: bytes) -> bytes | None:
        value = self._db.get(key)
        return None if value is None else bytes(value)

    def write(self, puts: Iterable[tuple[bytes, bytes]], deletes: Iterable[bytes] = ()) -> None:
        batch = rocksdict.WriteBatch(raw_mode=True)
        for key in deletes:
            batch.delete(key)
        for key, value in puts:
            batch.put(key, value)
        self._db.write(batch)

    def write_unlogged(self, puts: Iterable[tuple[bytes, bytes]]) -> None:
        batch = rocksdict.WriteBatch(raw_mode=True)
        for key, value in puts:
            batch.put(key, value)
        self._db.write(batch, write_opt=self._unlogged)

    def persist(self) -> None:
        self._db.flush(True)

    def scan_keys(self, prefix: bytes) -> Iterator[bytes]:
        for key in self._db.keys(from_key=prefix):
            assert isinstance(key, bytes)  # raw mode: keys are bytes
            if not key.startswith(prefix):
                return
            yield key

    def scan(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        for key, value in self._db.items(from_key=prefix):
            assert isinstance(key, bytes) and isinstance(value, bytes)  # raw mode
            if not key.startswith(prefix):
                return
            yield key, value

    def close(self) -> None:
        self._db.flush()
        self._db.close()
