"""The consensus service of another revision beside this tree's, in one run:
``python -m bench.compare REV [ROUNDS]``.

Both clusters (3 consensus processes each, on loopback) run side by side;
64 clients submit through the SubmitBatcher (the bench's batched row) at
4 KiB and then 256 B, the rounds of the two trees interleaved and their
order alternated, so that a host that slows down slows both alike. Prints
the median throughput and the members' CPU per operation of each tree and
writes ``bench/results/compare.json``. The other revision is checked out in
a temporary git worktree, its gRPC stubs generated there, and removed at
the end; every process started is stopped by pid.

This answers "did a change cost throughput?" without etcd's run-to-run
swing in the way (the consensus bench's ratio moves by ±10% with the host).
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import grpc

from fleetsuit.grpcutil import insecure_channel
from fleetsuit.v1 import consensus_pb2 as pb
from fleetsuit.v1 import consensus_pb2_grpc as pb_grpc
from launcher.cluster import stop_processes
from tests.support.ports import free_base_port

from .consensus import load_round

REPO = Path(__file__).resolve().parent.parent
CLIENTS = 64
SIZES = (4096, 256)
ROUND_S = 3.0


class Tree:
    """A 3-node consensus cluster running the code of one tree."""

    stub_dir = ""

    def __init__(self, name: str, tree: Path, root: Path) -> None:
        self.name = name
        base = free_base_port(10)
        self.addresses = [f"127.0.0.1:{base + i}" for i in range(3)]
        peers = ",".join(f"n{i + 1}={a}" for i, a in enumerate(self.addresses))
        env = dict(os.environ, PYTHONPATH=str(tree))
        self.procs: list[subprocess.Popen[bytes]] = []
        for i, address in enumerate(self.addresses):
            node = f"n{i + 1}"
            command = [sys.executable, "-m", "services.consensus", "--node-id", node, "--listen", address,
                       "--peers", peers, "--data", str(root / node), "--cluster-id", "compare"]
            with open(root / f"{node}.log", "wb") as log:
                self.procs.append(subprocess.Popen(command, cwd=tree, env=env, stdout=log, stderr=subprocess.STDOUT))
        self.channels = [insecure_channel(a) for a in self.addresses]
        self.stubs = [pb_grpc.LedgerStub(ch) for ch in self.channels]

    def address(self, i: int) -> str:
        return self.addresses[i]

    def server_pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    async def leader(self) -> int | None:
        for i, stub in enumerate(self.stubs):
            try:
                status = await stub.Status(pb.StatusRequest(), timeout=0.5)
            except grpc.RpcError:
                continue
            if status.role == "leader":
                return i
        return None

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()
        stop_processes(self.procs)


def _worktree(rev: str, where: Path) -> Path:
    tree = where / "tree"
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "-q", str(tree), rev], check=True)
    protos = sorted(str(p.relative_to(tree)) for p in (tree / "protos/fleetsuit/v1").glob("*.proto"))
    (tree / "fleetsuit/v1").mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-Iprotos", "--python_out=.", "--pyi_out=.",
                    "--grpc_python_out=.", *protos], cwd=tree, check=True)
    (tree / "fleetsuit/v1/__init__.py").touch()
    return tree


async def compare(rev: str, rounds: int, where: Path) -> dict[str, Any]:
    other = Tree(rev, _worktree(rev, where), Path(tempfile.mkdtemp(dir=where)))
    this = Tree("this tree", REPO, Path(tempfile.mkdtemp(dir=where)))
    pool = ProcessPoolExecutor(max_workers=4, mp_context=multiprocessing.get_context("spawn"))
    out: dict[str, Any] = {"revision": rev, "clients": CLIENTS, "round_s": ROUND_S, "rows": []}
    try:
        for size in SIZES:
            results: dict[str, list[dict[str, float]]] = {other.name: [], this.name: []}
            for tree in (other, this):
                await load_round(tree, pool, "fleetsuit-batch", CLIENTS, size, 1.0)  # warm-up
            for r in range(rounds):
                for tree in (other, this) if r % 2 == 0 else (this, other):
                    results[tree.name].append(
                        await load_round(tree, pool, "fleetsuit-batch", CLIENTS, size, ROUND_S)
                    )
            for name, got in results.items():
                row = {
                    "tree": name, "size": size,
                    "ops_per_s": statistics.median(x["ops_per_s"] for x in got),
                    "server_cpu_us_per_op": statistics.median(x["server_cpu_us_per_op"] for x in got),
                    "rounds": [round(x["ops_per_s"]) for x in got],
                }
                out["rows"].append(row)
                print(f"  {size:5d} B  {name:>12}: {row['ops_per_s']:7.0f} ops/s  "
                      f"members' CPU {row['server_cpu_us_per_op']:4.0f} µs/op  rounds {row['rounds']}", flush=True)
    finally:
        pool.shutdown()
        await other.close()
        await this.close()
    return out


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python -m bench.compare REV [ROUNDS]", file=sys.stderr)
        return 2
    rev, rounds = argv[0], int(argv[1]) if len(argv) > 1 else 6
    where = Path(tempfile.mkdtemp(prefix="fleetsuit-compare-"))
    try:
        print(f"consensus, {CLIENTS} batched clients: {rev} beside this tree ({rounds} rounds each)")
        out = asyncio.run(compare(rev, rounds, where))
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(where / "tree")],
                       check=False, capture_output=True)
        subprocess.run(["git", "-C", str(REPO), "worktree", "prune"], check=False)
        shutil.rmtree(where, ignore_errors=True)
    results = REPO / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / "compare.json").write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
