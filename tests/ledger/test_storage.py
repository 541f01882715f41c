"""RocksDB storage: durable hard state and log, truncation, recovery on
restart, and the directory checks that stop a node before it damages data."""

from __future__ import annotations

from pathlib import Path

import pytest
from rocksdict import Options, Rdict

from services.consensus.errors import StorageCorrupt, StorageFull, WrongDataDirectory
from services.consensus.raft.types import Entry, EntryType, HardState
from services.consensus.storage import RocksStorage, log_key


def _entries(first: int, last: int, term: int) -> list[Entry]:
    return [Entry(term=term, index=i, data=f"e{i}".encode()) for i in range(first, last + 1)]


def test_save_and_reload(tmp_path: Path) -> None:
    s = RocksStorage(str(tmp_path), node_id="n1", cluster_id="c")
    s.save(HardState(term=3, vote="n2", commit=2), _entries(1, 5, 3))
    s.close()
    s = RocksStorage(str(tmp_path), node_id="n1", cluster_id="c")
    hs, log = s.load()
    assert hs == HardState(term=3, vote="n2", commit=2)
    assert [e.index for e in log] == [1, 2, 3, 4, 5]
    assert log[0] == Entry(term=3, index=1, type=EntryType.NORMAL, data=b"e1")
    s.close()


def test_conflicting_append_truncates_the_tail(tmp_path: Path) -> None:
    s = RocksStorage(str(tmp_path), node_id="n1", cluster_id="c")
    s.save(None, _entries(1, 6, 1))
    s.save(None, _entries(4, 4, 2))  # a new leader overwrites from index 4
    _, log = s.load()
    assert [(e.index, e.term) for e in log] == [(1, 1), (2, 1), (3, 1), (4, 2)]
    assert s.last_index == 4
    s.close()


def test_directory_of_another_node_is_refused(tmp_path: Path) -> None:
    RocksStorage(str(tmp_path), node_id="n1", cluster_id="c").close()
    with pytest.raises(WrongDataDirectory, match="belongs to node 'n1'"):
        RocksStorage(str(tmp_path), node_id="n2", cluster_id="c")
    with pytest.raises(WrongDataDirectory, match="cluster 'c'"):
        RocksStorage(str(tmp_path), node_id="n1", cluster_id="other")
    # The refusal changed nothing: the rightful owner still opens it.
    RocksStorage(str(tmp_path), node_id="n1", cluster_id="c").close()


def test_corrupt_record_stops_loading(tmp_path: Path) -> None:
    s = RocksStorage(str(tmp_path), node_id="n1", cluster_id="c")
    s.save(HardState(term=1), _entries(1, 3, 1))
    s.close()
    opts = Options(raw_mode=True)
    db = Rdict(str(tmp_path), opts)
    raw = bytearray(db[log_key(2)])
    raw[-1] ^= 0xFF
    db[log_key(2)] = bytes(raw)
    db.close()
    s = RocksStorage(str(tmp_path), node_id="n1", cluster_id="c")
    with pytest.raises(StorageCorrupt, match="checksum"):
        s.load()
    s.close()


def test_disk_full_is_a_typed_error_and_keeps_old_data(tmp_path: Path) -> None:
    s = RocksStorage(str(tmp_path), node_id="n1", cluster_id="c")
    s.save(HardState(term=1, commit=1), _entries(1, 2, 1))

    class FullDB:
        def __init__(self, real: Rdict) -> None:
            self.real = real

        def write(self, batch: object, opts: object) -> None:
            raise Exception("IO error: No space left on device: While appending to file")

        def __getattr__(self, name: str) -> object:
            return getattr(self.real, name)

    real = s._kv._db  # type: ignore[attr-defined]  # noqa: SLF001 (fault injection at the third-party edge)
    s._kv._db = FullDB(real)  # type: ignore[attr-defined]  # noqa: SLF001
    with pytest.raises(StorageFull, match="disk full"):
        s.save(HardState(term=2), _entries(3, 3, 2))
    s._kv._db = real  # type: ignore[attr-defined]  # noqa: SLF001
    hs, log = s.load()
    assert hs.term == 1 and [e.index for e in log] == [1, 2]
    s.close()
