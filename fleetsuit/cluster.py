"""``fleetsuit cluster up``: a local cluster of N logical nodes on loopback,
for people and tests.

Each node runs one process per service in ``SERVICES``; node i's service
listens on ``base_port + 10*i + port_offset`` and serves metrics on
``base_port + 10*i + metrics_offset``. The launcher runs in the foreground,
writes ``DIR/cluster.json`` (ids, pids, endpoints and the exact command of
every child, so a test can restart one), and on SIGINT/SIGTERM stops every
child it started: SIGTERM, then SIGKILL after a grace period. Every service of
a node gets the node's data directory and keeps its RocksDB in a sub-folder
of its own (``consensus/``, ``blobs/``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

STOP_GRACE_S = 5.0


@dataclass(frozen=True)
class NodePlan:
    index: int
    node_id: str
    data_dir: Path
    base: int  # base_port + 10 * index


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    module: str
    port_offset: int
    metrics_offset: int
    # (this node, every node, cluster id) -> extra arguments
    extra_args: Callable[[NodePlan, list[NodePlan], str], list[str]]
    stores_data: bool = True  # takes --data (the manifest service is stateless)


def _consensus_args(node: NodePlan, nodes: list[NodePlan], cluster_id: str) -> list[str]:
    peers = ",".join(f"{n.node_id}=127.0.0.1:{n.base + 1}" for n in nodes)
    return ["--peers", peers, "--cluster-id", cluster_id]


def _dht_args(node: NodePlan, nodes: list[NodePlan], cluster_id: str) -> list[str]:
    seeds = ",".join(f"127.0.0.1:{n.base + 2}" for n in nodes if n is not node)
    return ["--seeds", seeds]


SERVICES: list[ServiceSpec] = [
    ServiceSpec("consensus", "services.consensus", 1, 6, _consensus_args),
    ServiceSpec("dht", "services.dht", 2, 7, _dht_args),
    ServiceSpec("manifest", "services.manifest", 3, 8, lambda node, nodes, cluster_id: [],
                stores_data=False),
]


def plan_nodes(count: int, data_dir: Path, base_port: int) -> list[NodePlan]:
    return [
        NodePlan(index=i, node_id=f"n{i + 1}", data_dir=data_dir / f"n{i + 1}", base=base_port + 10 * i)
        for i in range(count)
    ]


def command_for(spec: ServiceSpec, node: NodePlan, nodes: list[NodePlan], cluster_id: str) -> list[str]:
    return [
        sys.executable, "-m", spec.module,
        "--node-id", node.node_id,
        "--listen", f"127.0.0.1:{node.base + spec.port_offset}",
        "--metrics-port", str(node.base + spec.metrics_offset),
        *(["--data", str(node.data_dir)] if spec.stores_data else []),
        *spec.extra_args(node, nodes, cluster_id),
    ]


def join_command(
    node_id: str, listen: str, data_dir: Path, voters: dict[str, str], cluster_id: str, metrics_port: int = 0
) -> list[str]:
    """The command of a consensus process joining a running cluster as a
    learner (add it with ``fleetsuit cluster add`` first, or after: until it
    is added nobody talks to it). ``voters``: id -> address of the current
    voters. Restarting it with the same command, even with its data
    directory wiped, brings it back."""
    peers = ",".join(f"{nid}={addr}" for nid, addr in sorted(voters.items()) if nid != node_id)
    return [
        sys.executable, "-m", "services.consensus",
        "--node-id", node_id, "--listen", listen, "--metrics-port", str(metrics_port),
        "--data", str(data_dir), "--peers", f"{peers},{node_id}={listen}", "--cluster-id", cluster_id,
        "--join",
    ]


def start_cluster(
    count: int, data_dir: Path, base_port: int, cluster_id: str = "local"
) -> tuple[dict[str, object], list[subprocess.Popen[bytes]]]:
    """Start every child; return the cluster.json document and the processes."""
    nodes = plan_nodes(count, data_dir, base_port)
    procs: list[subprocess.Popen[bytes]] = []
    doc_nodes = []
    anchors = write_anchors(nodes, data_dir, cluster_id)
    for node in nodes:
        node.data_dir.mkdir(parents=True, exist_ok=True)
        pids: dict[str, int] = {}
        endpoints: dict[str, str] = {}
        metrics: dict[str, str] = {}
        commands: dict[str, list[str]] = {}
        for spec in SERVICES:
            cmd = command_for(spec, node, nodes, cluster_id)
            log_path = node.data_dir / f"{spec.name}.log"
            with open(log_path, "ab") as log_file:
                proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
            procs.append(proc)
            pids[spec.name] = proc.pid
            endpoints[spec.name] = f"127.0.0.1:{node.base + spec.port_offset}"
            metrics[spec.name] = f"127.0.0.1:{node.base + spec.metrics_offset}"
            commands[spec.name] = cmd
        doc_nodes.append(
            {
                "id": node.node_id,
                "data_dir": str(node.data_dir),
                "pids": pids,
                "endpoints": endpoints,
                "metrics": metrics,
                "commands": commands,
            }
        )
    return {"cluster_id": cluster_id, "anchors": str(anchors), "nodes": doc_nodes}, procs


def write_anchors(nodes: list[NodePlan], data_dir: Path, cluster_id: str) -> Path:
    """Create (or reuse) each node's block-signing key and write the
    cluster's anchors file, which ``fleetsuit ledger verify --anchors`` and
    devices use to check certificates offline."""
    from services.consensus.ledger.certify import Anchors, NodeKey

    keys = {node.node_id: NodeKey.load_or_create(node.data_dir / "node.key").public for node in nodes}
    path = data_dir / "anchors.json"
    path.write_text(Anchors(cluster_id=cluster_id, keys=keys).to_json())
    return path


def stop_processes(procs: list[subprocess.Popen[bytes]], grace_s: float = STOP_GRACE_S) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for proc in procs:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_cluster(count: int, data_dir: Path, base_port: int, cluster_id: str = "local") -> int:
    """Foreground: start, write cluster.json, wait for SIGINT/SIGTERM, stop all."""
    stopping = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    data_dir.mkdir(parents=True, exist_ok=True)
    doc, procs = start_cluster(count, data_dir, base_port, cluster_id)
    try:
        tmp = data_dir / "cluster.json.tmp"
        tmp.write_text(json.dumps(doc, indent=2))
        os.replace(tmp, data_dir / "cluster.json")
        print(f"cluster of {count} nodes up; description in {data_dir / 'cluster.json'}", flush=True)
        for node in doc["nodes"]:  # type: ignore[attr-defined]
            print(f"  {node['id']}: {node['endpoints']}", flush=True)
        reported: set[int] = set()
        while not stopping:
            time.sleep(0.2)
            for proc in procs:
                if proc.poll() is not None and proc.pid not in reported:
                    reported.add(proc.pid)
                    print(f"child {proc.pid} exited with {proc.returncode}", file=sys.stderr, flush=True)
    finally:
        stop_processes(procs)
        for s, handler in old.items():
            signal.signal(s, handler)
    print("cluster stopped", flush=True)
    return 0
