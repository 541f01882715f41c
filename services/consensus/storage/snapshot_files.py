"""Snapshot files of one node (Raft §7): its own snapshots, and snapshots
received from a leader in chunks.

Layout, in a directory of its own beside the RocksDB (``DATA/snapshots``)::

    snap-<index:020>-<term:020>.fsnap   complete snapshots (snapshot_format.py)
    *.tmp                               one being written (ours)
    incoming.part                       one being received (chunks so far)

A file only gets its final name once it is complete, verified and fsynced,
and the rename is followed by an fsync of the directory, so after a crash a
``.fsnap`` is always whole; leftover ``.tmp``/``.part`` files are deleted at
start. Receiving stages chunks in ``incoming.part``: a chunk must start where
the previous one ended (offset 0 restarts), must not exceed
``max_chunk_bytes``, and the total must stay under ``max_snapshot_bytes``;
anything else is refused with ``SnapshotRejected`` and the staging dropped.
Installing a verified snapshot into the state machine is the storage's job
(``RocksStorage.install_snapshot``), in one atomic batch.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path

from ..errors import SnapshotRejected
from ..raft.types import SnapshotMeta
from .snapshot_format import (
    SnapshotFormatError,
    read_header,
    read_snapshot,
    verify_snapshot,
    write_snapshot,
)

_NAME = re.compile(r"^snap-(\d{20})-(\d{20})\.fsnap$")
INCOMING = "incoming.part"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FileSnapshotStore:
    def __init__(
        self,
        directory: str | Path,
        *,
        max_snapshot_bytes: int = 4 * 1024 * 1024 * 1024,
        max_chunk_bytes: int = 4 * 1024 * 1024,
    ) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.max_snapshot_bytes = max_snapshot_bytes
        self.max_chunk_bytes = max_chunk_bytes
        for stale in [*self.dir.glob("*.tmp"), *self.dir.glob("*.part")]:
            stale.unlink()
        self._staged: SnapshotMeta | None = None
        self._staged_size = 0

    # ------------------------------------------------------------ stored

    def path_of(self, meta: SnapshotMeta) -> Path:
        return self.dir / f"snap-{meta.index:020d}-{meta.term:020d}.fsnap"

    def list(self) -> list[SnapshotMeta]:
        """Complete snapshots, oldest first (metas read from their headers)."""
        out = []
        for path in sorted(self.dir.iterdir()):
            if not _NAME.match(path.name):
                continue
            with open(path, "rb") as f:
                try:
                    out.append(read_header(f, self.max_snapshot_bytes))
                except SnapshotFormatError:
                    continue
        return out

    def latest(self, max_index: int | None = None) -> SnapshotMeta | None:
        metas = [m for m in self.list() if max_index is None or m.index <= max_index]
        return metas[-1] if metas else None

    def has(self, meta: SnapshotMeta) -> bool:
        return self.path_of(meta).exists()

    def size_of(self, meta: SnapshotMeta) -> int:
        return self.path_of(meta).stat().st_size

    def save(self, meta: SnapshotMeta, records: Iterable[tuple[bytes, bytes]]) -> int:
        """Write our own snapshot durably; returns its size in bytes."""
        final = self.path_of(meta)
        tmp = final.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            size = write_snapshot(f, meta, records)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
        _fsync_dir(self.dir)
        return size

    def read_chunk(self, meta: SnapshotMeta, offset: int, size: int) -> bytes:
        with open(self.path_of(meta), "rb") as f:
            f.seek(offset)
            return f.read(size)

    def install_into(self, meta: SnapshotMeta, install: Callable[[SnapshotMeta, Iterable[tuple[bytes, bytes]]], None]) -> None:
        """Read the stored snapshot ``meta`` and hand its records to
        ``install`` (the node storage's ``install_snapshot``, which consumes
        them all, checksum included, before it writes anything)."""
        with open(self.path_of(meta), "rb") as f:
            got, records = read_snapshot(f, self.max_snapshot_bytes)
            if got != meta:
                raise SnapshotRejected(f"stored snapshot holds {got}, not {meta}")
            install(meta, records)

    def prune(self, keep: Callable[[int], bool]) -> None:
        """Delete the complete snapshots whose index ``keep`` refuses (the
        index is read from the file's name: no file is opened)."""
        for path in self.dir.iterdir():
            m = _NAME.match(path.name)
            if m and not keep(int(m.group(1))):
                path.unlink()

    # ------------------------------------------------------------ receiving

    def receive(self, meta: SnapshotMeta, offset: int, data: bytes, done: bool) -> bool:
        """Stage one chunk of a snapshot sent by a leader. Returns True once the
        snapshot is complete, verified and stored under its final name."""
        part = self.dir / INCOMING
        if len(data) > self.max_chunk_bytes:
            self._drop_staging()
            raise SnapshotRejected(f"chunk of {len(data)} bytes exceeds {self.max_chunk_bytes}")
        if offset == 0:
            self._drop_staging()
            self._staged, self._staged_size = meta, 0
            part.write_bytes(b"")
        elif self._staged != meta or offset != self._staged_size:
            have = self._staged_size if self._staged == meta else 0
            self._drop_staging()
            raise SnapshotRejected(f"chunk at offset {offset} of snapshot {meta.index}; expected {have}")
        if self._staged_size + len(data) > self.max_snapshot_bytes:
            self._drop_staging()
            raise SnapshotRejected(f"snapshot exceeds {self.max_snapshot_bytes} bytes")
        with open(part, "ab") as f:
            f.write(data)
            if done:
                f.flush()
                os.fsync(f.fileno())
        self._staged_size += len(data)
        if not done:
            return False
        try:
            with open(part, "rb") as f:
                got = verify_snapshot(f, self.max_snapshot_bytes)
        except SnapshotFormatError as exc:
            self._drop_staging()
            raise SnapshotRejected(f"received snapshot is invalid: {exc}") from exc
        if got != meta:
            self._drop_staging()
            raise SnapshotRejected(f"received snapshot holds {got}, not {meta}")
        os.replace(part, self.path_of(meta))
        _fsync_dir(self.dir)
        self._staged, self._staged_size = None, 0
        return True

    def _drop_staging(self) -> None:
        self._staged, self._staged_size = None, 0
        with contextlib.suppress(FileNotFoundError):
            (self.dir / INCOMING).unlink()
