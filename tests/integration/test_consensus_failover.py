"""Real processes on loopback: a 3-node cluster elects a leader, concurrent
clients' submissions commit, and kill -9 of the leader while clients write
loses nothing acknowledged; once the old leader is back, every node holds the
same blocks, hash for hash."""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
from pathlib import Path

import grpc
import pytest

from fleetsuit.grpcutil import insecure_channel
from fleetsuit.v1 import consensus_pb2 as pb
from fleetsuit.v1 import consensus_pb2_grpc as pb_grpc
from services.consensus.convert import block_from_pb
from services.consensus.ledger.block import verify_chain
from tests.support.cluster import LocalCluster
from tests.support.wait import wait_for

pytestmark = pytest.mark.slow

CLIENTS = 8


async def _statuses(stubs: dict[str, pb_grpc.LedgerStub]) -> dict[str, pb.StatusResponse]:
    out = {}
    for node_id, stub in stubs.items():
        with contextlib.suppress(grpc.RpcError):
            out[node_id] = await stub.Status(pb.StatusRequest(), timeout=1.0)
    return out


async def _leader(stubs: dict[str, pb_grpc.LedgerStub], exclude: str = "") -> str | None:
    statuses = await _statuses(stubs)
    leaders = {s.node_id for s in statuses.values() if s.role == "leader" and s.node_id != exclude}
    if len(leaders) == 1:
        leader = leaders.pop()
        if all(s.leader_id == leader for nid, s in statuses.items() if nid != exclude):
            return leader
    return None


async def _leader_seen_by_all(stubs: dict[str, pb_grpc.LedgerStub]) -> str | None:
    """A leader that every node answers about (every node is serving)."""
    statuses = await _statuses(stubs)
    if len(statuses) != len(stubs):
        return None
    return await _leader(stubs)


class Clients:
    """Concurrent writers; each retries its current request (same key) until acknowledged."""

    def __init__(self, stubs: dict[str, pb_grpc.LedgerStub]) -> None:
        self.stubs = stubs
        self.acked: dict[tuple[str, int], tuple[int, int]] = {}
        self.stop = asyncio.Event()
        self.rng = random.Random(7)

    async def run_one(self, client_id: str) -> None:
        request_id = 0
        while not self.stop.is_set():
            request_id += 1
            entry = pb.LedgerEntry(
                client_id=client_id, request_id=request_id,
                app=pb.AppEntry(payload=f"{client_id}:{request_id}".encode()),
            )
            for _attempt in range(200):
                node_id = self.rng.choice(sorted(self.stubs))
                try:
                    resp = await self.stubs[node_id].Submit(
                        pb.SubmitRequest(entry=entry, timeout_ms=2000), timeout=3.0
                    )
                except grpc.RpcError:
                    await asyncio.sleep(0.02)
                    continue
                self.acked[(client_id, request_id)] = (resp.index, resp.block_height)
                break
            else:
                raise AssertionError(f"{client_id} request {request_id} never committed")


@pytest.mark.asyncio
async def test_kill_leader_while_clients_write(cluster: LocalCluster) -> None:
    ids = [n["id"] for n in cluster.nodes]
    channels = {nid: insecure_channel(cluster.endpoint(nid)) for nid in ids}
    stubs = {nid: pb_grpc.LedgerStub(ch) for nid, ch in channels.items()}
    try:
        leader = await wait_for(lambda: _leader_seen_by_all(stubs), 30, "a leader all nodes agree on")

        clients = Clients(stubs)
        tasks = [asyncio.create_task(clients.run_one(f"client-{i}")) for i in range(CLIENTS)]
        await wait_for(
            lambda: _ready(len(clients.acked) >= 200), 60, "200 acknowledged entries before the kill"
        )

        cluster.kill(leader)
        before_kill = len(clients.acked)
        survivors = {nid: s for nid, s in stubs.items() if nid != leader}
        new_leader = await wait_for(
            lambda: _leader(survivors), 30, "a new leader among the survivors"
        )
        assert new_leader != leader
        await wait_for(
            lambda: _ready(len(clients.acked) >= before_kill + 200), 60,
            "200 more acknowledged entries after the failover",
        )

        cluster.restart(leader)
        await wait_for(
            lambda: _ready(len(clients.acked) >= before_kill + 300), 60, "writes with the old leader back"
        )
        clients.stop.set()
        await asyncio.gather(*tasks)

        top = max(index for index, _ in clients.acked.values())
        await wait_for(lambda: _all_applied(stubs, top), 60, f"every node applying index {top}")

        chains = {}
        for nid, stub in stubs.items():
            blocks = [block_from_pb(b) async for b in stub.ExportBlocks(pb.ExportRequest(from_height=1))]
            verify_chain(blocks)
            chains[nid] = blocks
        heights = {nid: len(c) for nid, c in chains.items()}
        common = min(heights.values())
        for h in range(common):
            hashes = {nid: chains[nid][h].hash for nid in ids}
            assert len(set(hashes.values())) == 1, f"nodes disagree at height {h + 1}: {hashes}"

        seen: dict[tuple[str, int], int] = {}
        for block in chains[ids[0]]:
            for raw in block.entries:
                e = pb.LedgerEntry.FromString(raw)
                key = (e.client_id, e.request_id)
                assert key not in seen, f"{key} applied twice (blocks {seen.get(key)} and {block.height})"
                seen[key] = block.height
        lost = [k for k in clients.acked if k not in seen]
        assert not lost, f"{len(lost)} acknowledged entries lost, e.g. {lost[:3]}"
        for key, (_index, height) in clients.acked.items():
            assert seen[key] == height, f"{key} acknowledged at height {height}, found at {seen[key]}"
    finally:
        for ch in channels.values():
            await ch.close()


async def _ready(cond: bool) -> bool | None:
    return True if cond else None


async def _all_applied(stubs: dict[str, pb_grpc.LedgerStub], index: int) -> bool | None:
    statuses = await _statuses(stubs)
    if len(statuses) == len(stubs) and all(s.applied_index >= index for s in statuses.values()):
        return True
    return None


@pytest.mark.asyncio
async def test_graceful_stop_of_the_leader_hands_leadership_over(cluster: LocalCluster) -> None:
    ids = [n["id"] for n in cluster.nodes]
    channels = {nid: insecure_channel(cluster.endpoint(nid)) for nid in ids}
    stubs = {nid: pb_grpc.LedgerStub(ch) for nid, ch in channels.items()}
    try:
        leader = await wait_for(lambda: _leader_seen_by_all(stubs), 30, "a leader")
        before = (await stubs[leader].Status(pb.StatusRequest(), timeout=2)).term
        await stubs[leader].Submit(
            pb.SubmitRequest(entry=pb.LedgerEntry(app=pb.AppEntry(payload=b"before"))), timeout=5
        )
        cluster.kill(leader, sig=signal.SIGTERM)
        assert cluster.exit_code(leader) == 0
        survivors = {nid: s for nid, s in stubs.items() if nid != leader}
        new_leader = await wait_for(lambda: _leader(survivors), 30, "the transferee leading")
        after = (await survivors[new_leader].Status(pb.StatusRequest(), timeout=2)).term
        # TimeoutNow: the transferee campaigns at once, in the very next term.
        assert after == before + 1
        log = (Path(cluster.node(leader)["data_dir"]) / "consensus.log").read_text()
        assert "leadership handed over" in log
    finally:
        for ch in channels.values():
            await ch.close()


@pytest.mark.asyncio
async def test_successive_leader_kills_with_restarts(cluster: LocalCluster) -> None:
    """Each round kills the current leader and restarts it: the two nodes left
    must elect a leader every time, including a restarted node and a node that
    has not talked to it since its restart (a regression: a stale peer stream
    used to swallow the vote requests between those two)."""
    ids = [n["id"] for n in cluster.nodes]
    channels = {nid: insecure_channel(cluster.endpoint(nid)) for nid in ids}
    stubs = {nid: pb_grpc.LedgerStub(ch) for nid, ch in channels.items()}
    try:
        for round_no in range(3):
            leader = await wait_for(lambda: _leader_seen_by_all(stubs), 30, f"a leader in round {round_no}")
            await stubs[leader].Submit(
                pb.SubmitRequest(entry=pb.LedgerEntry(app=pb.AppEntry(payload=b"r"))), timeout=5
            )
            cluster.kill(leader)
            survivors = {nid: s for nid, s in stubs.items() if nid != leader}
            await wait_for(lambda s=survivors: _leader(s), 15, f"a new leader after kill {round_no}")
            cluster.restart(leader)
            top = (await next(iter(survivors.values())).Status(pb.StatusRequest(), timeout=2)).commit_index
            await wait_for(lambda t=top: _all_applied(stubs, t), 30, "the restarted node catching up")
    finally:
        for ch in channels.values():
            await ch.close()


@pytest.mark.asyncio
async def test_submit_stream_answers_every_request_by_id(cluster: LocalCluster) -> None:
    ids = [n["id"] for n in cluster.nodes]
    channels = {nid: insecure_channel(cluster.endpoint(nid)) for nid in ids}
    stubs = {nid: pb_grpc.LedgerStub(ch) for nid, ch in channels.items()}
    try:
        # Every node must be serving: the stream goes through a follower.
        leader = await wait_for(lambda: _leader_seen_by_all(stubs), 30, "a leader known to all")
        follower = next(nid for nid in ids if nid != leader)

        def requests():  # type: ignore[no-untyped-def]
            for rid in range(1, 301):
                yield pb.SubmitRequest(entry=pb.LedgerEntry(
                    client_id="streamer", request_id=rid, app=pb.AppEntry(payload=b"s%d" % rid)))
            # A retry of an applied request and an invalid one (no kind).
            yield pb.SubmitRequest(entry=pb.LedgerEntry(
                client_id="streamer", request_id=7, app=pb.AppEntry(payload=b"s7")))
            yield pb.SubmitRequest(entry=pb.LedgerEntry(client_id="streamer", request_id=999))

        # Through a follower: the batch is forwarded to the leader.
        answers = [a async for a in stubs[follower].SubmitStream(requests(), timeout=60)]
        assert len(answers) == 302
        by_id: dict[int, list[pb.SubmitStreamResponse]] = {}
        for a in answers:
            by_id.setdefault(a.request_id, []).append(a)
        assert by_id[999][0].error_code == "INVALID_ENTRY"
        seven = by_id[7]
        assert len(seven) == 2 and seven[0].index == seven[1].index
        ok = [a for a in answers if not a.error_code]
        assert len(ok) == 301
        # The retry of 7 either joins the pending original or is answered from
        # the request table: the same index either way, and applied once.
        assert {a.request_id for a in ok} == set(range(1, 301))
        # Every entry is in a block, once.
        await wait_for(lambda: _all_applied(stubs, max(a.index for a in ok)), 30, "application everywhere")
        blocks = [block_from_pb(b) async for b in stubs[leader].ExportBlocks(pb.ExportRequest())]
        keys = [pb.LedgerEntry.FromString(raw).request_id for b in blocks for raw in b.entries
                if pb.LedgerEntry.FromString(raw).client_id == "streamer"]
        assert sorted(keys) == list(range(1, 301))
    finally:
        for ch in channels.values():
            await ch.close()
