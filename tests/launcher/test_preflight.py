"""What ``cluster up`` checks before it starts any child, one test per
refusal, in process (no child is started here)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleetsuit.cli import EXIT_CANNOT_START, EXIT_USAGE, CliError
from launcher import preflight
from launcher.cluster import new_cluster_id, plan_nodes, planned_ports
from launcher.layout import HIGHEST_OFFSET, NODE_PORT_SPAN
from tests.support.ports import free_base_port, free_port
from tests.support.procs import stop_processes


@pytest.mark.parametrize("nodes", [0, -1])
def test_nodes_below_one_are_a_usage_error(nodes: int) -> None:
    with pytest.raises(CliError, match="--nodes must be at least 1") as caught:
        preflight.check_plan(nodes, 7100)
    assert caught.value.code == EXIT_USAGE


@pytest.mark.parametrize(
    ("nodes", "base_port"),
    [
        (1, 0),  # no port 0: the cluster's ports are fixed, not picked
        (1, -10),
        (1, 65_535 - HIGHEST_OFFSET + 1),  # the last metrics port would be 65536
        (3, 65_535 - 2 * NODE_PORT_SPAN - HIGHEST_OFFSET + 1),  # node 3 does not fit
        (7000, 7100),
    ],
)
def test_ports_past_65535_or_below_1_are_a_usage_error(nodes: int, base_port: int) -> None:
    with pytest.raises(CliError, match="does not fit") as caught:
        preflight.check_plan(nodes, base_port)
    assert caught.value.code == EXIT_USAGE


@pytest.mark.parametrize(
    ("nodes", "base_port"), [(1, 1), (1, 65_535 - HIGHEST_OFFSET), (3, 65_535 - 20 - HIGHEST_OFFSET)]
)
def test_every_port_within_range_is_accepted(nodes: int, base_port: int) -> None:
    preflight.check_plan(nodes, base_port)
    top = max(port for port, _ in planned_ports(plan_nodes(nodes, Path("d"), base_port)))
    assert top <= 65_535


def test_planned_ports_are_every_service_and_metrics_port_of_every_node() -> None:
    ports = planned_ports(plan_nodes(2, Path("d"), 7100))
    assert sorted(p for p, _ in ports) == [7101, 7102, 7103, 7104, 7105, 7106, 7107, 7108, 7109,
                                          7111, 7112, 7113, 7114, 7115, 7116, 7117, 7118, 7119]
    assert (7112, "dht of n2") in ports and (7118, "metrics of manifest of n2") in ports
    assert (7114, "gateway of n2") in ports and (7115, "downloads of gateway of n2") in ports


@pytest.fixture
def listener() -> Iterator[int]:
    """A port someone else listens on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", free_port()))
        s.listen(1)
        yield s.getsockname()[1]


def test_a_taken_port_is_named_with_its_use(listener: int) -> None:
    free = free_port()
    with pytest.raises(CliError) as caught:
        preflight.check_ports_free([(free, "consensus of n1"), (listener, "dht of n1")])
    assert caught.value.code == EXIT_CANNOT_START
    assert f"127.0.0.1:{listener} is taken (needed by dht of n1)" == str(caught.value)


def test_free_ports_pass() -> None:
    base = free_base_port(4)
    preflight.check_ports_free([(base + i, "x") for i in range(4)])


def _description(data: Path, pid: int, command: list[str]) -> None:
    data.mkdir(parents=True, exist_ok=True)
    (data / "cluster.json").write_text(json.dumps({
        "cluster_id": "fs-0123", "nodes": [{"id": "n1", "pids": {"consensus": pid},
                                            "commands": {"consensus": command}}],
    }))


def test_a_directory_whose_cluster_runs_is_refused(tmp_path: Path) -> None:
    command = [sys.executable, "-c", "import time; time.sleep(60)"]
    child = subprocess.Popen(command)
    try:
        _description(tmp_path, child.pid, command)
        assert preflight.live_processes(tmp_path) == [f"consensus of n1 (pid {child.pid})"]
        with pytest.raises(CliError, match="in use by a running cluster") as caught:
            preflight.check_not_in_use(tmp_path)
        assert caught.value.code == EXIT_CANNOT_START
    finally:
        stop_processes([child])


def test_a_node_supervisor_waiting_to_restart_its_children_keeps_the_directory_in_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every child of the node has exited, but its supervisor (the recorded
    pid, running the recorded supervisor command with the node's config)
    still runs and will start them again."""
    supervisor = (sys.executable, "-c", "import time; time.sleep(60)")
    monkeypatch.setattr(preflight, "SUPERVISOR_COMMAND", supervisor)
    config = str(tmp_path / "n1" / "node.toml")
    child = subprocess.Popen([*supervisor, config])
    try:
        tmp_path.mkdir(parents=True, exist_ok=True)
        (tmp_path / "cluster.json").write_text(json.dumps({
            "cluster_id": "fs-0123", "nodes": [{"id": "n1", "pids": {}, "commands": {},
                                                "supervisor_pid": child.pid, "config": config}],
        }))
        assert preflight.live_processes(tmp_path) == [f"the node supervisor of n1 (pid {child.pid})"]
        with pytest.raises(CliError, match="in use by a running cluster"):
            preflight.check_not_in_use(tmp_path)
    finally:
        stop_processes([child])
    assert preflight.live_processes(tmp_path) == []


def test_a_directory_whose_cluster_has_exited_is_free(tmp_path: Path) -> None:
    command = [sys.executable, "-c", "pass"]
    child = subprocess.Popen(command)
    child.wait(timeout=30)
    _description(tmp_path, child.pid, command)
    preflight.check_not_in_use(tmp_path)


def test_a_recorded_pid_now_running_something_else_does_not_count(tmp_path: Path) -> None:
    _description(tmp_path, os.getpid(), [sys.executable, "-m", "services.consensus", "--node-id", "n1"])
    assert preflight.live_processes(tmp_path) == []


def test_no_or_unreadable_description_is_free(tmp_path: Path) -> None:
    preflight.check_not_in_use(tmp_path)
    (tmp_path / "cluster.json").write_text("{not json")
    preflight.check_not_in_use(tmp_path)


def test_the_lock_refuses_a_second_launcher_and_names_the_first(tmp_path: Path) -> None:
    first = preflight.DataDirLock(tmp_path)
    try:
        with pytest.raises(CliError, match=f"another `fleetsuit cluster up` \\(pid {os.getpid()}\\)") as caught:
            preflight.DataDirLock(tmp_path)
        assert caught.value.code == EXIT_CANNOT_START
        assert (tmp_path / "cluster.lock").read_text().strip() == str(os.getpid())
    finally:
        first.close()
    preflight.DataDirLock(tmp_path).close()  # released


def test_cluster_ids_are_new_each_bootstrap() -> None:
    ids = {new_cluster_id() for _ in range(100)}
    assert len(ids) == 100 and all(i.startswith("fs-") and len(i) == 19 for i in ids)


def test_the_recorded_cluster_id_is_reused_and_another_refused(tmp_path: Path) -> None:
    assert preflight.resolve_cluster_id(tmp_path, None) is None  # a first start: a new id
    assert preflight.resolve_cluster_id(tmp_path, "mine") == "mine"
    (tmp_path / "anchors.json").write_text(json.dumps({"cluster_id": "fs-aaaa", "keys": {}}))
    assert preflight.resolve_cluster_id(tmp_path, None) == "fs-aaaa"
    assert preflight.resolve_cluster_id(tmp_path, "fs-aaaa") == "fs-aaaa"
    with pytest.raises(CliError, match="holds cluster 'fs-aaaa', not 'fs-bbbb'") as caught:
        preflight.resolve_cluster_id(tmp_path, "fs-bbbb")
    assert caught.value.code == EXIT_CANNOT_START


def test_the_cluster_id_of_cluster_json_is_reused_without_anchors(tmp_path: Path) -> None:
    (tmp_path / "cluster.json").write_text(json.dumps({"cluster_id": "fs-cccc", "nodes": []}))
    assert preflight.resolve_cluster_id(tmp_path, None) == "fs-cccc"
