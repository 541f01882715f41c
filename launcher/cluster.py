"""A local cluster of N logical nodes on loopback: the plan (ids, ports,
data directories), each child's exact command, the anchors file, starting
the children and stopping them by pid. For ``fleetsuit cluster up``
(``launcher/up.py``, which adds the checks and the foreground loop), the
demo, tests and benchmarks.

Each node runs one process per service in ``SERVICES``; node i's service
listens on ``base_port + 10*i + port_offset`` and serves metrics on
``base_port + 10*i + metrics_offset``. Every service of a node gets the
node's data directory and keeps its RocksDB in a sub-folder of its own
(``consensus/``, ``blobs/``). A node's consensus process is told the
endpoints of the node's other services (``--manifest-endpoint``,
``--dht-endpoint``, ...: it checks a release with them before proposing it)
and the cluster's trust anchors (``--trust-anchor``, recorded in the ledger
at bootstrap). This module checks nothing before it starts a child:
``launcher/preflight.py`` does (the anchors too).

Supervised (``start_cluster(..., supervised=True)``, what ``fleetsuit
cluster up`` does), each node is one ``fleetsuit node`` supervisor
(``launcher/node/``) with its config written to ``DIR/nX/node.toml``: it
starts the node's four services with the same ports and flags, restarts one
that exits, serves ``/healthz`` and ``/metrics`` on the node's base port
(``base_port + 10*i``) and records its children in ``DIR/nX/node.json``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .layout import (
    ANCHORS_FILE,
    GATEWAY_HTTP_OFFSET,
    HEALTH_OFFSET,
    NODE_CONFIG_FILE,
    NODE_PORT_SPAN,
    SERVICES,
    SUPERVISOR_COMMAND,
    ServiceSpec,
)
from .processes import running

STOP_GRACE_S = 5.0
CLUSTER_ID_PREFIX = "fs-"
SUPERVISOR_LOG = "node.log"
# Each child of a supervised local node gets this long to stop after SIGTERM;
# its supervisor stops them in three stages (gateway, consensus, the rest).
CHILD_STOP_GRACE_MS = 10_000
SUPERVISOR_STOP_GRACE_S = 3 * CHILD_STOP_GRACE_MS / 1000 + 5.0


@dataclass(frozen=True)
class NodePlan:
    index: int
    node_id: str
    data_dir: Path
    base: int  # base_port + 10 * index


def _consensus_args(node: NodePlan, nodes: list[NodePlan], cluster_id: str) -> list[str]:
    peers = ",".join(f"{n.node_id}=127.0.0.1:{n.base + 1}" for n in nodes)
    # The node's other services (services.consensus config: --dht-endpoint,
    # --manifest-endpoint, --gateway-endpoint).
    endpoints = [
        arg
        for spec in SERVICES if spec.name != "consensus"
        for arg in (f"--{spec.name}-endpoint", f"127.0.0.1:{node.base + spec.port_offset}")
    ]
    return ["--peers", peers, "--cluster-id", cluster_id, *endpoints]


def _dht_args(node: NodePlan, nodes: list[NodePlan], cluster_id: str) -> list[str]:
    seeds = ",".join(f"127.0.0.1:{n.base + 2}" for n in nodes if n is not node)
    return ["--seeds", seeds, "--cluster-id", cluster_id]


def _manifest_args(node: NodePlan, nodes: list[NodePlan], cluster_id: str) -> list[str]:
    return ["--cluster-id", cluster_id]


def gateway_http(node: NodePlan) -> str:
    return f"127.0.0.1:{node.base + GATEWAY_HTTP_OFFSET}"


def _gateway_args(node: NodePlan, nodes: list[NodePlan], cluster_id: str) -> list[str]:
    # The node's own consensus (ledger, devices, reports) and dht (payloads).
    return [
        "--cluster-id", cluster_id,
        "--consensus-endpoint", f"127.0.0.1:{node.base + 1}",
        "--dht-endpoint", f"127.0.0.1:{node.base + 2}",
        "--http-listen", gateway_http(node),
    ]


# Each service's flags beyond its id, ports and data: (this node, every node,
# cluster id) -> extra arguments.
_EXTRA_ARGS: dict[str, Callable[[NodePlan, list[NodePlan], str], list[str]]] = {
    "consensus": _consensus_args, "dht": _dht_args, "manifest": _manifest_args, "gateway": _gateway_args,
}


def new_cluster_id() -> str:
    """A cluster id unique to one bootstrap; nodes store it and refuse a data
    directory of another cluster."""
    return CLUSTER_ID_PREFIX + secrets.token_hex(8)


def plan_nodes(count: int, data_dir: Path, base_port: int) -> list[NodePlan]:
    return [
        NodePlan(index=i, node_id=f"n{i + 1}", data_dir=data_dir / f"n{i + 1}",
                 base=base_port + NODE_PORT_SPAN * i)
        for i in range(count)
    ]


def planned_ports(nodes: list[NodePlan], *, supervised: bool = False) -> list[tuple[int, str]]:
    """Every port the cluster will bind, with what binds it ("metrics of
    consensus of n1"), in start order; ``supervised``: each node's
    supervisor's /healthz too."""
    out: list[tuple[int, str]] = []
    for node in nodes:
        if supervised:
            out.append((node.base + HEALTH_OFFSET, f"health of {node.node_id}"))
        for spec in SERVICES:
            out.append((node.base + spec.port_offset, f"{spec.name} of {node.node_id}"))
            out.append((node.base + spec.metrics_offset, f"metrics of {spec.name} of {node.node_id}"))
        out.append((node.base + GATEWAY_HTTP_OFFSET, f"downloads of gateway of {node.node_id}"))
    return out


def command_for(
    spec: ServiceSpec, node: NodePlan, nodes: list[NodePlan], cluster_id: str, trust_anchors: Sequence[str] = ()
) -> list[str]:
    """``trust_anchors``: ``PATH[:components=..][:classes=..]`` each (paths
    absolute: a restart from cluster.json may run elsewhere)."""
    return [
        sys.executable, "-m", spec.module,
        "--node-id", node.node_id,
        "--listen", f"127.0.0.1:{node.base + spec.port_offset}",
        "--metrics-port", str(node.base + spec.metrics_offset),
        *(["--data", str(node.data_dir)] if spec.stores_data else []),
        *_EXTRA_ARGS[spec.name](node, nodes, cluster_id),
        *(arg for anchor in (trust_anchors if spec.takes_trust_anchors else ()) for arg in ("--trust-anchor", anchor)),
    ]


def join_command(
    node_id: str,
    listen: str,
    data_dir: Path,
    voters: dict[str, str],
    cluster_id: str,
    metrics_port: int = 0,
    *,
    endpoints: Mapping[str, str] | None = None,
    trust_anchors: Sequence[str | Path] = (),
) -> list[str]:
    """The command of a consensus process joining a running cluster as a
    learner (add it with ``fleetsuit cluster add`` first, or after: until it
    is added nobody talks to it). ``voters``: id -> address of the current
    voters. ``endpoints``: the node's other services (``dht``, ``manifest``,
    ``gateway``), which check its releases before proposal and which its
    Status names; ``trust_anchors``: as for ``start_cluster`` (the ledger's
    stand once recorded; a joining node only compares). Restarting it with
    the same command, even with its data directory wiped, brings it back."""
    peers = ",".join(f"{nid}={addr}" for nid, addr in sorted(voters.items()) if nid != node_id)
    services = [arg for name, address in sorted((endpoints or {}).items())
                for arg in (f"--{name}-endpoint", address)]
    anchors = [arg for anchor in anchor_arguments(trust_anchors) for arg in ("--trust-anchor", anchor)]
    return [
        sys.executable, "-m", "services.consensus",
        "--node-id", node_id, "--listen", listen, "--metrics-port", str(metrics_port),
        "--data", str(data_dir), "--peers", f"{peers},{node_id}={listen}", "--cluster-id", cluster_id,
        "--join", *services, *anchors,
    ]


def spawn(cmd: Sequence[str], log_path: Path, env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start one child in a session of its own (a terminal's Ctrl-C reaches
    the launcher only, which stops the children in order), output to its log."""
    with open(log_path, "ab") as log_file:
        return subprocess.Popen(list(cmd), stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
                                env=env)


def anchor_arguments(trust_anchors: Sequence[str | Path]) -> list[str]:
    """The ``--trust-anchor`` values of the consensus processes: each
    ``PATH[:components=..][:classes=..]`` with its path made absolute (not
    read here: ``preflight.check_trust_anchors`` does)."""
    from services.consensus.anchors import parse_anchor_spec

    out = []
    for text in trust_anchors:
        spec = parse_anchor_spec(str(text))
        out.append(str(dataclasses.replace(spec, path=str(Path(spec.path).absolute()))))
    return out


def start_cluster(
    count: int,
    data_dir: Path,
    base_port: int,
    cluster_id: str | None = None,
    *,
    trust_anchors: Sequence[str | Path] = (),
    extra_args: Mapping[str, Sequence[str]] | None = None,
    supervised: bool = False,
) -> tuple[dict[str, Any], list[subprocess.Popen[bytes]]]:
    """Write the anchors and start every child (without waiting for any);
    return the cluster.json document and the processes. ``cluster_id``:
    a new one when None. ``trust_anchors``: publisher keys
    (``PATH[:components=..][:classes=..]``) every consensus process records
    in the ledger at bootstrap. ``extra_args``: service name -> more
    flags for that service on every node (``{"gateway":
    ["--heartbeat-interval-ms", "1000"]}``). ``supervised``: one node
    supervisor per node instead (the processes returned are the
    supervisors; each node's ``pids`` are filled in from its node.json by
    ``refresh_pids`` once its children run; stop with ``stop_cluster``);
    a config the services refuse raises ``ConfigError`` before any starts."""
    cluster_id = cluster_id or new_cluster_id()
    anchor_args = anchor_arguments(trust_anchors)
    nodes = plan_nodes(count, data_dir, base_port)
    for node in nodes:
        node.data_dir.mkdir(parents=True, exist_ok=True)
    anchors = write_anchors(nodes, data_dir, cluster_id)
    start = _start_supervised if supervised else _start_children
    doc_nodes, procs = start(nodes, cluster_id, anchor_args, extra_args)
    doc = {
        "cluster_id": cluster_id, "base_port": base_port, "anchors": str(anchors),
        # The publisher keys the ledger is bootstrapped with (signing releases).
        "trust_anchors": anchor_args, "nodes": doc_nodes,
    }
    return doc, procs


def _start_children(
    nodes: list[NodePlan], cluster_id: str, anchor_args: Sequence[str],
    extra_args: Mapping[str, Sequence[str]] | None,
) -> tuple[list[dict[str, Any]], list[subprocess.Popen[bytes]]]:
    """Start every service of every node, unsupervised."""
    procs: list[subprocess.Popen[bytes]] = []
    doc_nodes = []
    try:
        for node in nodes:
            pids: dict[str, int] = {}
            endpoints: dict[str, str] = {}
            metrics: dict[str, str] = {}
            commands: dict[str, list[str]] = {}
            for spec in SERVICES:
                cmd = command_for(spec, node, nodes, cluster_id, anchor_args)
                cmd += list((extra_args or {}).get(spec.name, ()))
                proc = spawn(cmd, node.data_dir / f"{spec.name}.log")
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
                    # Where devices download payloads (the gateway's HTTP).
                    "downloads": gateway_http(node),
                    "metrics": metrics,
                    "commands": commands,
                }
            )
    except BaseException:
        stop_processes(procs)  # a child that could not be started: none left behind
        raise
    return doc_nodes, procs


def write_anchors(nodes: list[NodePlan], data_dir: Path, cluster_id: str) -> Path:
    """Create (or reuse) each node's block-signing key and write the
    cluster's anchors file, which ``fleetsuit ledger verify --anchors`` and
    devices use to check certificates offline."""
    from services.consensus.ledger.certify import Anchors, NodeKey

    keys = {node.node_id: NodeKey.load_or_create(node.data_dir / "node.key").public for node in nodes}
    path = data_dir / ANCHORS_FILE
    path.write_text(Anchors(cluster_id=cluster_id, keys=keys).to_json())
    return path


def stop_processes(procs: list[subprocess.Popen[bytes]], grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM each running child by pid, SIGKILL those still running after
    ``grace_s``; every child is reaped."""
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


# ------------------------------------------------------------ supervised nodes


def node_tables(
    node: NodePlan, nodes: list[NodePlan], cluster_id: str, trust_anchors: Sequence[str] = (),
    extra_args: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, dict[str, Any]]:
    """The node config (``launcher/node/config.py`` tables) of node ``node``
    of a local cluster: the ports, peers and seeds the unsupervised children
    get as flags; ``extra_args``' flags become keys of their service's table."""
    from .node.config import keys_from_flags

    data = str(node.data_dir.absolute())
    tables: dict[str, dict[str, Any]] = {
        "node": {"id": node.node_id, "cluster_id": cluster_id, "data": data, "host": "127.0.0.1",
                 "listen_host": "127.0.0.1", "base_port": node.base, "log_dir": data,
                 "stop_grace_ms": CHILD_STOP_GRACE_MS},
        "consensus": {"peers": [f"{n.node_id}=127.0.0.1:{n.base + 1}" for n in nodes]},
        "dht": {"seeds": [f"127.0.0.1:{n.base + 2}" for n in nodes if n is not node]},
    }
    if trust_anchors:
        tables["consensus"]["trust_anchors"] = list(trust_anchors)
    for service, args in (extra_args or {}).items():
        tables.setdefault(service, {}).update(keys_from_flags(service, args))
    return tables


def _start_supervised(
    nodes: list[NodePlan], cluster_id: str, anchor_args: Sequence[str],
    extra_args: Mapping[str, Sequence[str]] | None,
) -> tuple[list[dict[str, Any]], list[subprocess.Popen[bytes]]]:
    """Write and check every node's config, then start one supervisor per node."""
    from .node.config import identity_variables, load, render

    # What tells one node from another comes from each node's file, not from
    # this process's environment (FLEETSUIT_NODE_ID would name every node).
    hidden = identity_variables()
    env = {k: v for k, v in os.environ.items() if k not in hidden}
    configs = []
    for node in nodes:
        path = node.data_dir / NODE_CONFIG_FILE
        path.write_text(render(node_tables(node, nodes, cluster_id, anchor_args, extra_args)))
        configs.append((node, path, load(path, env)))
    procs: list[subprocess.Popen[bytes]] = []
    doc_nodes = []
    try:
        for node, path, config in configs:
            proc = spawn([*SUPERVISOR_COMMAND, str(path)], node.data_dir / SUPERVISOR_LOG, env)
            procs.append(proc)
            doc_nodes.append({
                "id": node.node_id,
                "data_dir": str(node.data_dir),
                "pids": {},  # from node.json, once the children run
                "endpoints": {name: child.endpoint for name, child in config.children.items()},
                "downloads": config.downloads,
                "metrics": {name: child.metrics for name, child in config.children.items()},
                "commands": {name: list(child.command) for name, child in config.children.items()},
                "supervisor_pid": proc.pid,
                "config": str(path),
                "health": config.health_url,
            })
    except BaseException:
        stop_processes(procs, SUPERVISOR_STOP_GRACE_S)
        raise
    return doc_nodes, procs


def node_state(node: Mapping[str, Any]) -> dict[str, Any] | None:
    """The node.json of a supervised node of cluster.json, if its current
    supervisor wrote it (None for one left by an earlier run)."""
    from .node.supervisor import read_state

    state = read_state(Path(node["data_dir"]))
    if state is None or state.get("pid") != node.get("supervisor_pid"):
        return None
    return state


def refresh_pids(doc: dict[str, Any]) -> bool:
    """Update each supervised node's ``pids`` and ``commands`` from its
    node.json (children restarted get new pids); True when any changed."""
    changed = False
    for node in doc["nodes"]:
        if "supervisor_pid" in node:
            changed |= apply_state(node, node_state(node))
    return changed


def apply_state(node: dict[str, Any], state: Mapping[str, Any] | None) -> bool:
    """Update one node's ``pids`` and ``commands`` from its node.json
    (``node_state``), already read; True when any changed."""
    changed = False
    for name, child in (state or {}).get("children", {}).items():
        pid = child.get("pid")
        if isinstance(pid, int) and node["pids"].get(name) != pid:
            node["pids"][name] = pid
            node["commands"][name] = child.get("command", node["commands"].get(name))
            changed = True
    return changed


def stop_cluster(doc: Mapping[str, Any] | None, procs: list[subprocess.Popen[bytes]]) -> None:
    """Stop what ``start_cluster`` started. Supervised: SIGTERM each
    supervisor (it stops its children in order), SIGKILL one still running
    after ``SUPERVISOR_STOP_GRACE_S``, then stop by pid any child of its
    node.json still running (its supervisor was killed)."""
    supervised = doc is not None and any("supervisor_pid" in n for n in doc["nodes"])
    if not supervised:
        stop_processes(procs)
        return
    assert doc is not None
    stop_processes(procs, SUPERVISOR_STOP_GRACE_S)
    orphans = []
    for node in doc["nodes"]:
        state = node_state(node) or {}
        for child in state.get("children", {}).values():
            pid = child.get("pid")
            if isinstance(pid, int) and running(pid, child.get("command")):
                orphans.append(pid)
    for pid in orphans:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    for pid in orphans:
        while running(pid, None) and time.monotonic() < deadline:
            time.sleep(0.05)  # not our child: it cannot be waited on
        if running(pid, None):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
