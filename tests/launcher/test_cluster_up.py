"""``fleetsuit cluster up`` refuses what would not work, before or instead
of claiming success: one test per refusal, with real child processes (one
node: three processes) where the refusal needs them."""

from __future__ import annotations

import json
import shutil
import signal
import socket
from pathlib import Path

import pytest

from fleetsuit.cli import EXIT_CANNOT_START, EXIT_USAGE
from launcher.cluster import plan_nodes, planned_ports
from launcher.preflight import port_problem
from tests.support.cli import ClusterUp, run_cli
from tests.support.ports import free_base_port
from tests.support.procs import kill, pid_alive, stop_processes
from tests.support.wait import wait_until

pytestmark = pytest.mark.slow


def _no_child_started(data: Path) -> None:
    assert not list(data.rglob("*.log")), "a child was started"
    assert not (data / "cluster.json").exists()


def _ports_free(data: Path, nodes: int, base: int) -> bool:
    return all(port_problem(p) is None for p, _ in planned_ports(plan_nodes(nodes, data, base)))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--nodes", "0"], "--nodes must be at least 1"),
        (["--nodes", "1", "--base-port", "65530"], "does not fit"),
        (["--nodes", "1", "--base-port", "0"], "does not fit"),
    ],
)
def test_bad_nodes_or_ports_are_usage_errors(tmp_path: Path, args: list[str], message: str) -> None:
    out = run_cli("cluster", "up", "--data", str(tmp_path / "c"), *args)
    assert out.returncode == EXIT_USAGE
    assert message in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "c").exists()


def test_a_taken_port_fails_at_once_naming_it_before_any_child(tmp_path: Path) -> None:
    data = tmp_path / "c"
    base = free_base_port(30)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.bind(("127.0.0.1", base + 10 + 7))  # metrics of n2's dht
        squatter.listen(1)
        out = run_cli("cluster", "up", "--nodes", "2", "--data", str(data), "--base-port", str(base),
                      timeout_s=30)
    assert out.returncode == EXIT_CANNOT_START, out.stdout + out.stderr
    assert f"127.0.0.1:{base + 17} is taken (needed by metrics of dht of n2)" in out.stderr
    assert "Traceback" not in out.stderr and out.stdout == ""
    _no_child_started(data)
    assert not (data / "anchors.json").exists()


def test_a_live_clusters_directory_is_refused_and_its_description_left_untouched(tmp_path: Path) -> None:
    data = tmp_path / "c"
    first = ClusterUp(data)
    try:
        first.wait_up()
        described = (data / "cluster.json").read_bytes()
        anchors = (data / "anchors.json").read_bytes()
        other_base = str(free_base_port(20))

        # The launcher is alive: its lock refuses the second one.
        second = run_cli("cluster", "up", "--nodes", "1", "--data", str(data), "--base-port", other_base)
        assert second.returncode == EXIT_CANNOT_START, second.stderr
        assert "in use by another `fleetsuit cluster up`" in second.stderr
        assert (data / "cluster.json").read_bytes() == described

        # The launcher is gone but its children still run: cluster.json's
        # pids refuse the directory.
        kill(first.proc, signal.SIGKILL)
        assert all(pid_alive(pid) for pid in first.child_pids())
        third = run_cli("cluster", "up", "--nodes", "1", "--data", str(data), "--base-port", other_base)
        assert third.returncode == EXIT_CANNOT_START, third.stderr
        assert "in use by a running cluster" in third.stderr and "consensus of n1 (pid" in third.stderr
        assert (data / "cluster.json").read_bytes() == described
        assert (data / "anchors.json").read_bytes() == anchors
    finally:
        # Each node's supervisor outlives the killed launcher: stopped by pid,
        # it stops its children (stopping them alone would have them restarted).
        stop_processes([n["supervisor_pid"] for n in (first.doc or {"nodes": []})["nodes"]], grace_s=60)
        first.stop()


def test_a_restart_keeps_its_cluster_id_and_another_clusters_directory_is_refused(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    ids = []
    for data in (a, a, b):
        up = ClusterUp(data)
        try:
            doc = up.wait_up()
            ids.append(doc["cluster_id"])
            assert json.loads((data / "anchors.json").read_text())["cluster_id"] == doc["cluster_id"]
            status = run_cli("status", "--endpoint", doc["nodes"][0]["endpoints"]["consensus"], "--json")
            assert json.loads(status.stdout)["cluster_id"] == doc["cluster_id"]
        finally:
            assert up.stop() == 0, up.stderr
    assert ids[0].startswith("fs-") and ids[1] == ids[0]  # a restart keeps its id
    assert ids[2] != ids[0]  # a new cluster gets its own

    refused = run_cli("cluster", "up", "--nodes", "1", "--data", str(a), "--cluster-id", ids[2])
    assert refused.returncode == EXIT_CANNOT_START
    assert f"holds cluster {ids[0]!r}, not {ids[2]!r}" in refused.stderr

    # Node n1 of cluster a moved into cluster b: its consensus service refuses
    # the data directory, so the start fails naming it, and stops the rest.
    shutil.rmtree(b / "n1")
    shutil.copytree(a / "n1", b / "n1")
    up = ClusterUp(b)
    code = up.wait_exit()
    assert code == EXIT_CANNOT_START, up.stdout + up.stderr
    assert "consensus of n1 exited with code" in up.stderr and "before serving" in up.stderr
    assert "cluster" in up.stderr and ids[0] in up.stderr  # the node's own words: the other cluster
    assert " up; " not in up.stdout
    assert not (b / "cluster.json").exists()
    assert _ports_free(b, 1, up.base_port), "a child of the failed start still holds its port"


def test_children_not_serving_in_time_are_stopped_and_named(tmp_path: Path) -> None:
    data = tmp_path / "c"
    up = ClusterUp(data, extra=["--start-timeout", "0.01"])
    try:
        code = up.wait_exit()
    finally:
        up.stop()
    assert code == EXIT_CANNOT_START, up.stdout + up.stderr
    assert "not serving after 0.01s" in up.stderr and "of n1" in up.stderr
    assert "Traceback" not in up.stderr
    assert not (data / "cluster.json").exists()
    wait_until(lambda: _ports_free(data, 1, up.base_port), 10, "the ports released")


def test_a_child_that_dies_after_the_start_is_reported_naming_it(tmp_path: Path) -> None:
    up = ClusterUp(tmp_path / "c")
    try:
        doc = up.wait_up()
        pid = doc["nodes"][0]["pids"]["manifest"]
        kill(pid)
        wait_until(lambda: f"manifest of n1 (pid {pid}) exited with code -9" in up.stderr, 10,
                   "the launcher reporting the exit")
    finally:
        assert up.stop() == 0, up.stderr
