"""Where a restarted node's log starts: the compaction point recorded in
RocksDB (no snapshot file needed), or, for a data directory written before
that point was recorded, its newest snapshot file. Files that can serve
nobody are deleted at start."""

from __future__ import annotations

import random
from pathlib import Path

from fleetsuit.v1 import consensus_pb2 as pb
from services.consensus.ledger.codec import encode_batch
from services.consensus.ledger.machine import LedgerMachine
from services.consensus.metrics import ConsensusMetrics
from services.consensus.raft.types import Entry, HardState, RaftConfig, SnapshotMeta
from services.consensus.runtime import ConsensusNode, RuntimeConfig
from services.consensus.storage import FileSnapshotStore, RocksStorage

VOTERS = ("n1",)


class NoTransport:
    def send(self, messages: object) -> None:
        raise AssertionError("nothing is sent before the node starts")


def _entries(last: int) -> list[Entry]:
    return [
        Entry(term=1, index=i, data=encode_batch([pb.LedgerEntry(
            client_id="c", request_id=i, app=pb.AppEntry(payload=b"x")).SerializeToString()]))
        for i in range(1, last + 1)
    ]


def _applied_storage(path: Path, last: int) -> RocksStorage:
    storage = RocksStorage(str(path / "db"), node_id="n1", cluster_id="c")
    entries = _entries(last)
    storage.save(HardState(term=1, vote="n1", commit=last), entries)
    LedgerMachine(storage, cluster_id="c").apply(entries)
    return storage


def _node(path: Path, storage: RocksStorage, **options: int) -> tuple[ConsensusNode, FileSnapshotStore]:
    store = FileSnapshotStore(path / "snapshots")
    config = RuntimeConfig(RaftConfig("n1", VOTERS), cluster_id="c", tick_s=0.01, **options)
    node = ConsensusNode(
        config, storage, NoTransport(), ConsensusMetrics(),  # type: ignore[arg-type]
        random.Random(1), snapshots=store,
    )
    return node, store


def test_a_node_restarts_from_its_recorded_compaction_point_without_a_file(tmp_path: Path) -> None:
    storage = _applied_storage(tmp_path, 30)
    storage.compact_log(SnapshotMeta(20, 1, VOTERS))
    node, store = _node(tmp_path, storage)
    status = node.status()
    assert status.snapshot_index == 20 and status.applied_index == 30
    assert status.last_log_index == 30
    assert [e.index for e in storage.load()[1]] == list(range(21, 31))
    assert store.list() == []
    storage.close()


def test_an_older_data_directory_starts_from_its_newest_snapshot_file(tmp_path: Path) -> None:
    storage = _applied_storage(tmp_path, 30)
    store = FileSnapshotStore(tmp_path / "snapshots")
    older, newest = SnapshotMeta(10, 1, VOTERS), SnapshotMeta(25, 1, VOTERS)
    for meta in (older, newest):
        store.save(meta, storage.state_records(storage.state_view()))
    store.save(SnapshotMeta(40, 1, VOTERS), [])  # received, never installed: beyond the applied index
    assert storage.compacted() is None
    node, store = _node(tmp_path, storage)
    assert node.status().snapshot_index == 25
    assert storage.compacted() == newest  # recorded now
    assert [e.index for e in storage.load()[1]] == list(range(26, 31))
    assert store.list() == [newest]  # the one that can still serve a lagging follower
    storage.close()


def test_a_log_that_outgrows_its_byte_bound_is_compacted_before_the_entry_count(tmp_path: Path) -> None:
    """Large entries: the log held in memory is bounded by bytes, keeping a
    tail of at most half of them behind the applied index."""
    storage = _applied_storage(tmp_path, 30)
    entry_bytes = len(_entries(1)[0].data)
    node, store = _node(tmp_path, storage, compact_every_entries=10_000, compact_log_bytes=20 * entry_bytes)
    node.compaction.maybe_compact(node.machine.applied_index())  # 30 entries held: over the bound of 20
    status = node.status()
    assert status.snapshot_index == 20  # a tail of 10 entries, half the bound
    assert [e.index for e in storage.load()[1]] == list(range(21, 31))
    assert storage.compacted() == SnapshotMeta(20, 1, VOTERS)
    assert store.list() == []  # and no file written
    node.compaction.maybe_compact(node.machine.applied_index())  # 10 entries held: nothing to do
    assert node.status().snapshot_index == 20
    storage.close()
