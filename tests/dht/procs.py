"""Real ``python -m services.dht`` processes on 127.0.0.1 for integration tests.

Ports are picked free (``tests.support.ports``), logs go to files beside the
data dirs, and every process is stopped by its pid (``DhtProcess.kill`` /
``stop``, through ``tests.support.procs``).
"""

from __future__ import annotations

import hashlib
import pathlib
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fleetsuit.grpcutil import CHANNEL_OPTIONS
from fleetsuit.v1 import dht_pb2, dht_pb2_grpc
from tests.support.ports import free_port
from tests.support.procs import kill, stop_processes
from tests.support.wait import wait_until

__all__ = ["DhtProcess", "start_cluster", "wait_until"]

REPO = pathlib.Path(__file__).resolve().parents[2]


class DhtProcess:
    def __init__(self, name: str, root: pathlib.Path, extra: list[str]) -> None:
        self.name = name
        self.port = free_port()
        self.metrics_port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.data = root / name
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None
        self.seeds: list[str] = []
        self._channel: grpc.Channel | None = None

    def start(self) -> None:
        self.data.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable, "-m", "services.dht",
            "--node-id", self.name,
            "--listen", self.address,
            "--metrics-port", str(self.metrics_port),
            "--data", str(self.data),
            "--seeds", ",".join(self.seeds),
            "--log-level", "WARNING",
            *self.extra,
        ]  # fmt: skip
        with open(self.data.parent / f"{self.name}.log", "ab") as log:
            self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def healthy(self) -> bool:
        try:
            stub = health_pb2_grpc.HealthStub(self.channel())
            reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
            return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)
        except grpc.RpcError:
            return False

    def channel(self) -> grpc.Channel:
        if self._channel is None:
            self._channel = grpc.insecure_channel(self.address, options=CHANNEL_OPTIONS)
        return self._channel

    def stub(self) -> dht_pb2_grpc.DhtStub:
        return dht_pb2_grpc.DhtStub(self.channel())

    def kill(self) -> None:
        """SIGKILL by pid (a crash)."""
        if self.proc is not None and self.proc.poll() is None:
            kill(self.proc, signal.SIGKILL)
        self._close_channel()

    def stop(self) -> int | None:
        """SIGTERM by pid, SIGKILL if it has not exited in 10 s; the exit code."""
        if self.proc is not None:
            stop_processes([self.proc])
        self._close_channel()
        return self.proc.returncode if self.proc is not None else None

    def _close_channel(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    def metric(self, name: str, labels: str = "") -> float:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as resp:
            text = resp.read().decode()
        for line in text.splitlines():
            if line.startswith(name + (f"{{{labels}}}" if labels else " ")):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    # ---------------------------------------------------------------- client

    def put(self, data: bytes, piece: int = 1024 * 1024) -> str:
        def requests() -> Iterator[dht_pb2.BlobPutRequest]:
            for i in range(0, len(data), piece):
                yield dht_pb2.BlobPutRequest(data=data[i : i + piece])

        return str(self.stub().Put(requests(), timeout=120).content_id)

    def read_into(
        self, cid: str, h: hashlib._Hash, offset: int = 0, stop_after: int | None = None
    ) -> int:
        """Feed the blob from ``offset`` into ``h``; ``stop_after`` cancels the
        stream once that many bytes arrived. Returns the bytes read."""
        n = 0
        call = self.stub().Get(dht_pb2.BlobGetRequest(content_id=cid, offset=offset), timeout=120)
        for msg in call:
            assert msg.offset == offset + n
            h.update(msg.data)
            n += len(msg.data)
            if stop_after is not None and n >= stop_after:
                call.cancel()
                break
        return n

    def sha256_of(self, cid: str) -> tuple[str, int]:
        h = hashlib.sha256()
        n = self.read_into(cid, h)
        return h.hexdigest(), n

    def is_local(self, cid: str) -> bool:
        try:
            reply = self.stub().Stat(dht_pb2.BlobStatRequest(content_id=cid), timeout=5)
        except grpc.RpcError:
            return False
        return bool(reply.local)


def start_cluster(root: pathlib.Path, count: int, extra: list[str]) -> list[DhtProcess]:
    nodes = [DhtProcess(f"n{i}", root, extra) for i in range(count)]
    for node in nodes:
        node.seeds = [n.address for n in nodes if n is not node]
    for node in nodes:
        node.start()
    return nodes
