"""Snapshots of the ledger state machine (Raft §7): the format, chunked
receiving with staging, atomic installation, and what is refused."""

from __future__ import annotations

import io
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleetsuit.v1 import consensus_pb2 as pb
from services.consensus.errors import SnapshotRejected, StorageError
from services.consensus.ledger.codec import encode_batch
from services.consensus.ledger.keys import RequestKey
from services.consensus.ledger.machine import LedgerMachine
from services.consensus.raft.types import Entry, SnapshotMeta
from services.consensus.storage import FileSnapshotStore, RocksStorage
from services.consensus.storage.snapshot_format import (
    SnapshotFormatError,
    read_snapshot,
    verify_snapshot,
    write_snapshot,
)

META = SnapshotMeta(index=40, term=3, voters=("n1", "n2", "n3"))


def _entry(index: int, client: str, rid: int) -> Entry:
    e = pb.LedgerEntry(client_id=client, request_id=rid, app=pb.AppEntry(payload=f"{client}:{rid}".encode()))
    return Entry(term=3, index=index, data=encode_batch([e.SerializeToString()]))


def _ledger(path: Path, entries: int, node_id: str = "n1") -> tuple[RocksStorage, LedgerMachine]:
    storage = RocksStorage(str(path), node_id=node_id, cluster_id="c")
    machine = LedgerMachine(storage, cluster_id="c")
    machine.apply([_entry(i, "client", i) for i in range(1, entries + 1)])
    return storage, machine


def _snapshot_bytes(storage: RocksStorage, meta: SnapshotMeta) -> bytes:
    out = io.BytesIO()
    write_snapshot(out, meta, storage.state_records(storage.state_view()))
    return out.getvalue()


def test_install_reproduces_the_applied_state(tmp_path: Path) -> None:
    src, src_machine = _ledger(tmp_path / "a", 40)
    data = _snapshot_bytes(src, META)
    dst, _ = _ledger(tmp_path / "b", 5, node_id="n2")
    dst.save(None, [Entry(term=1, index=i) for i in range(1, 6)])
    meta, records = read_snapshot(io.BytesIO(data), len(data))
    assert meta == META
    dst.install_snapshot(meta, records)
    machine = LedgerMachine(dst, cluster_id="c")
    assert machine.applied_index() == 40
    assert machine.height == src_machine.height
    assert machine.head_hash == src_machine.head_hash
    assert dst.get_request(RequestKey("client", 17)) == src.get_request(RequestKey("client", 17))
    assert dst.load()[1] == []  # the log the snapshot covers is gone
    src.close()
    dst.close()


def test_compaction_records_where_the_log_starts_and_survives_a_restart(tmp_path: Path) -> None:
    storage, machine = _ledger(tmp_path / "a", 30)
    storage.save(None, [_entry(i, "client", i) for i in range(1, 31)])
    assert storage.compacted() is None
    meta = SnapshotMeta(index=20, term=3, voters=("n1", "n2", "n3"), learners=("n4",))
    storage.compact_log(meta)
    assert [e.index for e in storage.load()[1]] == list(range(21, 31))
    head = machine.head_hash
    storage.close()
    storage = RocksStorage(str(tmp_path / "a"), node_id="n1", cluster_id="c")
    assert storage.compacted() == meta
    assert [e.index for e in storage.load()[1]] == list(range(21, 31))
    assert LedgerMachine(storage, cluster_id="c").head_hash == head  # the applied state is untouched
    storage.close()


def test_compaction_never_passes_the_applied_index(tmp_path: Path) -> None:
    storage, _ = _ledger(tmp_path / "a", 10)
    storage.save(None, [_entry(i, "client", i) for i in range(1, 16)])
    with pytest.raises(StorageError, match="applied only 10"):
        storage.compact_log(SnapshotMeta(index=12, term=3, voters=("n1",)))
    assert storage.compacted() is None
    assert len(storage.load()[1]) == 15
    storage.close()


def test_installing_a_snapshot_records_its_point_as_the_log_start(tmp_path: Path) -> None:
    src, _ = _ledger(tmp_path / "a", 40)
    data = _snapshot_bytes(src, META)
    dst = RocksStorage(str(tmp_path / "b"), node_id="n2", cluster_id="c")
    dst.install_snapshot(*read_snapshot(io.BytesIO(data), len(data)))
    assert dst.compacted() == META
    src.close()
    dst.close()


def test_a_view_is_consistent_while_the_state_moves_on(tmp_path: Path) -> None:
    storage, machine = _ledger(tmp_path / "a", 10)
    view = storage.state_view()
    machine.apply([_entry(i, "late", i) for i in range(11, 21)])
    records = dict(storage.state_records(view))
    assert struct.unpack(">Q", records[b"a/applied"])[0] == 10
    assert not any(k.startswith(b"r/late") for k in records)
    storage.close()


def _received(store: FileSnapshotStore, data: bytes, chunk: int) -> bool:
    done = False
    for offset in range(0, len(data), chunk):
        piece = data[offset : offset + chunk]
        done = store.receive(META, offset, piece, offset + len(piece) >= len(data))
    return done


@pytest.mark.parametrize("chunk", [1, 7, 1024, 10**6])
def test_chunks_are_staged_and_the_complete_snapshot_stored(tmp_path: Path, chunk: int) -> None:
    storage, _ = _ledger(tmp_path / "a", 8)
    data = _snapshot_bytes(storage, META)
    store = FileSnapshotStore(tmp_path / "snaps", max_chunk_bytes=10**6)
    assert _received(store, data, chunk)
    assert store.latest() == META
    assert store.path_of(META).read_bytes() == data
    assert not (tmp_path / "snaps" / "incoming.part").exists()
    storage.close()


def test_a_chunk_out_of_place_is_refused_and_the_staging_dropped(tmp_path: Path) -> None:
    storage, _ = _ledger(tmp_path / "a", 8)
    data = _snapshot_bytes(storage, META)
    store = FileSnapshotStore(tmp_path / "snaps")
    store.receive(META, 0, data[:100], False)
    with pytest.raises(SnapshotRejected, match="offset"):
        store.receive(META, 150, data[150:200], False)  # a gap
    with pytest.raises(SnapshotRejected, match="offset"):
        store.receive(META, 100, data[100:200], False)  # the staging is gone: start again at 0
    store.receive(META, 0, data[:100], False)
    other = SnapshotMeta(index=41, term=3, voters=META.voters)
    with pytest.raises(SnapshotRejected):
        store.receive(other, 100, data[100:], True)  # another snapshot's chunk
    assert store.latest() is None
    storage.close()


def test_oversized_chunks_and_snapshots_are_refused(tmp_path: Path) -> None:
    store = FileSnapshotStore(tmp_path / "snaps", max_chunk_bytes=1024, max_snapshot_bytes=4096)
    with pytest.raises(SnapshotRejected, match="chunk"):
        store.receive(META, 0, b"x" * 1025, False)
    for i in range(4):
        store.receive(META, i * 1024, b"x" * 1024, False)
    with pytest.raises(SnapshotRejected, match="exceeds"):
        store.receive(META, 4096, b"x", False)


def test_a_flipped_byte_or_a_wrong_meta_is_refused_at_the_end(tmp_path: Path) -> None:
    storage, _ = _ledger(tmp_path / "a", 8)
    data = bytearray(_snapshot_bytes(storage, META))
    store = FileSnapshotStore(tmp_path / "snaps")
    data[len(data) // 2] ^= 0x01
    with pytest.raises(SnapshotRejected, match="invalid"):
        _received(store, bytes(data), 64)
    data[len(data) // 2] ^= 0x01
    wrong = SnapshotMeta(index=40, term=4, voters=META.voters)
    with pytest.raises(SnapshotRejected, match="holds"):
        store.receive(wrong, 0, bytes(data), True)
    assert store.latest() is None
    storage.close()


def test_a_crash_mid_transfer_leaves_no_snapshot(tmp_path: Path) -> None:
    storage, _ = _ledger(tmp_path / "a", 8)
    data = _snapshot_bytes(storage, META)
    store = FileSnapshotStore(tmp_path / "snaps")
    store.receive(META, 0, data[:200], False)
    restarted = FileSnapshotStore(tmp_path / "snaps")  # the process died mid-transfer
    assert restarted.latest() is None
    assert not (tmp_path / "snaps" / "incoming.part").exists()
    storage.close()


def test_a_crash_mid_install_leaves_the_old_state(tmp_path: Path) -> None:
    src, _ = _ledger(tmp_path / "a", 40)
    data = _snapshot_bytes(src, META)
    dst, dst_machine = _ledger(tmp_path / "b", 5, node_id="n2")
    before = (dst_machine.applied_index(), dst_machine.height, dst_machine.head_hash)

    def dies_halfway() -> Iterator[tuple[bytes, bytes]]:
        _, records = read_snapshot(io.BytesIO(data), len(data))
        for n, record in enumerate(records):
            if n == 20:
                raise OSError("killed")
            yield record

    with pytest.raises(OSError):
        dst.install_snapshot(META, dies_halfway())
    truncated = data[: len(data) - 10]
    with pytest.raises(SnapshotFormatError):
        dst.install_snapshot(META, read_snapshot(io.BytesIO(truncated), len(data))[1])
    dst.close()
    reopened = RocksStorage(str(tmp_path / "b"), node_id="n2", cluster_id="c")
    machine = LedgerMachine(reopened, cluster_id="c")
    assert (machine.applied_index(), machine.height, machine.head_hash) == before
    reopened.close()
    src.close()


def test_keys_outside_the_applied_state_are_refused(tmp_path: Path) -> None:
    out = io.BytesIO()
    with pytest.raises(SnapshotFormatError):
        write_snapshot(out, META, [(b"m/identity", b"evil")])
    # Forge one by hand: a record naming a log key.
    good = io.BytesIO()
    write_snapshot(good, META, [(b"b/\x00", b"v")])
    raw = good.getvalue().replace(b"b/\x00", b"l/\x00")
    with pytest.raises(SnapshotFormatError, match="not part of the applied state"):
        verify_snapshot(io.BytesIO(raw), len(raw))


def test_bounds_are_checked_before_reading(tmp_path: Path) -> None:
    head = io.BytesIO()
    write_snapshot(head, META, [])
    raw = head.getvalue()
    header_len = struct.unpack_from(">I", raw, 6)[0]
    huge = raw[: 10 + header_len] + struct.pack(">II", 10, 2**31) + b"k" * 10
    with pytest.raises(SnapshotFormatError, match="bounds"):
        verify_snapshot(io.BytesIO(huge), 2**40)
    with pytest.raises(SnapshotFormatError, match="limit"):
        verify_snapshot(io.BytesIO(raw), 20)
