"""Whole supervised nodes in a cluster: SIGTERM on the leader's node stops
its four services with a leadership handover (another node leads at the
next term, before the old leader's consensus process has exited);
``fleetsuit cluster up`` runs each node under its supervisor and stops
everything on SIGTERM; and StatefulSet "pods" on loopback (``--service
consensus``, one shared config) find their peers from their ordinal, a pod
beyond the bootstrap ordinals joining the running cluster."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import pytest

from fleetsuit.v1 import consensus_pb2 as pb
from fleetsuit.v1 import consensus_pb2_grpc as pb_grpc
from launcher.cluster import SUPERVISOR_LOG, node_state, refresh_pids, start_cluster, stop_cluster
from launcher.layout import NODE_PORT_SPAN, SUPERVISOR_COMMAND
from launcher.node.config import identity_variables
from launcher.up import wait_nodes_serving
from tests.support.cli import ClusterUp
from tests.support.ports import free_base_port
from tests.support.procs import kill, pid_alive, stop_processes
from tests.support.wait import wait_until

pytestmark = pytest.mark.slow

SERVICES = ("consensus", "dht", "manifest", "gateway")


def _status(endpoint: str) -> pb.StatusResponse | None:
    with grpc.insecure_channel(endpoint) as channel:
        try:
            status: pb.StatusResponse = pb_grpc.LedgerStub(channel).Status(pb.StatusRequest(), timeout=2)
        except grpc.RpcError:
            return None
    return status


def _agreed_leader(endpoints: list[str]) -> tuple[str, int] | None:
    """(leader id, term) when every node named answers and agrees on both."""
    statuses = [_status(e) for e in endpoints]
    if any(s is None or not s.leader_id for s in statuses):
        return None
    seen = {(s.leader_id, s.term) for s in statuses if s is not None}
    return seen.pop() if len(seen) == 1 else None


def test_sigterm_on_the_leaders_node_hands_leadership_over_and_stops_all_four(tmp_path: Path) -> None:
    base = free_base_port(NODE_PORT_SPAN * 4)
    doc, procs = start_cluster(3, tmp_path / "c", base, "fs-handover", supervised=True)
    try:
        wait_nodes_serving(doc, procs, timeout_s=120)
        endpoints = {n["id"]: n["endpoints"]["consensus"] for n in doc["nodes"]}
        leader, term = wait_until(lambda: _agreed_leader(list(endpoints.values())), 60, "one agreed leader")
        node = next(n for n in doc["nodes"] if n["id"] == leader)
        supervisor = next(p for p in procs if p.pid == node["supervisor_pid"])
        refresh_pids(doc)
        children = dict(node["pids"])
        assert set(children) == set(SERVICES) and all(pid_alive(p) for p in children.values())

        supervisor.send_signal(signal.SIGTERM)
        assert supervisor.wait(timeout=120) == 0
        assert not [s for s, pid in children.items() if pid_alive(pid)], "a child outlived its node"

        survivors = [endpoints[n] for n in endpoints if n != leader]
        new_leader, new_term = wait_until(lambda: _agreed_leader(survivors), 60, "the survivors' leader")
        assert new_leader != leader
        # A handover: the target campaigns at once, one term up; the old leader
        # saw it lead before its consensus process stopped.
        assert new_term == term + 1
        data = Path(node["data_dir"])
        assert "leadership handed over before shutdown" in (data / "consensus.log").read_text()
        supervised = (data / SUPERVISOR_LOG).read_text()
        assert supervised.index("stopping gateway") < supervised.index("stopping consensus")
        assert supervised.index("stopping consensus") < supervised.index("stopping dht")
        assert f"consensus (pid {children['consensus']}) stopped with code 0" in supervised
        assert all((node_state(node) or {"children": {}})["children"][s]["pid"] is None for s in SERVICES)
    finally:
        stop_cluster(doc, procs)


def _get(url: str) -> tuple[int, dict[str, Any]]:
    with urllib.request.urlopen(url, timeout=5) as reply:
        return reply.status, json.loads(reply.read())


def test_cluster_up_runs_supervised_nodes_and_stops_everything_on_sigterm(tmp_path: Path) -> None:
    data = tmp_path / "c"
    up = ClusterUp(data, nodes=2)
    supervisors: list[int] = []
    children: list[int] = []
    try:
        doc = up.wait_up()
        for node in doc["nodes"]:
            supervisors.append(node["supervisor_pid"])
            children.extend(node["pids"].values())
            assert set(node["pids"]) == set(SERVICES)
            assert Path(node["config"]) == data / node["id"] / "node.toml"
            base = up.base_port + NODE_PORT_SPAN * (int(node["id"][1:]) - 1)
            assert node["health"] == f"http://127.0.0.1:{base}/healthz"
            assert _get(node["health"])[0] == 200
        assert all(pid_alive(p) for p in supervisors + children)

        # A child killed outright is restarted by its node; cluster.json follows.
        victim = doc["nodes"][1]["pids"]["gateway"]
        kill(victim)

        def restarted() -> int | None:
            described = json.loads((data / "cluster.json").read_text())
            pid = described["nodes"][1]["pids"]["gateway"]
            return pid if pid != victim else None

        new = wait_until(restarted, 60, "cluster.json naming the restarted gateway")
        children.append(new)
        wait_until(lambda: f"gateway of n2 (pid {victim}) exited with code -9" in up.stderr, 30, "the report")
        wait_until(lambda: _get(doc["nodes"][1]["health"])[0] == 200, 60, "n2 healthy again")
    finally:
        code = up.stop(timeout_s=90)
    assert code == 0, up.stdout + up.stderr
    assert "cluster stopped" in up.stdout
    gone = wait_until(lambda: not any(pid_alive(p) for p in supervisors + children), 30, "every process gone")
    assert gone


STATEFULSET_CONFIG = """\
[node]
cluster_id = "fs-statefulset"
base_port = {base}
[statefulset]
enabled = true
service = "fleetsuit"
bootstrap_replicas = 3
address_template = "127.0.0.1:{{ordinal_port}}"
"""


def _members(endpoint: str) -> set[str]:
    status = _status(endpoint)
    return {m.node_id for m in status.members} if status is not None else set()


def test_statefulset_pods_find_their_peers_and_a_new_ordinal_joins(tmp_path: Path) -> None:
    base = free_base_port(NODE_PORT_SPAN * 5)
    config = tmp_path / "node.toml"  # one config for every pod, as a ConfigMap
    config.write_text(STATEFULSET_CONFIG.format(base=base))
    hidden = identity_variables()
    pods: dict[str, subprocess.Popen[bytes]] = {}

    def start(ordinal: int) -> None:
        pod = f"fleetsuit-{ordinal}"
        data = tmp_path / pod
        data.mkdir()
        env = {k: v for k, v in os.environ.items() if k not in hidden}
        env.update({"HOSTNAME": pod, "FLEETSUIT_NODE_DATA": str(data), "FLEETSUIT_NODE_LOG_DIR": str(data)})
        with open(data / "pod.log", "ab") as out:
            pods[pod] = subprocess.Popen([*SUPERVISOR_COMMAND, str(config), "--service", "consensus"],
                                         stdout=out, stderr=subprocess.STDOUT, env=env)

    def endpoint(ordinal: int) -> str:
        return f"127.0.0.1:{base + NODE_PORT_SPAN * ordinal + 1}"

    try:
        for ordinal in range(3):
            start(ordinal)
        bootstrap = [endpoint(i) for i in range(3)]
        leader, _term = wait_until(lambda: _agreed_leader(bootstrap), 90, "the bootstrap pods' leader")
        assert leader in {"fleetsuit-0", "fleetsuit-1", "fleetsuit-2"}
        assert _members(bootstrap[0]) == {"fleetsuit-0", "fleetsuit-1", "fleetsuit-2"}

        start(4)  # scaled up (ordinal 3 never ran): a learner that asks to be added
        wait_until(lambda: "fleetsuit-4" in _members(bootstrap[0]), 90, "fleetsuit-4 added")
        log = tmp_path / "fleetsuit-4" / "pod.log"
        wait_until(lambda: "fleetsuit-4 is a member of the cluster" in log.read_text(), 30, "the wrapper's word")
        wait_until(lambda: getattr(_status(endpoint(4)), "leader_id", "") == leader, 60,
                   "the new pod following the leader")
        assert pods["fleetsuit-4"].poll() is None, log.read_text()
    finally:
        codes = {}
        for proc in pods.values():
            proc.send_signal(signal.SIGTERM)
        for pod, proc in pods.items():
            try:
                codes[pod] = proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                stop_processes([proc], grace_s=0)
    assert codes == {pod: 0 for pod in pods}, codes
