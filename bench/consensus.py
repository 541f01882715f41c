"""Consensus benchmark, fleetsuit side by side with a 3-member etcd cluster
in the same run on the same machine.

Rows: Submit (fleetsuit) / Put (etcd) throughput and p50/p99 latency with 1,
16 and 64 concurrent clients for 256-byte and 4-KiB values (median of
ROUNDS rounds), and the unavailability window after kill -9 of the leader
(median of KILLS kills): from the kill to the first write, started after the
kill, that the surviving majority acknowledges. Both systems are driven by
the same Python asyncio gRPC client, connected to the leader for the load
rows and to the survivors for the failover rows. One Python client process
tops out near 1,500-2,000 calls/s, so the load rows spread their clients
over up to 4 client processes (the same split for both systems).

Both clusters run side by side for the whole load part, and the rounds of a
row are interleaved (fleetsuit unary, stream, batch, etcd; again; again):
a host that slows down for a minute slows every system of the row alike
instead of the one that happened to run then. The cluster not being
measured idles meanwhile.

fleetsuit is driven three ways: unary Submit (one call per entry, as etcd's
Put), SubmitStream (one stream per client, one entry in flight), and the
SubmitBatcher client library (the clients of one process share a
SubmitBatches stream; what they submit while a message is being written goes
out in the next one). Every client in every mode waits for its entry's
commit before it submits the next.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import grpc

from fleetsuit.grpcutil import insecure_channel
from fleetsuit.ledger_client import StreamBroken, SubmitBatcher, SubmitFailed
from fleetsuit.v1 import consensus_pb2 as pb
from fleetsuit.v1 import consensus_pb2_grpc as pb_grpc
from launcher.cluster import start_cluster, stop_processes
from tests.support.ports import free_base_port

from .cpu import cpu_seconds
from .etcd_client import load_stubs

CLIENTS = (1, 16, 64)
SIZES = (256, 4096)
ROUND_S = float(os.environ.get("FLEETSUIT_BENCH_ROUND_S", "3"))
ROUNDS = int(os.environ.get("FLEETSUIT_BENCH_ROUNDS", "3"))
KILLS = int(os.environ.get("FLEETSUIT_BENCH_KILLS", "5"))

Put = Callable[[int, bytes, bytes, float], Awaitable[None]]


class Fleetsuit:
    name = "fleetsuit"

    def __init__(self, root: Path) -> None:
        self.base = free_base_port(40)
        self.doc, self.procs = start_cluster(3, root / "fleetsuit", self.base, "bench")
        self.nodes = self.doc["nodes"]
        self.channels = [insecure_channel(n["endpoints"]["consensus"]) for n in self.nodes]
        self.stubs = [pb_grpc.LedgerStub(ch) for ch in self.channels]
        self.client = f"bench-{os.getpid()}"
        self.seq = 0

    stub_dir = ""

    def address(self, i: int) -> str:
        return str(self.nodes[i]["endpoints"]["consensus"])

    def server_pids(self) -> list[int]:
        return [int(n["pids"]["consensus"]) for n in self.nodes]

    async def put(self, i: int, key: bytes, value: bytes, timeout: float) -> None:
        self.seq += 1
        entry = pb.LedgerEntry(client_id=self.client, request_id=self.seq, app=pb.AppEntry(payload=value))
        await self.stubs[i].Submit(
            pb.SubmitRequest(entry=entry, timeout_ms=int(timeout * 1000)), timeout=timeout
        )

    async def leader(self) -> int | None:
        for i, stub in enumerate(self.stubs):
            try:
                s = await stub.Status(pb.StatusRequest(), timeout=0.5)
            except grpc.RpcError:
                continue
            if s.role == "leader":
                return i
        return None

    async def caught_up(self, i: int) -> bool:
        try:
            statuses = [await s.Status(pb.StatusRequest(), timeout=0.5) for s in self.stubs]
        except grpc.RpcError:
            return False
        return statuses[i].applied_index >= max(s.commit_index for s in statuses) - 1

    def kill(self, i: int) -> None:
        os.kill(self.nodes[i]["pids"]["consensus"], signal.SIGKILL)

    def restart(self, i: int) -> None:
        node = self.nodes[i]
        with open(Path(node["data_dir"]) / "consensus.log", "ab") as log:
            proc = subprocess.Popen(node["commands"]["consensus"], stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        node["pids"]["consensus"] = proc.pid

    async def close(self) -> None:
        for ch in self.channels:
            await ch.close()
        stop_processes(self.procs)


class Noop:
    """A Ledger server that commits nothing (bench/noop_ledger.py): Python gRPC's own ceiling."""

    name = "noop"
    stub_dir = ""

    def __init__(self, root: Path) -> None:
        self.port = free_base_port(1)
        self.log = open(root / "noop.log", "ab")  # noqa: SIM115
        self.procs = [subprocess.Popen([sys.executable, "-m", "bench.noop_ledger", str(self.port)],
                                       stdout=self.log, stderr=subprocess.STDOUT)]
        self.channel = insecure_channel(self.address(0))
        self.stub = pb_grpc.LedgerStub(self.channel)

    def address(self, i: int) -> str:
        return f"127.0.0.1:{self.port}"

    def server_pids(self) -> list[int]:
        return [self.procs[0].pid]

    async def leader(self) -> int | None:
        try:
            await self.stub.Status(pb.StatusRequest(), timeout=0.5)
        except grpc.RpcError:
            return None
        return 0

    async def close(self) -> None:
        await self.channel.close()
        stop_processes(self.procs)
        self.log.close()


class Etcd:
    name = "etcd"

    def __init__(self, root: Path, rpc_pb2: Any, rpc_grpc: Any) -> None:
        self.pb, self.grpc = rpc_pb2, rpc_grpc
        self.stub_dir = str(root / "etcd-stubs")
        base = free_base_port(10)
        self.client_ports = [base + i for i in range(3)]
        peer_ports = [base + 5 + i for i in range(3)]
        cluster = ",".join(f"e{i}=http://127.0.0.1:{p}" for i, p in enumerate(peer_ports))
        self.commands = []
        for i in range(3):
            self.commands.append([
                "etcd", "--name", f"e{i}", "--data-dir", str(root / "etcd" / f"e{i}"),
                "--listen-client-urls", f"http://127.0.0.1:{self.client_ports[i]}",
                "--advertise-client-urls", f"http://127.0.0.1:{self.client_ports[i]}",
                "--listen-peer-urls", f"http://127.0.0.1:{peer_ports[i]}",
                "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer_ports[i]}",
                "--initial-cluster", cluster, "--initial-cluster-state", "new",
                "--initial-cluster-token", "bench", "--log-level", "error",
            ])
        self.logs = [open(root / f"etcd-{i}.log", "ab") for i in range(3)]  # noqa: SIM115
        self.procs = [subprocess.Popen(c, stdout=self.logs[i], stderr=subprocess.STDOUT)
                      for i, c in enumerate(self.commands)]
        self.channels = [insecure_channel(f"127.0.0.1:{p}") for p in self.client_ports]
        self.kv = [rpc_grpc.KVStub(ch) for ch in self.channels]
        self.maint = [rpc_grpc.MaintenanceStub(ch) for ch in self.channels]

    def address(self, i: int) -> str:
        return f"127.0.0.1:{self.client_ports[i]}"

    def server_pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    async def put(self, i: int, key: bytes, value: bytes, timeout: float) -> None:
        await self.kv[i].Put(self.pb.PutRequest(key=key, value=value), timeout=timeout)

    async def leader(self) -> int | None:
        for i, stub in enumerate(self.maint):
            try:
                s = await stub.Status(self.pb.StatusRequest(), timeout=0.5)
            except grpc.RpcError:
                continue
            if s.leader and s.leader == s.header.member_id:
                return i
        return None

    async def caught_up(self, i: int) -> bool:
        try:
            await self.maint[i].Status(self.pb.StatusRequest(), timeout=0.5)
            return True
        except grpc.RpcError:
            return False

    def kill(self, i: int) -> None:
        self.procs[i].send_signal(signal.SIGKILL)
        self.procs[i].wait()

    def restart(self, i: int) -> None:
        cmd = [a if a != "new" else "existing" for a in self.commands[i]]
        self.procs[i] = subprocess.Popen(cmd, stdout=self.logs[i], stderr=subprocess.STDOUT)

    async def close(self) -> None:
        for ch in self.channels:
            await ch.close()
        stop_processes(self.procs)
        for log in self.logs:
            log.close()


async def _until(probe: Callable[[], Awaitable[Any]], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = await probe()
        if value is not None and value is not False:
            return value
        await asyncio.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {what}")


def _pct(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


class _StreamError(Exception):
    """A SubmitStream answer carried an error code."""


def _client_procs(clients: int) -> int:
    """One Python gRPC client process tops out near 1,500-2,000 calls/s, below
    either system: spread the clients over processes (the same for both)."""
    return 1 if clients == 1 else min(4, max(2, clients // 16))


def _worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Runs in a client process: ``spec["clients"]`` concurrent writers for
    ``spec["seconds"]``; returns the sorted latencies and the error count."""
    return asyncio.run(_worker_main(spec))


async def _worker_main(spec: dict[str, Any]) -> dict[str, Any]:
    channel = insecure_channel(spec["address"])
    value = os.urandom(spec["size"])
    latencies: list[float] = []
    errors = 0
    if spec["kind"] == "etcd":
        rpc_pb2, rpc_grpc = load_stubs(Path(spec["stub_dir"]), generate=False)
        kv = rpc_grpc.KVStub(channel)

        async def put(c: int, n: int) -> None:
            await kv.Put(rpc_pb2.PutRequest(key=f"k{c}-{n % 1000}".encode(), value=value), timeout=5.0)
    elif spec["kind"] == "fleetsuit":
        ledger = pb_grpc.LedgerStub(channel)
        client_id = f"bench-{os.getpid()}-{uuid.uuid4().hex[:8]}"  # fresh per round: no duplicates
        seq = iter(range(1, 1 << 62))

        async def put(c: int, n: int) -> None:
            entry = pb.LedgerEntry(client_id=client_id, request_id=next(seq), app=pb.AppEntry(payload=value))
            await ledger.Submit(pb.SubmitRequest(entry=entry, timeout_ms=5000), timeout=5.0)
    elif spec["kind"] == "fleetsuit-batch":  # the process's clients share one SubmitBatcher
        batcher = SubmitBatcher(pb_grpc.LedgerStub(channel),
                                client_id=f"bench-{os.getpid()}-{uuid.uuid4().hex[:8]}")

        async def put(c: int, n: int) -> None:
            try:
                await batcher.submit(pb.LedgerEntry(app=pb.AppEntry(payload=value)))
            except (SubmitFailed, StreamBroken) as exc:
                raise _StreamError(str(exc)) from exc
    else:  # "fleetsuit-stream": each client keeps one SubmitStream, one request in flight
        ledger = pb_grpc.LedgerStub(channel)
        client_id = f"bench-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        seq = iter(range(1, 1 << 62))
        streams: dict[int, Any] = {}

        async def put(c: int, n: int) -> None:
            call = streams.get(c)
            if call is None:
                call = streams[c] = ledger.SubmitStream()
            entry = pb.LedgerEntry(client_id=client_id, request_id=next(seq), app=pb.AppEntry(payload=value))
            await call.write(pb.SubmitRequest(entry=entry, timeout_ms=5000))
            answer = await call.read()
            if answer is grpc.aio.EOF or answer.error_code:
                streams.pop(c, None)
                raise _StreamError(getattr(answer, "error_code", "EOF"))

    stop_at = time.monotonic() + spec["seconds"]

    async def client(c: int) -> None:
        nonlocal errors
        n = 0
        while time.monotonic() < stop_at:
            n += 1
            t0 = time.perf_counter()
            try:
                await put(c, n)
            except (grpc.RpcError, _StreamError):
                errors += 1
                await asyncio.sleep(0.01)
                continue
            latencies.append(time.perf_counter() - t0)

    started = time.monotonic()
    await asyncio.gather(*(client(c) for c in range(spec["clients"])))
    elapsed = time.monotonic() - started
    if spec["kind"] == "fleetsuit-batch":
        await batcher.close()
    await channel.close()
    return {"latencies": latencies, "errors": errors, "elapsed": elapsed}


async def load_round(
    system: Any, pool: ProcessPoolExecutor, kind: str, clients: int, size: int, seconds: float
) -> dict[str, float]:
    leader = await _until(system.leader, 30, f"{system.name} leader")
    procs = _client_procs(clients)
    loop = asyncio.get_running_loop()
    specs = [
        {"kind": kind, "address": system.address(leader), "size": size, "seconds": seconds,
         "clients": clients // procs + (1 if w < clients % procs else 0), "stub_dir": system.stub_dir}
        for w in range(procs)
    ]
    pids = system.server_pids()
    cpu_before = sum(cpu_seconds(p) for p in pids)
    results = await asyncio.gather(*(loop.run_in_executor(pool, _worker, spec) for spec in specs))
    server_cpu = sum(cpu_seconds(p) for p in pids) - cpu_before
    latencies = sorted(x for r in results for x in r["latencies"])
    elapsed = max(r["elapsed"] for r in results)
    return {
        "ops_per_s": len(latencies) / elapsed,
        # CPU of all members (not the clients) per acknowledged operation.
        "server_cpu_us_per_op": 1e6 * server_cpu / max(1, len(latencies)),
        "p50_ms": _pct(latencies, 0.50) * 1000,
        "p99_ms": _pct(latencies, 0.99) * 1000,
        "errors": sum(r["errors"] for r in results),
    }


async def measure_load(
    runs: list[tuple[Any, str]], sizes: tuple[int, ...] = SIZES
) -> dict[str, list[dict[str, Any]]]:
    """Every (system, kind) of ``runs`` for every row, their rounds
    interleaved (A B C A B C ...): a host that slows down for a minute slows
    every system of the row alike, rather than the one that ran then."""
    out: dict[str, list[dict[str, Any]]] = {kind: [] for _, kind in runs}
    pool = ProcessPoolExecutor(max_workers=4, mp_context=multiprocessing.get_context("spawn"))
    try:
        for size in sizes:
            for clients in CLIENTS:
                rounds: dict[str, list[dict[str, float]]] = {kind: [] for _, kind in runs}
                for system, kind in runs:
                    await load_round(system, pool, kind, clients, size, 0.5)  # warm-up
                for _ in range(ROUNDS):
                    for system, kind in runs:
                        rounds[kind].append(await load_round(system, pool, kind, clients, size, ROUND_S))
                for _, kind in runs:
                    out[kind].append(_row(kind, clients, size, rounds[kind]))
    finally:
        pool.shutdown()
    return out


def _row(kind: str, clients: int, size: int, rounds: list[dict[str, float]]) -> dict[str, Any]:
    row = {
        "clients": clients,
        "size": size,
        "client_processes": _client_procs(clients),
        "ops_per_s": statistics.median(r["ops_per_s"] for r in rounds),
        "p50_ms": statistics.median(r["p50_ms"] for r in rounds),
        "p99_ms": statistics.median(r["p99_ms"] for r in rounds),
        "server_cpu_us_per_op": statistics.median(r["server_cpu_us_per_op"] for r in rounds),
        "errors": sum(r["errors"] for r in rounds),
    }
    print(f"  {kind:16} clients={clients:3} size={size:5}: {row['ops_per_s']:8.0f} ops/s  "
          f"p50 {row['p50_ms']:7.2f} ms  p99 {row['p99_ms']:7.2f} ms  "
          f"members' CPU {row['server_cpu_us_per_op']:5.0f} µs/op", flush=True)
    return row


async def failover_once(system: Any) -> float:
    leader = await _until(system.leader, 30, f"{system.name} leader")
    survivors = [i for i in range(3) if i != leader]
    # A steady writer before the kill, so the cluster is busy as in production.
    for _ in range(20):
        await system.put(leader, b"warm", b"x" * 64, 2.0)
    killed_at = time.monotonic()
    system.kill(leader)
    turn = 0
    recovered = None
    while time.monotonic() - killed_at < 30:
        target = survivors[turn % 2]
        turn += 1
        try:
            await system.put(target, b"probe", b"x" * 64, 0.5)
            recovered = time.monotonic()
            break
        except grpc.RpcError:
            continue
    if recovered is None:
        raise RuntimeError(f"{system.name} did not recover within 30 s")
    window = recovered - killed_at
    system.restart(leader)
    await _until(lambda: system.caught_up(leader), 60, f"{system.name} node {leader} to catch up")
    await asyncio.sleep(1.0)  # let the restarted member settle before the next kill
    return window


async def measure_failover(system: Any) -> dict[str, Any]:
    windows = []
    for k in range(KILLS):
        w = await failover_once(system)
        print(f"  {system.name:16} kill {k + 1}: unavailable for {w * 1000:7.0f} ms", flush=True)
        windows.append(w)
    return {"windows_ms": [w * 1000 for w in windows], "median_ms": statistics.median(windows) * 1000}


async def run(results_dir: Path) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="fleetsuit-bench-consensus-"))
    out: dict[str, Any] = {"machine": {"cpus": os.cpu_count()}, "systems": {}}
    try:
        rpc_pb2, rpc_grpc = load_stubs(root / "etcd-stubs")
        # Both clusters run side by side; the one not being measured idles.
        fleetsuit = Fleetsuit(root)
        try:
            etcd = Etcd(root, rpc_pb2, rpc_grpc)
            try:
                for system in (fleetsuit, etcd):
                    await _until(system.leader, 30, f"{system.name} leader")
                loads = await measure_load([
                    (fleetsuit, "fleetsuit"), (fleetsuit, "fleetsuit-stream"),
                    (fleetsuit, "fleetsuit-batch"), (etcd, "etcd"),
                ])
                out["systems"]["fleetsuit"] = {
                    "load": loads["fleetsuit"], "load_stream": loads["fleetsuit-stream"],
                    "load_batch": loads["fleetsuit-batch"], "failover": await measure_failover(fleetsuit),
                }
                out["systems"]["etcd"] = {"load": loads["etcd"], "failover": await measure_failover(etcd)}
            finally:
                await etcd.close()
        finally:
            await fleetsuit.close()
        noop = Noop(root)
        try:
            await _until(noop.leader, 30, "noop leader")
            ceiling = await measure_load(
                [(noop, "fleetsuit"), (noop, "fleetsuit-stream"), (noop, "fleetsuit-batch")], sizes=(256,)
            )
            out["grpc_ceiling"] = {
                "unary": ceiling["fleetsuit"], "stream": ceiling["fleetsuit-stream"],
                "batch": ceiling["fleetsuit-batch"],
            }
        finally:
            await noop.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    fs, et = out["systems"]["fleetsuit"], out["systems"]["etcd"]
    print("\nconsensus: fleetsuit vs etcd 3.4 (3 members, same machine, same client processes; medians)")
    print("  unary = one Submit call per entry, as etcd's Put; stream = one SubmitStream per client, one")
    print("  entry in flight per client; batch = a process's clients share one SubmitBatcher, which puts")
    print("  what they submit meanwhile in one message (etcd's client sends one message per Put)")
    print(f"{'clients':>7} {'size':>5} | {'unary/s':>8} {'stream/s':>8} {'batch/s':>8} {'etcd/s':>7} | "
          f"{'unary':>5} {'stream':>6} {'batch':>5} /etcd | {'st p50':>6} {'st p99':>6} "
          f"{'ba p50':>6} {'ba p99':>6} | {'et p50':>6} {'et p99':>6}")
    ratios = []
    for a, st, ba, b in zip(fs["load"], fs["load_stream"], fs["load_batch"], et["load"], strict=True):
        base = b["ops_per_s"] or float("nan")
        ratios.append({"clients": a["clients"], "size": a["size"], "unary_ratio": a["ops_per_s"] / base,
                       "stream_ratio": st["ops_per_s"] / base, "batch_ratio": ba["ops_per_s"] / base})
        print(f"{a['clients']:>7} {a['size']:>5} | {a['ops_per_s']:>8.0f} {st['ops_per_s']:>8.0f} "
              f"{ba['ops_per_s']:>8.0f} {b['ops_per_s']:>7.0f} | {a['ops_per_s'] / base:>5.2f} "
              f"{st['ops_per_s'] / base:>6.2f} {ba['ops_per_s'] / base:>5.2f}       | "
              f"{st['p50_ms']:>6.1f} {st['p99_ms']:>6.1f} {ba['p50_ms']:>6.1f} {ba['p99_ms']:>6.1f} | "
              f"{b['p50_ms']:>6.1f} {b['p99_ms']:>6.1f}")
    print("CPU of the three members per acknowledged operation (µs; clients not counted):")
    for a, st, ba, b in zip(fs["load"], fs["load_stream"], fs["load_batch"], et["load"], strict=True):
        print(f"{a['clients']:>7} {a['size']:>5} | unary {a['server_cpu_us_per_op']:>5.0f}  "
              f"stream {st['server_cpu_us_per_op']:>5.0f}  batch {ba['server_cpu_us_per_op']:>5.0f}  "
              f"etcd {b['server_cpu_us_per_op']:>5.0f}")
    ceiling = out["grpc_ceiling"]
    print("Python gRPC's own ceiling (a server that commits nothing, same clients, 256 B):")
    for u, st, ba in zip(ceiling["unary"], ceiling["stream"], ceiling["batch"], strict=True):
        print(f"{u['clients']:>7} clients | unary {u['ops_per_s']:>7.0f}/s  stream {st['ops_per_s']:>7.0f}/s  "
              f"batch {ba['ops_per_s']:>7.0f}/s")
    fo_ratio = fs["failover"]["median_ms"] / et["failover"]["median_ms"]
    print(f"failover window (median of {KILLS} kills): fleetsuit {fs['failover']['median_ms']:.0f} ms, "
          f"etcd {et['failover']['median_ms']:.0f} ms, ratio {fo_ratio:.2f}")
    out["ratios"] = ratios
    out["failover_ratio"] = fo_ratio
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "consensus.json").write_text(json.dumps(out, indent=2))
    return out


def main(results_dir: Path) -> dict[str, Any]:
    return asyncio.run(run(results_dir))


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("bench/results"))
