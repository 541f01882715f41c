"""Real processes on loopback: membership changes while clients write.

A 3-node cluster grows to 5 (each new node joins as a learner, is promoted
by the leader once caught up) and shrinks back to 3, with writers running
throughout: nothing acknowledged is lost and the survivors agree hash for
hash. A node whose data directory (and key) is wiped comes back by itself
with the same command: it has itself removed and added again, catches up
through a snapshot, and its new key certifies blocks again."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from fleetsuit.grpcutil import insecure_channel
from fleetsuit.v1 import consensus_pb2 as pb
from fleetsuit.v1 import consensus_pb2_grpc as pb_grpc
from launcher.cluster import join_command, spawn
from services.consensus.cli import change_membership
from services.consensus.convert import block_from_pb
from services.consensus.ledger.block import verify_chain
from tests.support.cluster import LocalCluster
from tests.support.ports import free_base_port
from tests.support.procs import stop_processes
from tests.support.wait import wait_for

from .test_consensus_failover import Clients, _all_applied, _leader, _ready

pytestmark = pytest.mark.slow


@pytest.fixture
def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalCluster]:
    monkeypatch.setenv("FLEETSUIT_CONSENSUS_COMPACT_EVERY_ENTRIES", "150")
    monkeypatch.setenv("FLEETSUIT_CONSENSUS_COMPACT_KEEP_ENTRIES", "20")
    c = LocalCluster(3, tmp_path)
    try:
        yield c
    finally:
        c.close()


async def _members(stub: pb_grpc.LedgerStub) -> dict[str, pb.Member]:
    s = await stub.Status(pb.StatusRequest(consistent=True), timeout=5)
    return {m.node_id: m for m in s.members}


async def _voter(stubs: dict[str, pb_grpc.LedgerStub], node_id: str) -> bool | None:
    leader = await _leader(stubs)
    if leader is None:
        return None
    members = await _members(stubs[leader])
    return True if node_id in members and members[node_id].voter else None


async def _gone(stubs: dict[str, pb_grpc.LedgerStub], node_id: str) -> bool | None:
    leader = await _leader(stubs)
    if leader is None:
        return None
    return True if node_id not in await _members(stubs[leader]) else None


def _check_chains(chains: dict[str, list], acked: dict[tuple[str, int], tuple[int, int]]) -> None:  # type: ignore[type-arg]
    ids = sorted(chains)
    common = min(len(c) for c in chains.values())
    for h in range(common):
        assert len({chains[n][h].hash for n in ids}) == 1, f"nodes disagree at height {h + 1}"
    seen: dict[tuple[str, int], int] = {}
    for block in chains[ids[0]]:
        for raw in block.entries:
            e = pb.LedgerEntry.FromString(raw)
            key = (e.client_id, e.request_id)
            assert key not in seen, f"{key} applied twice"
            seen[key] = block.height
    lost = [k for k in acked if k not in seen]
    assert not lost, f"{len(lost)} acknowledged entries lost, e.g. {lost[:3]}"
    for key, (_index, height) in acked.items():
        assert seen[key] == height


@pytest.mark.asyncio
async def test_grow_to_five_and_shrink_to_three_while_clients_write(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    ids = [n["id"] for n in cluster.nodes]
    channels = {nid: insecure_channel(cluster.endpoint(nid)) for nid in ids}
    stubs = {nid: pb_grpc.LedgerStub(ch) for nid, ch in channels.items()}
    extra_base = free_base_port(20)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        await wait_for(lambda: _leader(stubs), 30, "a leader")
        clients = Clients(dict(stubs))
        tasks = [asyncio.create_task(clients.run_one(f"client-{i}")) for i in range(4)]
        await wait_for(lambda: _ready(len(clients.acked) >= 100), 30, "writes before the changes")
        voters = {nid: cluster.endpoint(nid) for nid in ids}

        for i, new in enumerate(("n4", "n5")):
            address = f"127.0.0.1:{extra_base + 10 * i + 1}"
            data = tmp_path / new
            data.mkdir()
            cmd = join_command(new, address, data, voters, "test")
            procs[new] = spawn(cmd, data / "consensus.log")
            if new == "n4":  # once through the command line
                out = subprocess.run(
                    [sys.executable, "-m", "launcher", "cluster", "add", "--endpoint", cluster.endpoint("n1"),
                     "--node-id", new, "--address", address, "--json"],
                    capture_output=True, text=True, timeout=90, check=False,
                )
                assert out.returncode == 0, out.stderr
            else:
                await change_membership(
                    cluster.endpoint("n1"), "AddMember", pb.AddMemberRequest(node_id=new, address=address)
                )
            channels[new] = insecure_channel(address)
            stubs[new] = pb_grpc.LedgerStub(channels[new])
            await wait_for(lambda n=new: _voter(stubs, n), 40, f"{new} promoted to voter")
            voters[new] = address
            clients.stubs[new] = stubs[new]
            before = len(clients.acked)
            await wait_for(lambda b=before: _ready(len(clients.acked) >= b + 50), 30, f"writes with {new}")

        leader = await wait_for(lambda: _leader(stubs), 30, "a leader of five")
        assert len(await _members(stubs[leader])) == 5

        for gone in ("n5", "n4"):
            clients.stubs.pop(gone, None)
            await change_membership(cluster.endpoint("n1"), "RemoveMember", pb.RemoveMemberRequest(node_id=gone))
            remaining = {n: s for n, s in stubs.items() if n != gone and n in clients.stubs}
            await wait_for(lambda g=gone, r=remaining: _gone(r, g), 30, f"{gone} removed")
            before = len(clients.acked)
            await wait_for(lambda b=before: _ready(len(clients.acked) >= b + 50), 30, f"writes without {gone}")

        clients.stop.set()
        await asyncio.gather(*tasks)
        survivors = {n: stubs[n] for n in ids}
        top = max(index for index, _ in clients.acked.values())
        await wait_for(lambda: _all_applied(survivors, top), 30, f"every survivor applying {top}")
        chains = {}
        for nid in ids:
            blocks = [block_from_pb(b) async for b in survivors[nid].ExportBlocks(pb.ExportRequest(from_height=1))]
            verify_chain(blocks)
            chains[nid] = blocks
        _check_chains(chains, clients.acked)
        leader = await wait_for(lambda: _leader(survivors), 30, "a leader of three")
        assert sorted(await _members(survivors[leader])) == ids
        target = next(n for n in ids if n != leader)
        out = subprocess.run(
            [sys.executable, "-m", "launcher", "cluster", "transfer-leader", "--endpoint",
             cluster.endpoint(leader), "--target", target],
            capture_output=True, text=True, timeout=60, check=False,
        )
        assert out.returncode == 0, out.stderr
        assert await wait_for(lambda: _leader(survivors), 30, "the transferee leading") == target
    finally:
        stop_processes(procs.values())
        for ch in channels.values():
            await ch.close()


@pytest.mark.asyncio
async def test_a_wiped_node_rejoins_and_catches_up_by_itself(cluster: LocalCluster) -> None:
    ids = [n["id"] for n in cluster.nodes]
    channels = {nid: insecure_channel(cluster.endpoint(nid)) for nid in ids}
    stubs = {nid: pb_grpc.LedgerStub(ch) for nid, ch in channels.items()}
    try:
        leader = await wait_for(lambda: _leader(stubs), 30, "a leader")
        wiped = next(n for n in ids if n != leader)

        async def key_recorded() -> bytes | None:
            m = (await _members(stubs[leader])).get(wiped)
            return m.public_key if m is not None and m.public_key else None

        old_key = await wait_for(key_recorded, 30, f"{wiped}'s key in the ledger")
        clients = Clients({n: s for n, s in stubs.items() if n != wiped})
        tasks = [asyncio.create_task(clients.run_one(f"client-{i}")) for i in range(4)]
        await wait_for(lambda: _ready(len(clients.acked) >= 50), 30, "writes before the wipe")

        cluster.kill(wiped)
        data = Path(cluster.node(wiped)["data_dir"])
        for path in ("consensus", "snapshots"):
            shutil.rmtree(data / path, ignore_errors=True)
        (data / "node.key").unlink()
        async def compacted() -> bool | None:
            current = await _leader({n: s for n, s in stubs.items() if n != wiped})
            if current is None:
                return None
            s = await stubs[current].Status(pb.StatusRequest(), timeout=2)
            return True if s.snapshot_index > 0 else None

        await wait_for(compacted, 40, "the leader compacting its log while the node is gone")
        cluster.restart(wiped)  # the very same command

        async def back() -> bool | None:
            current = await _leader({n: s for n, s in stubs.items() if n != wiped})
            if current is None:
                return None
            m = (await _members(stubs[current])).get(wiped)
            ok = m is not None and m.voter and m.public_key and m.public_key != old_key
            return True if ok else None

        await wait_for(back, 40, f"{wiped} a voter again, with its new key")
        clients.stop.set()
        await asyncio.gather(*tasks)
        top = max(index for index, _ in clients.acked.values())
        await wait_for(lambda: _all_applied(stubs, top), 30, f"every node applying {top}")
        status = await stubs[wiped].Status(pb.StatusRequest(), timeout=2)
        log = (data / "consensus.log").read_text()
        assert "rejoining" in log and "installed snapshot" in log

        async def certified_by_all() -> bool | None:
            statuses = {}
            for nid, stub in stubs.items():
                with contextlib.suppress(grpc.RpcError):
                    statuses[nid] = await stub.Status(pb.StatusRequest(), timeout=2)
            if len(statuses) == 3 and all(s.certified_height >= status.block_height for s in statuses.values()):
                return True
            return None

        await wait_for(certified_by_all, 30, "every node certifying the head")
        chains = {}
        for nid in ids:
            blocks = [block_from_pb(b) async for b in stubs[nid].ExportBlocks(pb.ExportRequest(from_height=1))]
            verify_chain(blocks)
            chains[nid] = blocks
        _check_chains(chains, clients.acked)
    finally:
        for ch in channels.values():
            await ch.close()
