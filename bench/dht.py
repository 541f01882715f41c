"""Benchmark of the dht service on loopback.

Measures, in one run and on this machine:

- the limits: raw loopback TCP throughput (one socket, 1 MiB sends), local
  disk read speed (a file written, dropped from the page cache where the OS
  allows, read back), and the gRPC stream ceiling: the same Get client
  against a server that streams one pre-encoded 1 MiB message from memory
  (no store, no hashing) -- what Python gRPC itself manages here;
- Put and Get MB/s of a 256 MiB blob over gRPC to one ``python -m services.dht``
  process, with the client ``fleetsuit blob`` uses (services/dht/cli.py:
  bulk messages encoded by services/dht/wire.py). Get verifies every chunk
  against its id on the server side;
- the time to spread one 64 MiB payload to every node of 3-, 6- and 12-node
  clusters of real processes: Put on one node, then every node is asked to
  Pin it at once; the clock stops when the last node holds it. Per node: when
  its Pin returned, how much it sent to peers, the CPU it used. With fewer
  cores than nodes the spread is CPU-bound (every node receives, hashes and
  stores the whole payload), so the total time grows with n whatever the
  topology; how the upload is shared (the busiest node's share) shows
  whether the spread is epidemic or a star.

Figures are medians of ``RUNS`` runs. ``main(results_dir)`` returns them and
writes ``results_dir/dht.json``; run standalone with
``python -m bench.dht [RESULTS_DIR]``.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fleetsuit.grpcutil import CHANNEL_OPTIONS, SERVER_OPTIONS
from fleetsuit.ports import free_port
from fleetsuit.v1 import dht_pb2, dht_pb2_grpc
from services.dht import wire
from services.dht.cli import get_call, put_call

MIB = 1024 * 1024
BLOB_BYTES = 256 * MIB
SPREAD_BYTES = 64 * MIB
SPREAD_SIZES = (3, 6, 12)
RUNS = 3
REPO = pathlib.Path(__file__).resolve().parents[1]


def _mb_s(nbytes: int, seconds: float) -> float:
    return nbytes / MIB / seconds


# ------------------------------------------------------------------ limits


def raw_tcp_mb_s(nbytes: int = BLOB_BYTES) -> float:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    received = [0]

    def sink() -> None:
        conn, _ = listener.accept()
        buf = bytearray(MIB)
        with conn:
            while True:
                n = conn.recv_into(buf)
                if n == 0:
                    break
                received[0] += n

    thread = threading.Thread(target=sink)
    thread.start()
    payload = os.urandom(MIB)
    start = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port)) as client:
        for _ in range(nbytes // MIB):
            client.sendall(payload)
        client.shutdown(socket.SHUT_WR)
        thread.join()
    elapsed = time.perf_counter() - start
    listener.close()
    assert received[0] == nbytes
    return _mb_s(nbytes, elapsed)


def disk_read_mb_s(directory: pathlib.Path, nbytes: int = BLOB_BYTES) -> float:
    path = directory / "disk-read.bin"
    block = os.urandom(MIB)
    with open(path, "wb") as f:
        for _ in range(nbytes // MIB):
            f.write(block)
        f.flush()
        os.fsync(f.fileno())
    fd = os.open(path, os.O_RDONLY)
    try:
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        start = time.perf_counter()
        total = 0
        while chunk := os.read(fd, 4 * MIB):
            total += len(chunk)
        elapsed = time.perf_counter() - start
    finally:
        os.close(fd)
        path.unlink()
    return _mb_s(total, elapsed)


def _stream_server() -> None:
    """``python -m bench.dht --stream-server``: a gRPC server whose Get streams
    the same 1 MiB message from memory (no store, no hashing), for the
    ceiling figure. Prints its port, then serves until killed."""
    import asyncio

    message = wire.encode_get_response(0, os.urandom(MIB), BLOB_BYTES)

    async def get(_request: dht_pb2.BlobGetRequest, _context: object) -> AsyncIterator[bytes]:
        for _ in range(BLOB_BYTES // MIB):
            yield message

    async def run() -> None:
        server = grpc.aio.server(options=SERVER_OPTIONS)
        handler = grpc.unary_stream_rpc_method_handler(
            get,
            request_deserializer=dht_pb2.BlobGetRequest.FromString,
            response_serializer=lambda data: data,
        )
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("fleetsuit.v1.Dht", {"Get": handler}),)
        )
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        print(port, flush=True)
        await server.wait_for_termination()

    asyncio.run(run())


def grpc_stream_ceiling_mb_s() -> list[float]:
    """The Get client against ``_stream_server``: what gRPC alone manages here."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.dht", "--stream-server"], cwd=REPO, stdout=subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        with grpc.insecure_channel(f"127.0.0.1:{port}", options=CHANNEL_OPTIONS) as channel:
            runs = []
            for _ in range(RUNS):
                start = time.perf_counter()
                assert _get(channel, "") == BLOB_BYTES
                runs.append(_mb_s(BLOB_BYTES, time.perf_counter() - start))
        return runs
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


# ------------------------------------------------------------------ processes


class Node:
    def __init__(self, name: str, root: pathlib.Path, metrics: bool = False) -> None:
        self.name = name
        self.address = f"127.0.0.1:{free_port()}"
        self.metrics_port = free_port() if metrics else -1
        self.data = root / name
        self.proc: subprocess.Popen[bytes] | None = None
        self.channel: grpc.Channel | None = None

    def start(self, seeds: list[str]) -> None:
        self.data.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable, "-m", "services.dht",
            "--node-id", self.name, "--listen", self.address, "--metrics-port", str(self.metrics_port),
            "--data", str(self.data), "--seeds", ",".join(seeds),
            "--log-level", "WARNING", "--repair-interval-ms", "2000",
        ]  # fmt: skip
        with open(self.data.parent / f"{self.name}.log", "ab") as log:
            self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        self.channel = grpc.insecure_channel(self.address, options=CHANNEL_OPTIONS)

    def wait_healthy(self, timeout_s: float = 90) -> None:
        assert self.channel is not None
        stub = health_pb2_grpc.HealthStub(self.channel)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} not healthy after {timeout_s}s")

    def metric(self, name: str) -> float:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as resp:
            for line in resp.read().decode().splitlines():
                if line.startswith(name + " "):
                    return float(line.rsplit(" ", 1)[1])
        return 0.0

    def stub(self) -> dht_pb2_grpc.DhtStub:
        assert self.channel is not None
        return dht_pb2_grpc.DhtStub(self.channel)

    def stop(self) -> None:
        if self.channel is not None:
            self.channel.close()
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def _cluster(root: pathlib.Path, count: int, metrics: bool = False) -> list[Node]:
    nodes = [Node(f"n{i}", root, metrics) for i in range(count)]
    try:
        for node in nodes:
            node.start([n.address for n in nodes if n is not node])
        for node in nodes:
            node.wait_healthy()
    except BaseException:
        for node in nodes:
            node.stop()
        raise
    return nodes


def _put(channel: grpc.Channel, data: bytes) -> str:
    """Put as ``fleetsuit blob put`` does (requests encoded by services/dht/wire.py)."""

    def requests() -> Iterator[bytes]:
        view = memoryview(data)
        for i in range(0, len(data), MIB):
            yield wire.encode_put_request(view[i : i + MIB])

    return str(put_call(channel)(requests(), timeout=600).content_id)


def _get(channel: grpc.Channel, cid: str) -> int:
    """Get as ``fleetsuit blob get`` does (replies decoded by services/dht/wire.py)."""
    total = 0
    for _offset, data, _size in get_call(channel)(
        dht_pb2.BlobGetRequest(content_id=cid), timeout=600
    ):
        total += len(data)
    return total


def grpc_put_get(root: pathlib.Path) -> tuple[list[float], list[float], list[float]]:
    """Put and Get MB/s per run, and each Get over a raw TCP run measured just
    before it: on a shared machine the load moves between runs, so the ratio
    is taken pair by pair, not between medians measured minutes apart."""
    (node,) = _cluster(root / "single", 1)
    puts: list[float] = []
    gets: list[float] = []
    ratios: list[float] = []
    try:
        assert node.channel is not None
        channel = node.channel
        for _run in range(RUNS):
            data = os.urandom(BLOB_BYTES)
            start = time.perf_counter()
            cid = _put(channel, data)
            puts.append(_mb_s(BLOB_BYTES, time.perf_counter() - start))
            del data
            tcp = raw_tcp_mb_s()
            start = time.perf_counter()
            assert _get(channel, cid) == BLOB_BYTES
            gets.append(_mb_s(BLOB_BYTES, time.perf_counter() - start))
            ratios.append(gets[-1] / tcp)
    finally:
        node.stop()
    return puts, gets, ratios


@dataclass
class Spread:
    """One spread run: the total, and per node (n0 is where the Put landed)."""

    seconds: float
    done_s: list[float]  # when each node's Pin returned, from the start of the Put
    served_mib: list[float]  # payload bytes each node sent to peers
    cpu_s: list[float]  # CPU seconds each node's process used


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process (Linux /proc; 0 elsewhere)."""
    try:
        fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def spread_run(root: pathlib.Path, count: int, seed: int) -> Spread:
    nodes = _cluster(root / f"spread{count}-{seed}", count, metrics=True)
    try:
        pids = [n.proc.pid for n in nodes if n.proc is not None]
        cpu0 = [_cpu_seconds(pid) for pid in pids]
        data = os.urandom(SPREAD_BYTES)
        start = time.perf_counter()
        assert nodes[0].channel is not None
        cid = _put(nodes[0].channel, data)

        def pin(node: Node) -> float:
            node.stub().Pin(dht_pb2.BlobPinRequest(content_id=cid), timeout=600)
            return time.perf_counter() - start

        with ThreadPoolExecutor(max_workers=count) as pool:
            done = list(pool.map(pin, nodes))
        seconds = time.perf_counter() - start
        served = [n.metric("fleetsuit_dht_bytes_out_total") / MIB for n in nodes]
        cpu = [_cpu_seconds(pid) - c for pid, c in zip(pids, cpu0, strict=True)]
        return Spread(seconds, done, served, cpu)
    finally:
        for node in nodes:
            node.stop()


# ------------------------------------------------------------------ main


def main(results_dir: pathlib.Path) -> dict[str, object]:
    results_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fleetsuit-bench-dht-") as tmp:
        root = pathlib.Path(tmp)
        tcp = statistics.median(raw_tcp_mb_s() for _ in range(RUNS))
        disk = statistics.median(disk_read_mb_s(root) for _ in range(RUNS))
        ceiling = statistics.median(grpc_stream_ceiling_mb_s())
        puts, gets, ratios = grpc_put_get(root)
        spread_runs = {n: [spread_run(root, n, run) for run in range(2)] for n in SPREAD_SIZES}
    spread = {n: statistics.median(r.seconds for r in v) for n, v in spread_runs.items()}
    get = statistics.median(gets)
    # log-n check: time per log2(n) should not grow from the smallest cluster to the largest.
    # On a machine with fewer cores than nodes the spread is CPU-bound (every
    # node hashes and stores 64 MiB), so the per-node figures say more: how
    # the upload was shared and how much CPU the whole cluster used.
    per_log = {n: s / math.log2(n) for n, s in spread.items()}
    cluster_cpu = {n: statistics.median(sum(r.cpu_s) for r in v) for n, v in spread_runs.items()}
    max_served = {
        n: statistics.median(max(r.served_mib) for r in v) / (SPREAD_BYTES / MIB)
        for n, v in spread_runs.items()
    }
    result: dict[str, object] = {
        "raw_tcp_mb_s": round(tcp, 1),
        "disk_read_mb_s": round(disk, 1),
        "grpc_stream_ceiling_mb_s": round(ceiling, 1),
        "grpc_put_mb_s": round(statistics.median(puts), 1),
        "grpc_get_mb_s": round(get, 1),
        "get_vs_tcp": round(statistics.median(ratios), 3),  # median of paired runs
        "get_vs_grpc_ceiling": round(get / ceiling, 3),
        "goal_get_half_of_tcp": statistics.median(ratios) >= 0.5,
        "spread_64mib_s": {str(n): round(s, 2) for n, s in spread.items()},
        "spread_s_per_log2n": {str(n): round(v, 2) for n, v in per_log.items()},
        "spread_cluster_cpu_s": {str(n): round(v, 1) for n, v in cluster_cpu.items()},
        "spread_max_served_blobs": {str(n): round(v, 2) for n, v in max_served.items()},
        "spread_per_node": {
            str(n): [
                {"done_s": [round(x, 2) for x in r.done_s]}
                | {"served_mib": [round(x) for x in r.served_mib]}
                | {"cpu_s": [round(x, 1) for x in r.cpu_s]}
                for r in v
            ]
            for n, v in spread_runs.items()
        },
        "goal_spread_log_n": per_log[SPREAD_SIZES[-1]] <= 1.25 * per_log[SPREAD_SIZES[0]],
        "runs": RUNS,
        "blob_bytes": BLOB_BYTES,
        "spread_bytes": SPREAD_BYTES,
        "cpus": os.cpu_count(),
    }
    print(f"{'dht on loopback':32s} {'figure':>12s}")
    print(f"{'raw loopback TCP':32s} {tcp:9.1f} MB/s")
    print(f"{'local disk read':32s} {disk:9.1f} MB/s")
    print(f"{'gRPC stream from memory':32s} {ceiling:9.1f} MB/s  (no store: gRPC's own limit)")
    print(f"{'gRPC Put 256 MiB':32s} {statistics.median(puts):9.1f} MB/s")
    print(
        f"{'gRPC Get 256 MiB':32s} {get:9.1f} MB/s  "
        f"({100 * statistics.median(ratios):.0f}% of TCP run by run, "
        f"{100 * get / ceiling:.0f}% of the gRPC stream)"
    )
    for n, s in spread.items():
        print(
            f"{f'spread 64 MiB to {n} nodes':32s} {s:9.2f} s    ({per_log[n]:.2f} s per log2 n; "
            f"cluster CPU {cluster_cpu[n]:.1f} s on {os.cpu_count()} cores; "
            f"busiest node sent {max_served[n]:.2f}x the blob)"
        )
        last = spread_runs[n][-1]
        for i in range(n):
            print(
                f"    n{i:<3d} done {last.done_s[i]:6.2f} s  sent {last.served_mib[i]:6.0f} MiB"
                f"  cpu {last.cpu_s[i]:5.1f} s"
            )
    (results_dir / "dht.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    if sys.argv[1:] == ["--stream-server"]:
        _stream_server()
    else:
        out = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "bench" / "results"
        main(out)
