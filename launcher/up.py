"""``fleetsuit cluster up``: check, start, wait until every child serves,
then stay in the foreground until SIGINT/SIGTERM and stop every child.

Each node runs as one ``fleetsuit node`` supervisor (``launcher/node/``),
which restarts a service that exits; ``run_cluster(..., supervised=False)``
starts the services bare instead. Success is printed only once every
service of every node answers grpc.health.v1 SERVING (supervised: once each
node's /healthz answers 200); a child that exits or does not serve in time
stops the whole start, naming the service and the node. ``DIR/cluster.json``
(ids, pids, endpoints and the exact command of every child, so a test can
restart one; supervised, each node's supervisor pid, config and health URL
too) is written as soon as the children run, so that a second ``cluster
up`` on the same directory sees them, kept up to date when a supervisor
restarts a child, and removed again when the start fails. After the start,
a child that exits is reported on stderr (supervised: and restarted).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fleetsuit.cli import EXIT_CANNOT_START, EXIT_OK, EXIT_USAGE, CliError
from fleetsuit.grpcutil import CHANNEL_OPTIONS
from fleetsuit.settings import ConfigError

from . import preflight
from .cluster import (
    SUPERVISOR_LOG,
    apply_state,
    node_state,
    plan_nodes,
    planned_ports,
    refresh_pids,
    start_cluster,
    stop_cluster,
)
from .layout import CLUSTER_FILE
from .node.supervisor import last_line

START_TIMEOUT_S = 60.0
HEALTH_CHECK_TIMEOUT_S = 1.0
POLL_S = 0.05  # how often a starting child's health is asked again
WATCH_S = 0.2  # how often the foreground loop looks at its children


class StartInterrupted(Exception):
    """SIGINT or SIGTERM arrived while the children were starting."""


@dataclass
class _Child:
    node_id: str
    service: str
    endpoint: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    channel: grpc.Channel | None = None

    def serving(self) -> bool:
        if self.channel is None:
            self.channel = grpc.insecure_channel(self.endpoint, options=CHANNEL_OPTIONS)
        stub = health_pb2_grpc.HealthStub(self.channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=HEALTH_CHECK_TIMEOUT_S)
        except grpc.RpcError:
            return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    def close(self) -> None:
        if self.channel is not None:
            self.channel.close()
            self.channel = None


def _children(doc: dict[str, Any], procs: list[subprocess.Popen[bytes]]) -> list[_Child]:
    by_pid = {p.pid: p for p in procs}
    return [
        _Child(node["id"], service, node["endpoints"][service], by_pid[pid],
               Path(node["data_dir"]) / f"{service}.log")
        for node in doc["nodes"]
        for service, pid in node["pids"].items()
    ]


def wait_serving(
    doc: dict[str, Any],
    procs: list[subprocess.Popen[bytes]],
    timeout_s: float = START_TIMEOUT_S,
    stopping: Callable[[], bool] = lambda: False,
) -> None:
    """Return once every child answers health SERVING; raise CliError (exit
    3) naming the service and node of the first child that exits first, or
    of those not serving by the deadline."""
    pending = _children(doc, procs)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            if stopping():
                raise StartInterrupted
            for child in list(pending):
                code = child.proc.poll()
                if code is not None:
                    why = last_line(child.log_path)
                    raise CliError(
                        f"{child.service} of {child.node_id} exited with code {code} before serving"
                        + (f": {why}" if why else "") + f" (log: {child.log_path})",
                        EXIT_CANNOT_START,
                    )
                if child.serving():
                    child.close()
                    pending.remove(child)
            if not pending:
                return
            if time.monotonic() >= deadline:
                names = ", ".join(f"{c.service} of {c.node_id}" for c in pending)
                raise CliError(
                    f"not serving after {timeout_s:g}s: {names} (log: {pending[0].log_path})",
                    EXIT_CANNOT_START,
                )
            time.sleep(POLL_S)
    finally:
        for child in pending:
            child.close()


def write_description(data_dir: Path, doc: dict[str, Any]) -> Path:
    """Write ``DIR/cluster.json`` atomically."""
    path = data_dir / CLUSTER_FILE
    tmp = data_dir / (CLUSTER_FILE + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2))
    os.replace(tmp, path)
    return path


def _node_health(url: str) -> tuple[bool, list[str]]:
    """A supervised node's /healthz: (healthy, the services not serving)."""
    try:
        with urllib.request.urlopen(url, timeout=HEALTH_CHECK_TIMEOUT_S) as reply:
            return reply.status == 200, []
    except urllib.error.HTTPError as exc:
        with contextlib.suppress(ValueError, OSError):
            body = json.loads(exc.read())
            return False, [str(name) for name in body.get("not_serving", [])]
        return False, []
    except (OSError, ValueError):
        return False, []


def wait_nodes_serving(
    doc: dict[str, Any],
    procs: list[subprocess.Popen[bytes]],
    timeout_s: float = START_TIMEOUT_S,
    stopping: Callable[[], bool] = lambda: False,
) -> None:
    """Supervised nodes: return once every node's /healthz answers 200 and
    its node.json names all its children's pids (filled into ``doc``);
    raise CliError (exit 3) naming the first child that exits, or the
    supervisor that exits, or what does not serve by the deadline."""
    supervisors = {p.pid: p for p in procs}
    pending = list(doc["nodes"])
    not_serving: dict[str, list[str]] = {}
    deadline = time.monotonic() + timeout_s
    while True:
        if stopping():
            raise StartInterrupted
        for node in list(pending):
            log = Path(node["data_dir"]) / SUPERVISOR_LOG
            state = node_state(node)  # read once: the pids and the exits
            apply_state(node, state)
            for name, child in ((state or {}).get("children") or {}).items():
                exited = child.get("last_exit")
                if exited:
                    why = exited.get("why") or ""
                    raise CliError(
                        f"{name} of {node['id']} exited with code {exited.get('code')} before serving"
                        + (f": {why}" if why else "") + f" (log: {child.get('log') or log})",
                        EXIT_CANNOT_START,
                    )
            code = supervisors[node["supervisor_pid"]].poll()
            if code is not None:
                why = last_line(log)
                raise CliError(
                    f"the supervisor of {node['id']} exited with code {code} before serving"
                    + (f": {why}" if why else "") + f" (log: {log})",
                    EXIT_CANNOT_START,
                )
            healthy, missing = _node_health(node["health"])
            not_serving[node["id"]] = missing or list(node["endpoints"])
            if healthy and set(node["pids"]) == set(node["endpoints"]):
                pending.remove(node)
        if not pending:
            return
        if time.monotonic() >= deadline:
            names = ", ".join(f"{s} of {n['id']}" for n in pending for s in not_serving[n["id"]])
            log = Path(pending[0]["data_dir"]) / SUPERVISOR_LOG
            raise CliError(f"not serving after {timeout_s:g}s: {names} (log: {log})", EXIT_CANNOT_START)
        time.sleep(POLL_S)


class _NodeWatch:
    """After the start: report a supervisor that exits and each child exit
    its supervisor records (it restarts the child), and keep cluster.json's
    pids current."""

    def __init__(self, doc: dict[str, Any], procs: list[subprocess.Popen[bytes]], data_dir: Path) -> None:
        self.doc = doc
        self.data_dir = data_dir
        self.supervisors = {p.pid: p for p in procs}
        self.reported: set[tuple[str, str, object]] = set()

    def check(self) -> None:
        for node in self.doc["nodes"]:
            proc = self.supervisors[node["supervisor_pid"]]
            key = (node["id"], "", proc.pid)
            if proc.poll() is not None and key not in self.reported:
                self.reported.add(key)
                log = Path(node["data_dir"]) / SUPERVISOR_LOG
                print(f"the supervisor of {node['id']} (pid {proc.pid}) exited with code {proc.returncode} "
                      f"(log: {log})", file=sys.stderr, flush=True)
            for name, child in ((node_state(node) or {}).get("children") or {}).items():
                exited = child.get("last_exit") or {}
                seen = (node["id"], name, exited.get("pid"))
                if exited and seen not in self.reported:
                    self.reported.add(seen)
                    print(f"{name} of {node['id']} (pid {exited.get('pid')}) exited with code "
                          f"{exited.get('code')}; its supervisor restarts it (log: {child.get('log')})",
                          file=sys.stderr, flush=True)
        if refresh_pids(self.doc):
            write_description(self.data_dir, self.doc)


def run_cluster(
    count: int,
    data_dir: Path,
    base_port: int,
    cluster_id: str | None = None,
    start_timeout_s: float = START_TIMEOUT_S,
    out: TextIO | None = None,
    trust_anchors: Sequence[str] = (),
    *,
    supervised: bool = True,
) -> int:
    """Foreground: check, start, wait until serving, print success, wait for
    SIGINT/SIGTERM, stop every child. Raises CliError before starting any
    child when a check fails, and after stopping them when one does not
    serve. ``trust_anchors``: ``PATH[:components=..][:classes=..]`` each,
    the publisher keys the ledger is bootstrapped with. ``supervised``: one
    ``fleetsuit node`` supervisor per node (else the services bare)."""
    out = out or sys.stdout
    preflight.check_plan(count, base_port)
    preflight.check_trust_anchors(trust_anchors)
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CliError(f"cannot create {data_dir}: {exc.strerror}", EXIT_CANNOT_START) from None
    lock = preflight.DataDirLock(data_dir)
    try:
        preflight.check_not_in_use(data_dir)
        cluster_id = preflight.resolve_cluster_id(data_dir, cluster_id)
        nodes = plan_nodes(count, data_dir, base_port)
        preflight.check_ports_free(planned_ports(nodes, supervised=supervised))
        return _run(count, data_dir, base_port, cluster_id, start_timeout_s, out, trust_anchors, supervised)
    finally:
        lock.close()


def _run(
    count: int, data_dir: Path, base_port: int, cluster_id: str | None, start_timeout_s: float, out: TextIO,
    trust_anchors: Sequence[str], supervised: bool,
) -> int:
    stopping = False

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    procs: list[subprocess.Popen[bytes]] = []
    doc: dict[str, Any] | None = None
    failed = True  # until every child serves or a stop is asked for
    try:
        try:
            doc, procs = start_cluster(count, data_dir, base_port, cluster_id, trust_anchors=trust_anchors,
                                       supervised=supervised)
        except ConfigError as exc:  # the environment's overrides, refused by a service
            raise CliError(str(exc), EXIT_USAGE) from None
        path = write_description(data_dir, doc)
        try:
            if supervised:
                wait_nodes_serving(doc, procs, start_timeout_s, lambda: stopping)
                path = write_description(data_dir, doc)  # with the children's pids
            else:
                wait_serving(doc, procs, start_timeout_s, lambda: stopping)
        except StartInterrupted:
            failed = False
            return EXIT_OK
        failed = False
        print(f"cluster {doc['cluster_id']} of {count} node(s) up; description in {path}", file=out, flush=True)
        for node in doc["nodes"]:
            health = f" health {node['health']}" if node.get("health") else ""
            print(f"  {node['id']}: {node['endpoints']}{health}", file=out, flush=True)
        running = _children(doc, procs) if not supervised else []
        watch = _NodeWatch(doc, procs, data_dir) if supervised else None
        while not stopping:
            time.sleep(WATCH_S)
            if watch is not None:
                watch.check()
            for child in [c for c in running if c.proc.poll() is not None]:
                running.remove(child)
                print(f"{child.service} of {child.node_id} (pid {child.proc.pid}) exited with code "
                      f"{child.proc.returncode} (log: {child.log_path})", file=sys.stderr, flush=True)
        return EXIT_OK
    finally:
        stop_cluster(doc, procs)
        for s, handler in old.items():
            signal.signal(s, handler)
        if failed:
            # Nothing of a failed start is left claiming to be a cluster; the
            # error itself is the caller's one line.
            with contextlib.suppress(OSError):
                (data_dir / CLUSTER_FILE).unlink()
        else:
            with contextlib.suppress(OSError, ValueError):  # stdout may be a closed pipe
                print("cluster stopped", file=out, flush=True)
