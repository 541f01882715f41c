"""Snapshot catch-up benchmark: a follower 100,000 ledger entries behind
catches up through InstallSnapshot.

A 3-node consensus cluster (consensus processes only) compacts its log
every SNAPSHOT_ENTRIES Raft entries (writing no file). One follower is stopped (SIGTERM), then
ENTRIES ledger entries are written through SubmitStream (pipelined, so many
ledger entries share a Raft entry), and the leader compacts its log past the
follower. The follower is started again with the same command; the figure
is the time from its start to its applied index reaching the leader's commit
index (process start-up included, and the leader writing the snapshot file
it needs, on demand), with the snapshot's size and the lag in both ledger
and Raft entries.

``FLEETSUIT_BENCH_SNAPSHOT_ENTRIES`` overrides the 100,000 (tests use less).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc

from fleetsuit.grpcutil import insecure_channel
from fleetsuit.v1 import consensus_pb2 as pb
from fleetsuit.v1 import consensus_pb2_grpc as pb_grpc
from launcher.cluster import command_for, plan_nodes, stop_processes
from launcher.layout import SERVICES
from tests.support.ports import free_base_port

ENTRIES = int(os.environ.get("FLEETSUIT_BENCH_SNAPSHOT_ENTRIES", "100000"))
# Raft entries between snapshots (the default is 10,000): pipelined streams
# pack many ledger entries into one Raft entry, so 100,000 ledger entries
# make only a few thousand Raft entries.
SNAPSHOT_ENTRIES = 200
KEEP_ENTRIES = 50
STREAMS = 8
WINDOW = 256  # requests in flight per stream
PAYLOAD = b"p" * 128


async def _until(probe: Callable[[], Awaitable[Any]], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            value = await probe()
        except grpc.RpcError:
            value = None
        if value is not None:
            return value
        await asyncio.sleep(0.05)
    raise RuntimeError(f"timed out after {timeout_s}s waiting for {what}")


async def _status(stub: pb_grpc.LedgerStub) -> pb.StatusResponse:
    return await stub.Status(pb.StatusRequest(), timeout=2)


async def _stream_writes(stub: pb_grpc.LedgerStub, client_id: str, count: int) -> None:
    window = asyncio.Semaphore(WINDOW)

    async def requests() -> AsyncIterator[pb.SubmitRequest]:
        for rid in range(1, count + 1):
            await window.acquire()
            yield pb.SubmitRequest(
                entry=pb.LedgerEntry(client_id=client_id, request_id=rid, app=pb.AppEntry(payload=PAYLOAD)),
                timeout_ms=30_000,
            )

    answered = 0
    async for answer in stub.SubmitStream(requests()):
        if answer.error_code:
            raise RuntimeError(f"submission {answer.request_id} failed: {answer.error_code}")
        answered += 1
        window.release()
        if answered == count:
            return


async def run(root: Path) -> dict[str, Any]:
    base = free_base_port(40)
    nodes = plan_nodes(3, root, base)
    spec = SERVICES[0]
    extra = ["--compact-every-entries", str(SNAPSHOT_ENTRIES), "--compact-keep-entries", str(KEEP_ENTRIES)]
    commands = {n.node_id: [*command_for(spec, n, nodes, "bench-snap"), *extra] for n in nodes}
    procs: dict[str, subprocess.Popen[bytes]] = {}
    all_procs: list[subprocess.Popen[bytes]] = []

    def start(node_id: str) -> None:
        node = next(n for n in nodes if n.node_id == node_id)
        node.data_dir.mkdir(parents=True, exist_ok=True)
        with open(node.data_dir / "consensus.log", "ab") as log_file:
            proc = subprocess.Popen(commands[node_id], stdout=log_file, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        procs[node_id] = proc
        all_procs.append(proc)

    for n in nodes:
        start(n.node_id)
    channels = {n.node_id: insecure_channel(f"127.0.0.1:{n.base + spec.port_offset}") for n in nodes}
    stubs = {nid: pb_grpc.LedgerStub(ch) for nid, ch in channels.items()}
    try:
        async def leader() -> str | None:
            s = await _status(stubs["n1"])
            return s.leader_id or None

        lead = await _until(leader, 60, "a leader")
        follower = next(n for n in stubs if n != lead)
        procs[follower].send_signal(signal.SIGTERM)
        procs[follower].wait(timeout=30)
        stopped_at = (await _status(stubs[lead])).commit_index

        started = time.perf_counter()
        per_stream = ENTRIES // STREAMS
        await asyncio.gather(*(
            _stream_writes(stubs[lead], f"bench-{i}", per_stream + (ENTRIES % STREAMS if i == 0 else 0))
            for i in range(STREAMS)
        ))
        write_s = time.perf_counter() - started

        fillers = iter(range(1, 10_000))

        async def compacted() -> pb.StatusResponse | None:
            s = await _status(stubs[lead])
            if s.snapshot_index > stopped_at:
                return s
            # Not yet: one more Raft entry per probe until the next snapshot.
            entry = pb.LedgerEntry(client_id="bench-filler", request_id=next(fillers),
                                   app=pb.AppEntry(payload=PAYLOAD))
            await stubs[lead].Submit(pb.SubmitRequest(entry=entry), timeout=10)
            return None

        status = await _until(compacted, 120, "the leader compacting past the stopped follower")
        target = status.commit_index
        restarted = time.perf_counter()
        start(follower)

        async def caught_up() -> pb.StatusResponse | None:
            s = await _status(stubs[follower])
            return s if s.applied_index >= target else None

        final = await _until(caught_up, 600, f"{follower} catching up")
        catch_up_s = time.perf_counter() - restarted
        snap_dir = next(n for n in nodes if n.node_id == lead).data_dir / "snapshots"
        snap_bytes = max((p.stat().st_size for p in snap_dir.glob("*.fsnap")), default=0)
        log = (next(n for n in nodes if n.node_id == follower).data_dir / "consensus.log").read_text()
        return {
            "ledger_entries_behind": ENTRIES,
            "raft_entries_behind": target - stopped_at,
            "snapshot_bytes": snap_bytes,
            "snapshot_entries_setting": SNAPSHOT_ENTRIES,
            "write_seconds": round(write_s, 2),
            "write_entries_per_s": round(ENTRIES / write_s),
            "catch_up_seconds": round(catch_up_s, 2),
            "through_snapshot": "installed snapshot" in log,
            "follower_block_height": final.block_height,
        }
    finally:
        for ch in channels.values():
            await ch.close()
        stop_processes(all_procs)


def main(results_dir: Path) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="fleetsuit-snapbench-") as tmp:
        result = asyncio.run(run(Path(tmp)))
    print(f"  follower {result['ledger_entries_behind']:,} ledger entries "
          f"({result['raft_entries_behind']:,} Raft entries) behind: caught up in "
          f"{result['catch_up_seconds']} s through a {result['snapshot_bytes'] / 1e6:.1f} MB snapshot "
          f"(installed: {result['through_snapshot']})")
    print(f"  writing them took {result['write_seconds']} s ({result['write_entries_per_s']:,} entries/s)")
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "snapshot.json").write_text(json.dumps(result, indent=2))
    return result
