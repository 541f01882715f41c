"""Helpers for multi-process tests: free ports, a local cluster started and
stopped by pid, and waiting on conditions with deadlines (never fixed sleeps)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

from fleetsuit.cluster import start_cluster, stop_processes
from fleetsuit.grpcutil import insecure_channel
from fleetsuit.ports import free_base_port
from fleetsuit.v1 import consensus_pb2_grpc as pb_grpc

T = TypeVar("T")


async def wait_for(
    probe: Callable[[], Awaitable[T | None]], timeout_s: float, what: str, interval_s: float = 0.05
) -> T:
    """Poll ``probe`` until it returns a non-None value; fail after the deadline."""
    deadline = time.monotonic() + timeout_s
    last_error: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = await probe()
            if value is not None:
                return value
        except Exception as exc:  # the condition may throw while nodes come up
            last_error = exc
        await asyncio.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what} (last error: {last_error})")


class LocalCluster:
    """A cluster started by a test; every process is stopped by pid at close()."""

    def __init__(self, nodes: int, data_dir: Path, cluster_id: str = "test") -> None:
        self.base_port = free_base_port(10 * nodes + 10)
        self.doc, self._procs = start_cluster(nodes, data_dir, self.base_port, cluster_id)
        self.nodes: list[dict[str, Any]] = self.doc["nodes"]  # type: ignore[assignment]

    def endpoint(self, node_id: str, service: str = "consensus") -> str:
        return str(self.node(node_id)["endpoints"][service])

    def node(self, node_id: str) -> dict[str, Any]:
        return next(n for n in self.nodes if n["id"] == node_id)


    def kill(self, node_id: str, service: str = "consensus", sig: int = signal.SIGKILL) -> None:
        """Signal the process and wait (bounded) for it to exit."""
        pid = self.node(node_id)["pids"][service]
        os.kill(pid, sig)
        for proc in self._procs:
            if proc.pid == pid:
                proc.wait(timeout=20)

    def exit_code(self, node_id: str, service: str = "consensus") -> int | None:
        pid = self.node(node_id)["pids"][service]
        return next((p.returncode for p in self._procs if p.pid == pid), None)

    def restart(self, node_id: str, service: str = "consensus") -> None:
        node = self.node(node_id)
        cmd = node["commands"][service]
        log_path = Path(node["data_dir"]) / f"{service}.log"
        with open(log_path, "ab") as log_file:
            proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
        self._procs.append(proc)
        node["pids"][service] = proc.pid

    def close(self) -> None:
        stop_processes(self._procs)


@asynccontextmanager
async def ledger_stubs(cluster: LocalCluster) -> AsyncIterator[dict[str, pb_grpc.LedgerStub]]:
    """A Ledger stub per node id, on channels closed when the block ends."""
    channels = {n["id"]: insecure_channel(cluster.endpoint(n["id"])) for n in cluster.nodes}
    try:
        yield {nid: pb_grpc.LedgerStub(ch) for nid, ch in channels.items()}
    finally:
        for ch in channels.values():
            await ch.close()
