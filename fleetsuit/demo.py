"""``make run``: start a local cluster on loopback (RocksDB under ``--data``),
run the main job against it, print what happened, and stop every process.

The main job today: wait for a leader, commit ledger entries through
different nodes (followers forward to the leader), kill the leader and show
the cluster electing another and still committing, then export the chain
from one node and verify it offline.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import shutil
import signal
import sys
import time
from pathlib import Path

import grpc

from fleetsuit.cluster import start_cluster, stop_processes
from fleetsuit.grpcutil import insecure_channel
from fleetsuit.v1 import consensus_pb2 as pb
from fleetsuit.v1 import consensus_pb2_grpc as pb_grpc
from services.consensus.convert import block_from_pb
from services.consensus.ledger.block import verify_chain
from services.consensus.ledger.export import read_blocks, write_blocks


async def _leader(stubs: dict[str, pb_grpc.LedgerStub], timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for stub in stubs.values():
            try:
                s = await stub.Status(pb.StatusRequest(), timeout=0.5)
            except grpc.RpcError:
                continue
            if s.role == "leader":
                return s.node_id
        await asyncio.sleep(0.05)
    raise RuntimeError(f"no leader within {timeout_s}s")


async def _submit(stubs: dict[str, pb_grpc.LedgerStub], node: str, client: str, rid: int, text: str) -> pb.SubmitResponse:
    entry = pb.LedgerEntry(client_id=client, request_id=rid, app=pb.AppEntry(payload=text.encode()))
    for _ in range(100):
        try:
            return await stubs[node].Submit(pb.SubmitRequest(entry=entry, timeout_ms=2000), timeout=3)
        except grpc.RpcError:
            node = sorted(stubs)[(sorted(stubs).index(node) + 1) % len(stubs)]
            await asyncio.sleep(0.05)
    raise RuntimeError("submission never committed")


async def main_job(doc: dict, kill) -> int:  # type: ignore[type-arg,no-untyped-def]
    nodes = doc["nodes"]
    channels = {n["id"]: insecure_channel(n["endpoints"]["consensus"]) for n in nodes}
    stubs = {nid: pb_grpc.LedgerStub(ch) for nid, ch in channels.items()}
    try:
        started = time.monotonic()
        leader = await _leader(stubs, 30)
        print(f"leader elected: {leader} ({time.monotonic() - started:.2f}s after start)")
        for i, node in enumerate(sorted(stubs)):
            resp = await _submit(stubs, node, "demo", i + 1, f"entry {i + 1} via {node}")
            print(f"  committed 'entry {i + 1}' via {node}: index {resp.index}, block {resp.block_height}")
        again = await _submit(stubs, sorted(stubs)[0], "demo", 1, "entry 1 retried")
        print(f"  retry of request 1 answered from the ledger: index {again.index}, duplicate={again.duplicate}")

        print(f"killing the leader {leader} (SIGKILL) ...")
        killed_at = time.monotonic()
        kill(leader)
        survivors = {nid: s for nid, s in stubs.items() if nid != leader}
        new_leader = await _leader(survivors, 30)
        resp = await _submit(survivors, new_leader, "demo", 100, "after failover")
        print(f"  new leader {new_leader}; first commit after the kill at index {resp.index} "
              f"({(time.monotonic() - killed_at) * 1000:.0f} ms after the kill)")

        blocks = [block_from_pb(b) async for b in survivors[new_leader].ExportBlocks(pb.ExportRequest())]
        buf = io.BytesIO()
        write_blocks(buf, blocks)
        head = verify_chain(list(read_blocks(io.BytesIO(buf.getvalue()))))
        print(f"exported {len(blocks)} blocks ({len(buf.getvalue())} bytes); offline verification ok, "
              f"head {head.hex()[:16]}...")
        for nid, stub in sorted(survivors.items()):
            s = await stub.Status(pb.StatusRequest(), timeout=2)
            print(f"  {nid}: role={s.role} term={s.term} commit={s.commit_index} blocks={s.block_height}")
        return 0
    finally:
        for ch in channels.values():
            await ch.close()


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m fleetsuit.demo")
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--data", default="data/run")
    p.add_argument("--base-port", type=int, default=7100)
    args = p.parse_args()
    data = Path(args.data)
    if data.exists():
        shutil.rmtree(data)
    doc, procs = start_cluster(args.nodes, data, args.base_port, "demo")
    print(f"started {args.nodes} nodes on 127.0.0.1 (data and logs in {data}/)")

    def kill(node_id: str) -> None:
        pid = next(n for n in doc["nodes"] if n["id"] == node_id)["pids"]["consensus"]
        os.kill(pid, signal.SIGKILL)

    try:
        return asyncio.run(main_job(doc, kill))
    except RuntimeError as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1
    finally:
        stop_processes(procs)
        print("cluster stopped")


if __name__ == "__main__":
    sys.exit(main())
