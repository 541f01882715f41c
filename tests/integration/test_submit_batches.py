"""SubmitBatches and the SubmitBatcher client on a real 3-node cluster:
concurrent callers' entries travel many to a message and each caller gets its
own answer; a retry of an applied key is answered from the request table; an
invalid entry fails alone; a stream cut by kill -9 fails what was in flight
with StreamBroken, and resubmitting those keys elsewhere applies each once."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from fleetsuit.ledger_client import StreamBroken, SubmitBatcher, SubmitFailed
from fleetsuit.v1 import consensus_pb2 as pb
from fleetsuit.v1 import consensus_pb2_grpc as pb_grpc
from tests.support.cluster import LocalCluster, ledger_stubs
from tests.support.wait import wait_for

from .test_consensus_failover import _all_applied, _leader_seen_by_all, _ready

pytestmark = pytest.mark.slow


def _entry(client: str, rid: int) -> pb.LedgerEntry:
    return pb.LedgerEntry(client_id=client, request_id=rid, app=pb.AppEntry(payload=f"{client}:{rid}".encode()))


async def _applied_keys(stub: pb_grpc.LedgerStub, client: str) -> list[int]:
    """Every request id of ``client`` in the chain, in chain order (repeats kept)."""
    out = []
    async for block in stub.ExportBlocks(pb.ExportRequest(from_height=1)):
        for raw in block.entries:
            e = pb.LedgerEntry.FromString(raw)
            if e.client_id == client:
                out.append(e.request_id)
    return out


@pytest.mark.asyncio
async def test_batcher_answers_each_caller_and_batches_on_the_wire(cluster: LocalCluster) -> None:
    ids = [n["id"] for n in cluster.nodes]
    async with ledger_stubs(cluster) as stubs:
        leader = await wait_for(lambda: _leader_seen_by_all(stubs), 30, "a leader known to all")
        follower = next(nid for nid in ids if nid != leader)
        batcher = SubmitBatcher(stubs[follower], client_id="batched")  # forwarded to the leader
        callers, per_caller = 40, 10

        async def caller(c: int) -> list[pb.SubmitStreamResponse]:
            return [await batcher.submit(_entry("batched", c * per_caller + n + 1)) for n in range(per_caller)]

        answers = [a for got in await asyncio.gather(*(caller(c) for c in range(callers))) for a in got]
        total = callers * per_caller
        assert sorted(a.request_id for a in answers) == list(range(1, total + 1))
        assert all(a.index > 0 and a.block_height > 0 and not a.duplicate for a in answers)
        # Callers overlapped, so entries shared messages both ways.
        assert batcher.messages_sent < total / 4, batcher.messages_sent
        assert batcher.messages_received < total / 4, batcher.messages_received

        # A retry of an applied key gets the original answer; an invalid entry
        # fails alone, beside a valid one in the same message.
        first = next(a for a in answers if a.request_id == 7)
        oversized = pb.LedgerEntry(client_id="batched", request_id=total + 3,
                                   app=pb.AppEntry(payload=bytes(2 * 1024 * 1024)))  # limit: 1.5 MiB
        retry, invalid, fresh, too_big = await asyncio.gather(
            batcher.submit(_entry("batched", 7)),
            batcher.submit(pb.LedgerEntry(client_id="batched", request_id=total + 2)),
            batcher.submit(_entry("batched", total + 1)),
            batcher.submit(oversized),
            return_exceptions=True,
        )
        assert isinstance(retry, pb.SubmitStreamResponse)
        assert retry.duplicate and retry.index == first.index and retry.block_height == first.block_height
        assert isinstance(invalid, SubmitFailed) and invalid.code == "INVALID_ENTRY"
        assert isinstance(too_big, SubmitFailed) and too_big.code == "INVALID_ENTRY", too_big
        assert isinstance(fresh, pb.SubmitStreamResponse) and fresh.index > max(a.index for a in answers)

        await wait_for(lambda: _all_applied(stubs, fresh.index), 30, "application everywhere")
        for stub in stubs.values():
            assert sorted(await _applied_keys(stub, "batched")) == list(range(1, total + 2))
        await batcher.close()


@pytest.mark.asyncio
async def test_a_cut_stream_fails_in_flight_entries_and_a_resubmission_applies_once(
    cluster: LocalCluster,
) -> None:
    ids = [n["id"] for n in cluster.nodes]
    async with ledger_stubs(cluster) as stubs:
        leader = await wait_for(lambda: _leader_seen_by_all(stubs), 30, "a leader known to all")
        follower = next(nid for nid in ids if nid != leader)
        doomed = SubmitBatcher(stubs[follower], client_id="cut", timeout_ms=3000)
        acked: dict[int, int] = {}
        broken: list[int] = []
        stop = asyncio.Event()
        next_id = iter(range(1, 1_000_000))

        async def caller() -> None:
            while not stop.is_set():
                rid = next(next_id)
                try:
                    acked[rid] = (await doomed.submit(_entry("cut", rid))).index
                except StreamBroken:
                    broken.append(rid)
                    return

        tasks = [asyncio.create_task(caller()) for _ in range(16)]
        await wait_for(lambda: _ready(len(acked) >= 300), 60, "300 acknowledged entries")
        cluster.kill(follower)
        done, pending = await asyncio.wait(tasks, timeout=30)
        stop.set()
        assert not pending, "callers still waiting after their stream was cut"
        assert broken, "no entry was in flight when the stream was cut"

        # Resubmit the unanswered keys (and some answered ones) through the leader.
        survivor = SubmitBatcher(stubs[leader], client_id="cut")
        again = await asyncio.gather(*(survivor.submit(_entry("cut", rid)) for rid in [*broken, *list(acked)[:20]]))
        for rid, answer in zip([*broken, *list(acked)[:20]], again, strict=True):
            assert answer.request_id == rid and not answer.error_code
            if rid in acked:
                assert answer.duplicate and answer.index == acked[rid]
        await survivor.close()
        await doomed.close()

        keys = await _applied_keys(stubs[leader], "cut")
        assert len(keys) == len(set(keys)), "an entry was applied twice"
        assert set(acked) | set(broken) <= set(keys)


@pytest.mark.asyncio
async def test_a_node_refuses_submissions_beyond_its_pending_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLEETSUIT_CONSENSUS_MAX_PENDING_SUBMISSIONS", "5")
    cluster = LocalCluster(3, tmp_path)
    try:
        async with ledger_stubs(cluster) as stubs:
            leader = await wait_for(lambda: _leader_seen_by_all(stubs), 30, "a leader known to all")
            batcher = SubmitBatcher(stubs[leader], client_id="flood")
            for round_ in range(2):
                # Twelve in one message: five wait for commit, seven are refused at once.
                first = round_ * 100
                results = await asyncio.gather(
                    *(batcher.submit(_entry("flood", first + i)) for i in range(1, 13)), return_exceptions=True
                )
                ok = [r for r in results if isinstance(r, pb.SubmitStreamResponse)]
                refused = [r for r in results if isinstance(r, SubmitFailed) and r.code == "OVERLOADED"]
                assert (len(ok), len(refused)) == (5, 7), results
            keys = await _applied_keys(stubs[leader], "flood")
            assert sorted(keys) == [*range(1, 6), *range(101, 106)]
            await batcher.close()
    finally:
        cluster.close()


@pytest.mark.asyncio
async def test_watch_blocks_streams_the_history_then_each_new_block(cluster: LocalCluster) -> None:
    ids = [n["id"] for n in cluster.nodes]
    async with ledger_stubs(cluster) as stubs:
        leader = await wait_for(lambda: _leader_seen_by_all(stubs), 30, "a leader known to all")
        follower = next(nid for nid in ids if nid != leader)
        batcher = SubmitBatcher(stubs[leader], client_id="watched")
        before = [await batcher.submit(_entry("watched", rid)) for rid in range(1, 4)]
        watch = stubs[follower].WatchBlocks(pb.WatchBlocksRequest(from_height=1), timeout=30)
        seen: list[pb.Block] = []

        async def until_watched(rid: int) -> None:
            async for block in watch:
                seen.append(block)
                if any(pb.LedgerEntry.FromString(raw).request_id == rid and
                       pb.LedgerEntry.FromString(raw).client_id == "watched" for raw in block.entries):
                    return

        await asyncio.wait_for(until_watched(3), 20)  # the history, from height 1
        later = asyncio.create_task(asyncio.wait_for(until_watched(4), 20))
        await asyncio.sleep(0.3)  # the watch now waits for a block that does not exist yet
        assert not later.done()
        fourth = await batcher.submit(_entry("watched", 4))
        await later
        watch.cancel()
        heights = [b.height for b in seen]
        assert heights == list(range(1, len(heights) + 1)), heights  # in order, none skipped
        assert heights[-1] == fourth.block_height
        assert {a.block_height for a in before} <= set(heights)
        for prev, block in zip(seen, seen[1:], strict=False):
            assert block.prev_hash == prev.hash
        await batcher.close()
