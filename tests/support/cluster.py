"""A local cluster started by a test (``launcher.cluster.start_cluster`` on
free ports below the ephemeral range), every process stopped by pid at
``close()``; and gRPC stubs on its nodes."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

from fleetsuit.grpcutil import insecure_channel
from fleetsuit.v1 import consensus_pb2_grpc as pb_grpc
from launcher.cluster import spawn, start_cluster, stop_cluster
from launcher.layout import NODE_PORT_SPAN

from .ports import free_base_port
from .procs import kill, stop_processes


class LocalCluster:
    """``nodes`` nodes on loopback under ``data_dir``; each process is
    stopped by pid at close()."""

    def __init__(
        self,
        nodes: int,
        data_dir: Path,
        cluster_id: str = "test",
        trust_anchors: Sequence[Path] = (),
        extra_args: Mapping[str, Sequence[str]] | None = None,
        *,
        supervised: bool = False,
    ) -> None:
        """``supervised``: each node a ``fleetsuit node`` supervisor (which
        restarts its children: kill/restart below are for unsupervised
        clusters only)."""
        self.base_port = free_base_port(NODE_PORT_SPAN * nodes + NODE_PORT_SPAN)
        self.supervised = supervised
        self.doc, self._procs = start_cluster(
            nodes, data_dir, self.base_port, cluster_id, trust_anchors=trust_anchors, extra_args=extra_args,
            supervised=supervised,
        )
        self.nodes: list[dict[str, Any]] = self.doc["nodes"]

    def endpoint(self, node_id: str, service: str = "consensus") -> str:
        return str(self.node(node_id)["endpoints"][service])

    def node(self, node_id: str) -> dict[str, Any]:
        return next(n for n in self.nodes if n["id"] == node_id)

    def _proc(self, node_id: str, service: str) -> subprocess.Popen[bytes]:
        pid = self.node(node_id)["pids"][service]
        return next(p for p in self._procs if p.pid == pid)

    def kill(self, node_id: str, service: str = "consensus", sig: int = signal.SIGKILL) -> None:
        """Signal the process by pid and wait (bounded) for it to exit."""
        kill(self._proc(node_id, service), sig)

    def exit_code(self, node_id: str, service: str = "consensus") -> int | None:
        return self._proc(node_id, service).returncode

    def restart(self, node_id: str, service: str = "consensus") -> None:
        """Start the service again with its very same command."""
        node = self.node(node_id)
        proc = spawn(node["commands"][service], Path(node["data_dir"]) / f"{service}.log")
        self._procs.append(proc)
        node["pids"][service] = proc.pid

    def close(self) -> None:
        if self.supervised:
            stop_cluster(self.doc, self._procs)
        else:
            stop_processes(self._procs)


@contextmanager
def local_cluster(nodes: int, data_dir: Path, cluster_id: str = "test") -> Iterator[LocalCluster]:
    """A LocalCluster for the length of a ``with`` block (or a fixture)."""
    cluster = LocalCluster(nodes, data_dir, cluster_id)
    try:
        yield cluster
    finally:
        cluster.close()


@asynccontextmanager
async def ledger_stubs(cluster: LocalCluster) -> AsyncIterator[dict[str, pb_grpc.LedgerStub]]:
    """A Ledger stub per node id, on channels closed when the block ends."""
    channels = {n["id"]: insecure_channel(cluster.endpoint(n["id"])) for n in cluster.nodes}
    try:
        yield {nid: pb_grpc.LedgerStub(ch) for nid, ch in channels.items()}
    finally:
        for ch in channels.values():
            await ch.close()
