"""Real processes on loopback: a follower that was down while the others
wrote and compacted their logs catches up through InstallSnapshot and ends
with the same chain, hash for hash. Compaction writes no snapshot file (the
applied ledger in RocksDB is the snapshot); the leader writes one only when
the follower needs it, and a node restarted after compaction starts from the
recorded compaction point."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleetsuit.grpcutil import insecure_channel
from fleetsuit.v1 import consensus_pb2 as pb
from fleetsuit.v1 import consensus_pb2_grpc as pb_grpc
from services.consensus.convert import block_from_pb
from services.consensus.ledger.block import verify_chain
from tests.support.cluster import LocalCluster
from tests.support.wait import wait_for

from .test_consensus_failover import _all_applied, _leader

pytestmark = pytest.mark.slow

SNAPSHOT_ENTRIES = 150


@pytest.fixture
def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalCluster]:
    monkeypatch.setenv("FLEETSUIT_CONSENSUS_COMPACT_EVERY_ENTRIES", str(SNAPSHOT_ENTRIES))
    monkeypatch.setenv("FLEETSUIT_CONSENSUS_COMPACT_KEEP_ENTRIES", "20")
    monkeypatch.setenv("FLEETSUIT_CONSENSUS_SNAPSHOT_CHUNK_BYTES", "65536")
    c = LocalCluster(3, tmp_path)
    try:
        yield c
    finally:
        c.close()


async def write_entries(stub: pb_grpc.LedgerStub, client_id: str, count: int, workers: int = 16) -> None:
    """``count`` acknowledged entries from concurrent unary submissions (many Raft entries)."""
    ids = iter(range(1, count + 1))

    async def worker() -> None:
        for rid in ids:
            entry = pb.LedgerEntry(client_id=client_id, request_id=rid, app=pb.AppEntry(payload=b"x" * 64))
            await stub.Submit(pb.SubmitRequest(entry=entry, timeout_ms=5000), timeout=10)

    await asyncio.gather(*(worker() for _ in range(workers)))


async def chain(stub: pb_grpc.LedgerStub) -> list[bytes]:
    blocks = [block_from_pb(b) async for b in stub.ExportBlocks(pb.ExportRequest(from_height=1))]
    verify_chain(blocks)
    return [b.hash for b in blocks]


@pytest.mark.asyncio
async def test_lagging_follower_catches_up_through_a_snapshot(cluster: LocalCluster) -> None:
    ids = [n["id"] for n in cluster.nodes]
    channels = {nid: insecure_channel(cluster.endpoint(nid)) for nid in ids}
    stubs = {nid: pb_grpc.LedgerStub(ch) for nid, ch in channels.items()}
    try:
        leader = await wait_for(lambda: _leader(stubs), 30, "a leader")
        lagging = next(n for n in ids if n != leader)
        cluster.kill(lagging, sig=signal.SIGTERM)
        behind = (await stubs[leader].Status(pb.StatusRequest(), timeout=2)).commit_index

        rounds = iter(range(100))

        async def compacted() -> pb.StatusResponse | None:
            # Few concurrent writers: batches stay small, so many Raft entries.
            await write_entries(stubs[leader], f"writer-{next(rounds)}", SNAPSHOT_ENTRIES // 2, workers=3)
            s = await stubs[leader].Status(pb.StatusRequest(), timeout=2)
            return s if s.snapshot_index > behind + 1 else None

        status = await wait_for(compacted, 30, "the leader compacting past the stopped follower")
        leader_files = Path(cluster.node(leader)["data_dir"]) / "snapshots"
        assert not list(leader_files.glob("*.fsnap")), "compaction alone must not write a snapshot file"
        cluster.restart(lagging)

        async def caught_up() -> bool | None:
            s = await stubs[lagging].Status(pb.StatusRequest(), timeout=2)
            return True if s.applied_index >= status.commit_index and s.snapshot_index > behind else None

        await wait_for(caught_up, 30, f"{lagging} catching up through a snapshot")
        reference = await chain(stubs[leader])
        got = await chain(stubs[lagging])
        assert got[: len(reference)] == reference[: len(got)] and len(got) >= len(reference) - 5
        # And it keeps following: a new entry reaches it.
        await write_entries(stubs[leader], "after", 1, workers=1)
        head = (await stubs[leader].Status(pb.StatusRequest(consistent=True), timeout=5)).applied_index
        await wait_for(
            lambda: _at_least(stubs[lagging], head), 20, f"{lagging} applying new entries after the snapshot"
        )
        log = (Path(cluster.node(lagging)["data_dir"]) / "consensus.log").read_text()
        assert "installed snapshot" in log
        assert len(list(leader_files.glob("*.fsnap"))) == 1, "one file, written for the lagging follower"

        # Every node restarts from its compaction point (no file needed) and
        # still serves the whole chain.
        for nid in ids:
            cluster.kill(nid)
        for nid in ids:
            cluster.restart(nid)
        await wait_for(lambda: _leader(stubs), 30, "a leader after restarting every node")
        entry = pb.LedgerEntry(client_id="after-restart", request_id=1, app=pb.AppEntry(payload=b"x"))
        ack = await stubs[lagging].Submit(pb.SubmitRequest(entry=entry, timeout_ms=5000), timeout=10)
        for nid in ids:
            await wait_for(lambda nid=nid: _at_least(stubs[nid], ack.index), 20, f"{nid} applying after restart")
            s = await stubs[nid].Status(pb.StatusRequest(), timeout=2)
            assert s.snapshot_index > behind  # it started from its compaction point
        chains = [await chain(stubs[nid]) for nid in ids]
        for got in chains:
            assert len(got) >= ack.block_height
            assert got[: ack.block_height] == chains[0][: ack.block_height]
    finally:
        for ch in channels.values():
            await ch.close()


async def _at_least(stub: pb_grpc.LedgerStub, index: int) -> bool | None:
    s = await stub.Status(pb.StatusRequest(), timeout=2)
    return True if s.applied_index >= index else None


@pytest.mark.asyncio
async def test_consistent_reads_on_followers_see_every_acknowledged_write(cluster: LocalCluster) -> None:
    """ReadIndex: a read that starts after a write was acknowledged sees it,
    on any node (a plain read on a follower may not, yet)."""
    ids = [n["id"] for n in cluster.nodes]
    channels = {nid: insecure_channel(cluster.endpoint(nid)) for nid in ids}
    stubs = {nid: pb_grpc.LedgerStub(ch) for nid, ch in channels.items()}
    try:
        leader = await wait_for(lambda: _leader(stubs), 30, "a leader")
        await wait_for(lambda: _all_applied(stubs, 1), 30, "every node up and following")
        followers = [n for n in ids if n != leader]
        for rid in range(1, 31):
            entry = pb.LedgerEntry(client_id="reader-check", request_id=rid, app=pb.AppEntry(payload=b"v"))
            acked = await stubs[leader].Submit(pb.SubmitRequest(entry=entry), timeout=5)
            follower = followers[rid % 2]
            status = await stubs[follower].Status(pb.StatusRequest(consistent=True), timeout=5)
            assert status.applied_index >= acked.index
            block = await stubs[follower].GetBlock(
                pb.GetBlockRequest(height=acked.block_height, consistent=True), timeout=5
            )
            assert pb.LedgerEntry.FromString(block.entries[-1]).request_id == rid
    finally:
        for ch in channels.values():
            await ch.close()
