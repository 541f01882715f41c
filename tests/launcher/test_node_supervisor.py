"""``fleetsuit node`` on a real node of one (four real services): it serves
and reports healthy, restarts a child killed outright (counted in /metrics
and logged, /healthz 503 meanwhile), backs off a child that keeps crashing,
stops its children in order on SIGTERM, refuses to start beside the
children of a supervisor killed outright, and runs one service alone
(``--service``) with its exit status."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from launcher.layout import NODE_PORT_SPAN, SUPERVISOR_COMMAND
from launcher.node.config import render
from launcher.node.supervisor import STATE_FILE, read_state
from tests.support.ports import free_base_port
from tests.support.procs import kill, pid_alive, stop_processes
from tests.support.wait import wait_until

pytestmark = pytest.mark.slow

SERVICES = ("consensus", "dht", "manifest", "gateway")
START_S = 90.0


class Node:
    """One supervisor started from a config written under ``tmp_path``."""

    def __init__(self, tmp_path: Path, node: dict[str, Any] | None = None, extra: str = "",
                 service: str | None = None, base: int | None = None) -> None:
        self.base = base or free_base_port(NODE_PORT_SPAN)
        tmp_path.mkdir(parents=True, exist_ok=True)
        self.data = tmp_path / "data"
        self.config = tmp_path / "node.toml"
        tables = {"node": {"id": "n1", "cluster_id": "fs-node-test", "data": str(self.data),
                           "base_port": self.base, "log_dir": str(self.data), **(node or {})}}
        self.config.write_text(render(tables) + extra)
        self.log = tmp_path / "node.log"
        argv = [*SUPERVISOR_COMMAND, str(self.config), *(["--service", service] if service else [])]
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        self.seen_pids: set[int] = set()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.base}{path}"

    def healthz(self) -> tuple[int, dict[str, Any]]:
        try:
            with urllib.request.urlopen(self.url("/healthz"), timeout=5) as reply:
                return reply.status, json.loads(reply.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def metrics(self) -> str:
        with urllib.request.urlopen(self.url("/metrics"), timeout=5) as reply:
            return str(reply.read().decode())

    def state(self) -> dict[str, Any]:
        state = read_state(self.data)
        assert state is not None and state["pid"] == self.proc.pid
        for child in state["children"].values():
            if child["pid"]:
                self.seen_pids.add(child["pid"])
        return state

    def pid(self, service: str) -> int:
        pid = self.state()["children"][service]["pid"]
        assert isinstance(pid, int)
        return pid

    def wait_healthy(self) -> dict[str, Any]:
        def healthy() -> dict[str, Any] | None:
            assert self.proc.poll() is None, self.output()
            code, body = self.healthz()
            return body if code == 200 else None

        return wait_until(healthy, START_S, "all four services serving")

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> int:
        """SIGTERM the supervisor and wait; any child left is stopped by pid
        (and fails the test: the supervisor must not leave one)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            stop_processes([self.proc], grace_s=0)
            code = self.proc.wait()
        with_state = read_state(self.data) or {"children": {}}
        self.seen_pids |= {c["pid"] for c in with_state["children"].values() if c.get("pid")}
        left = [pid for pid in self.seen_pids if pid_alive(pid)]
        stop_processes(left)
        assert not left, f"children {left} outlived their supervisor"
        return code


def _counter(metrics: str, name: str, service: str) -> float:
    match = re.search(rf'^{name}{{service="{service}"}} (\S+)$', metrics, re.M)
    assert match, f"{name}{{service={service}}} missing"
    return float(match.group(1))


def test_a_node_serves_restarts_a_killed_child_and_stops_in_order(tmp_path: Path) -> None:
    # A long first delay: /healthz must be seen failing before the restart.
    node = Node(tmp_path, {"restart_backoff_initial_ms": 3000})
    try:
        body = node.wait_healthy()
        assert body["services"] == {s: "SERVING" for s in SERVICES} and body["healthy"] is True
        metrics = node.metrics()
        assert "fleetsuit_node_healthy 1.0" in metrics
        assert all(_counter(metrics, "fleetsuit_node_child_restarts_total", s) == 0 for s in SERVICES)
        state = node.state()
        assert state["health"] == node.url("/healthz") and state["node_id"] == "n1"
        for name in SERVICES:
            child = state["children"][name]
            assert pid_alive(child["pid"]) and child["restarts"] == 0 and child["last_exit"] is None
            assert Path(child["log"]) == node.data / f"{name}.log"
        old = node.pid("dht")

        kill(old, signal.SIGKILL)

        def unhealthy() -> dict[str, Any] | None:
            code, body = node.healthz()
            return body if code == 503 else None

        body = wait_until(unhealthy, 30, "/healthz answering 503")
        assert body["not_serving"] == ["dht"] and body["services"]["dht"] in ("NOT_RUNNING", "UNREACHABLE")

        def restarted() -> int | None:
            child = node.state()["children"]["dht"]
            return child["pid"] if child["pid"] not in (None, old) and child["restarts"] == 1 else None

        new = wait_until(restarted, 30, "dht restarted")
        assert pid_alive(new)
        last_exit = node.state()["children"]["dht"]["last_exit"]
        assert last_exit["pid"] == old and last_exit["code"] == -signal.SIGKILL
        node.wait_healthy()
        metrics = node.metrics()
        assert _counter(metrics, "fleetsuit_node_child_restarts_total", "dht") == 1
        assert _counter(metrics, "fleetsuit_node_child_restarts_total", "consensus") == 0
        assert _counter(metrics, "fleetsuit_node_child_up", "dht") == 1
        log = node.output()
        assert f"dht (pid {old}) exited with code -9" in log and "restart 1 in 3.0s" in log
        assert f"restarted dht as pid {new} (restart 1)" in log
        others = [node.pid(s) for s in ("consensus", "manifest", "gateway")]
    finally:
        code = node.stop()
    assert code == 0, node.output()
    assert not any(pid_alive(pid) for pid in [new, *others])
    log = node.output()
    order = [log.index(f"stopping {s} (pid") for s in ("gateway", "consensus", "dht")]
    assert order == sorted(order), "gateway, then consensus, then dht and manifest"
    assert log.index("gateway (pid") < log.index("stopping consensus")  # the gateway gone first
    assert all(child["pid"] is None for child in json.loads((node.data / STATE_FILE).read_text())
               ["children"].values())


def test_a_child_that_keeps_crashing_is_restarted_with_growing_delays(tmp_path: Path) -> None:
    base = free_base_port(NODE_PORT_SPAN)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.bind(("127.0.0.1", base + 3))  # the manifest's port: it cannot start
        squatter.listen(1)
        node = Node(tmp_path, {"restart_backoff_initial_ms": 100, "restart_backoff_max_ms": 800}, base=base)
        try:
            delays = wait_until(
                lambda: _delays(node.output(), "manifest") if len(_delays(node.output(), "manifest")) >= 6 else None,
                120, "six exits of the manifest service",
            )
            assert delays[:6] == [0.1, 0.2, 0.4, 0.8, 0.8, 0.8], delays
            state = node.state()["children"]["manifest"]
            assert state["restarts"] >= 5 and state["last_exit"]["code"] == 3
            assert "cannot" in state["last_exit"]["why"]  # the service's own last words
            assert _counter(node.metrics(), "fleetsuit_node_child_restarts_total", "manifest") >= 5

            def others_serving() -> dict[str, Any] | None:
                code, body = node.healthz()
                return body if body["not_serving"] == ["manifest"] else None

            body = wait_until(others_serving, START_S, "all but the manifest serving")
            assert node.healthz()[0] == 503 and body["healthy"] is False
        except BaseException:
            node.stop()
            raise
    # The port is free again: the next restart serves.
    try:
        node.wait_healthy()
    finally:
        assert node.stop() == 0, node.output()


def _serving(address: str) -> bool:
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def _delays(log: str, service: str) -> list[float]:
    return [float(d) for d in re.findall(rf"^.*: {service} \(pid \d+\) exited with code \S+ after \S+; "
                                         r"restart \d+ in ([\d.]+)s$", log, re.M)]


def test_a_node_whose_children_still_run_is_refused(tmp_path: Path) -> None:
    node = Node(tmp_path)
    try:
        node.wait_healthy()
        pids = {s: node.pid(s) for s in SERVICES}
        kill(node.proc, signal.SIGKILL)  # the supervisor only: its children keep running
        assert all(pid_alive(p) for p in pids.values())
        second = subprocess.run([*SUPERVISOR_COMMAND, str(node.config)], capture_output=True, text=True,
                                timeout=60)
        assert second.returncode == 3, second.stderr
        assert f"consensus (pid {pids['consensus']})" in second.stderr and "stop it first" in second.stderr
        assert (read_state(node.data) or {}).get("pid") == node.proc.pid  # untouched
    finally:
        stop_processes([p for p in node.seen_pids if pid_alive(p)])


def test_one_service_alone_forwards_sigterm_and_returns_its_exit_status(tmp_path: Path) -> None:
    node = Node(tmp_path, service="manifest")
    try:
        def serving() -> bool:
            assert node.proc.poll() is None, node.output()
            return _serving(f"127.0.0.1:{node.base + 3}")

        wait_until(serving, START_S, "the manifest service serving")
        assert not (node.data / STATE_FILE).exists()
        pid = int(re.findall(r"started manifest as pid (\d+)", node.output())[0])
        node.proc.send_signal(signal.SIGTERM)
        assert node.proc.wait(timeout=60) == 0, node.output()
        assert not pid_alive(pid)
        assert f"manifest (pid {pid}) exited with code 0" in node.output()

        again = Node(tmp_path / "again", service="manifest")
        wait_until(lambda: re.findall(r"started manifest as pid (\d+)", again.output()), START_S, "the start")
        child = int(re.findall(r"started manifest as pid (\d+)", again.output())[0])
        kill(child, signal.SIGKILL)
        assert again.proc.wait(timeout=60) == 128 + signal.SIGKILL  # Kubernetes restarts the container
    finally:
        stop_processes([node.proc])
