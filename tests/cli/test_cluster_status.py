"""``fleetsuit status`` without ``--endpoint``: the whole cluster from its
cluster file, on a real 3-node cluster (four processes a node) with a few
simulated devices in session: every node's role and heights, every
gateway's sessions and devices, the ledger's devices by version and the
rollout of each live release; a killed node shown unreachable (exit 0 while
a majority answers, 1 without one, and when none answers). And the cluster
file's resolution and its errors, without a cluster."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fleetsuit import cluster_status
from fleetsuit.client import FleetClient
from fleetsuit.device_admin import DeviceAdmin
from fleetsuit.v1 import consensus_pb2 as pb
from launcher.demo_fleet import FleetThread, enroll_fleet, fleet_config
from launcher.main import main
from launcher.up import write_description
from suit.keys import KeyAlgorithm, generate, private_pem, public_pem
from tests.support.cluster import LocalCluster
from tests.support.wait import wait_until

DEVICES = 6
CLASS = "status-board"
NODES = ("n1", "n2", "n3")


class Cluster:
    def __init__(self, root: Path) -> None:
        key = generate(KeyAlgorithm.ED25519)
        self.anchor = root / "ci.pub.pem"
        self.anchor.write_bytes(public_pem(key.public_key()))
        self.key = private_pem(key)
        self.data = root / "data"
        self.local = LocalCluster(3, self.data, trust_anchors=[self.anchor],
                                  extra_args={"gateway": ["--heartbeat-interval-ms", "1000"]})
        write_description(self.data, self.local.doc)
        self.client = FleetClient(self.local.endpoint("n1"), retry_deadline_s=60)
        self.fleet: FleetThread | None = None

    def status(self, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main(["status", "--cluster", str(self.data), *args])
        out = capsys.readouterr()
        return code, out.out, out.err

    def close(self) -> None:
        if self.fleet is not None:
            self.fleet.stop()
        self.client.close()
        self.local.close()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("status"))
    try:
        wait_until(lambda: c.client.status().leader_id, 60, "a leader")
        enroll_fleet(DeviceAdmin(c.client), DEVICES, CLASS)
        gateways = tuple(c.local.endpoint(n, "gateway") for n in NODES)
        c.fleet = FleetThread(fleet_config(DEVICES, gateways, c.anchor, "firmware", CLASS))
        c.fleet.start()
        wait_until(lambda: c.fleet is not None and c.fleet.state().sessions == DEVICES, 60, "every session")
        # One release everyone installs, one that starts in an hour, one revoked (not shown).
        c.client.push_release(b"one " * 1000, component="firmware", sequence=1, key_pem=c.key,
                              device_class=CLASS)
        wait_until(lambda: c.fleet is not None and c.fleet.state().on("firmware@1") == DEVICES
                   and c.fleet.state().unacked_reports == 0, 60, "every device on firmware@1")
        c.client.push_release(b"later " * 1000, component="firmware", sequence=2, key_pem=c.key,
                              device_class=CLASS, start_at=time.time() + 3600, stages=(10, 100),
                              stage_interval_s=600)
        c.client.push_release(b"gone " * 1000, component="other", sequence=1, key_pem=c.key,
                              device_class=CLASS)
        c.client.revoke("other@1", "not for this test")
        yield c
    finally:
        c.close()


def _settled_status(
    cluster: Cluster, capsys: pytest.CaptureFixture[str], settled: Callable[[str], bool], *args: str,
) -> tuple[int, str, str]:
    """The command's output once ``settled(stdout)``: the ledger learns of a
    switch from the device's report and a gateway at its next heartbeat,
    and a device redirected to its primary gateway is in no session for a
    moment."""
    found: list[tuple[int, str, str]] = []

    def run() -> bool:
        found[:] = [cluster.status(capsys, *args)]
        return settled(found[0][1])

    wait_until(run, 60, "a status with every device in session on firmware@1")
    return found[0]


def _every_device_on_firmware_1(out: str) -> bool:
    doc = json.loads(out)
    in_session = [g["devices_by_version"].get("firmware@1", 0) for g in doc["gateways"]]
    return sum(in_session) == DEVICES and doc["devices"]["by_version"] == {"firmware@1": DEVICES}


def test_the_whole_cluster_as_json(cluster: Cluster, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _settled_status(cluster, capsys, _every_device_on_firmware_1, "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["cluster_file"] == str(cluster.data / "cluster.json") and doc["cluster_id"] == "test"
    assert doc["answering"] == 3 and doc["voters"] == 3 and doc["majority"] is True

    nodes = {n["id"]: n for n in doc["nodes"]}
    assert set(nodes) == set(NODES) and all(n["reachable"] for n in nodes.values())
    leaders = [n for n in nodes.values() if n["role"] == "leader"]
    assert len(leaders) == 1 and doc["leader"] == leaders[0]["id"] and doc["term"] == leaders[0]["term"]
    for node in nodes.values():
        assert node["endpoint"] == cluster.local.endpoint(node["id"])
        assert node["leader_id"] == doc["leader"] and node["voter"] is True
        assert node["commit_index"] > 0 and node["applied_index"] > 0 and node["block_height"] > 0

    gateways = {g["node_id"]: g for g in doc["gateways"]}
    assert set(gateways) == set(NODES)
    assert sum(g["sessions"] for g in gateways.values()) == DEVICES
    for node_id, gateway in gateways.items():
        assert gateway["reachable"] and gateway["address"] == cluster.local.endpoint(node_id, "gateway")
        assert sum(gateway["devices_by_version"].values()) == gateway["sessions"]
        assert set(gateway["devices_by_version"]) <= {"firmware@1"}

    assert doc["ledger"]["read_from"] == doc["leader"] and doc["ledger"]["consistent"] is True
    assert doc["devices"]["by_state"] == {"accepted": DEVICES}
    assert doc["devices"]["by_version"] == {"firmware@1": DEVICES}

    rollouts = {r["release_id"]: r for r in doc["rollouts"]}
    assert set(rollouts) == {"firmware@1", "firmware@2"}  # other@1 is revoked
    now = rollouts["firmware@1"]
    assert (now["state"], now["stage"], now["stages"], now["open_percent"], now["starts_at"]) == (
        "active", 1, 1, 100, None)
    assert (now["targeted"], now["installed"], now["failed"], now["pending"]) == (DEVICES, DEVICES, 0, 0)
    later = rollouts["firmware@2"]
    assert (later["state"], later["stage"], later["stages"], later["open_percent"]) == ("active", 0, 2, 0)
    assert later["starts_at"].endswith("Z")
    assert (later["targeted"], later["installed"], later["failed"], later["pending"]) == (DEVICES, 0, 0, DEVICES)


def test_the_whole_cluster_as_a_table(cluster: Cluster, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _settled_status(cluster, capsys, lambda out: f"firmware@1={DEVICES}" in out and sum(
        int(m.group(1)) for m in re.finditer(r"^n\d\s+127\.0\.0\.1:\d+\s+(\d+)\s+firmware@1=", out, re.MULTILINE)
    ) == DEVICES)
    assert code == 0, err
    lines = out.splitlines()
    assert re.match(r"cluster test \(.*cluster\.json\) at \S+Z: 3 of 3 nodes answer; leader n\d, term \d+$",
                    lines[0]), lines[0]
    header = next(i for i, line in enumerate(lines) if line.startswith("NODE"))
    assert lines[header].split() == ["NODE", "ROLE", "TERM", "COMMIT", "APPLIED", "BLOCKS", "REACHABLE"]
    rows = [line.split() for line in lines[header + 1:header + 4]]
    assert [r[0] for r in rows] == list(NODES) and all(r[-1] == "yes" for r in rows)
    assert sorted(r[1] for r in rows) == ["follower", "follower", "leader"]
    gateway_rows = [line.split() for line in lines if re.match(r"n\d\s+127\.0\.0\.1:\d+\s+\d+", line)]
    assert len(gateway_rows) == 3 and sum(int(r[2]) for r in gateway_rows) == DEVICES
    assert re.search(rf"^devices \(read from n\d\): accepted={DEVICES}$", out, re.MULTILINE), out
    assert f"  by version: firmware@1={DEVICES}" in lines
    rollout = next(line for line in lines if line.startswith("firmware@1 ")).split()
    assert rollout == ["firmware@1", "active", "1/1", "(100%)", "at", "once", str(DEVICES), "0", "0"]
    later = next(line for line in lines if line.startswith("firmware@2 ")).split()
    assert later[:4] == ["firmware@2", "active", "0/2", "(0%)"] and later[-3:] == ["0", "0", str(DEVICES)]
    assert not any(line.startswith("other@1") for line in lines)


def test_killed_nodes_are_shown_unreachable(cluster: Cluster, capsys: pytest.CaptureFixture[str]) -> None:
    """Last in this module: it kills the cluster, node by node."""
    for service in ("consensus", "dht", "manifest", "gateway"):
        cluster.local.kill("n3", service)
    code, out, err = cluster.status(capsys, "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert (doc["answering"], doc["majority"]) == (2, True)
    n3 = next(n for n in doc["nodes"] if n["id"] == "n3")
    assert n3 == {"id": "n3", "endpoint": cluster.local.endpoint("n3"), "reachable": False,
                  "error": f"cannot reach {cluster.local.endpoint('n3')}"}
    gateway = next(g for g in doc["gateways"] if g["node_id"] == "n3")
    assert not gateway["reachable"] and gateway["error"].startswith("cannot reach")
    assert doc["leader"] in ("n1", "n2") or doc["leader"] is None
    assert doc["devices"]["by_state"] == {"accepted": DEVICES}

    code, out, err = cluster.status(capsys)
    assert code == 0, err
    row = next(line for line in out.splitlines() if line.startswith("n3 "))
    assert row.split()[1:7] == ["-"] * 5 + ["no"] and "cannot reach" in row
    assert "2 of 3 nodes answer;" in out.splitlines()[0]

    for service in ("consensus", "gateway"):
        cluster.local.kill("n2", service)
    code, out, err = cluster.status(capsys, "--json", "--timeout", "1")
    assert code == 1
    assert err == "fleetsuit: only 1 of 3 voters answered: the cluster has no majority\n"
    assert json.loads(out)["majority"] is False

    for service in ("consensus", "gateway"):
        cluster.local.kill("n1", service)
    code, out, err = cluster.status(capsys, "--timeout", "1")
    assert code == 1 and err == f"fleetsuit: no node of {cluster.data / 'cluster.json'} answered\n"
    assert "0 of 3 nodes answer (no majority); no leader" in out
    assert "devices: the ledger cannot be read (no node answered)" in out


# ---------------------------------------------------------------- without a cluster


def test_the_cluster_file_is_the_option_then_the_environment_then_the_make_run_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dir").mkdir()
    assert cluster_status.resolve_cluster_file("dir", {}) == Path("dir/cluster.json")
    assert cluster_status.resolve_cluster_file("x.json", {"FLEETSUIT_CLUSTER_FILE": "y.json"}) == Path("x.json")
    assert cluster_status.resolve_cluster_file(None, {"FLEETSUIT_CLUSTER_FILE": "y.json"}) == Path("y.json")
    assert cluster_status.resolve_cluster_file(None, {}) == Path("data/run/cluster.json")


@pytest.mark.parametrize(("content", "message"), [
    (None, "no cluster file at {path}: start a cluster"),
    ("{not json", "{path}: not JSON"),
    ('{"nodes": []}', '{path}: not a cluster file (no "nodes" list)'),
    ('{"nodes": [{"id": "n1"}]}', '{path}: nodes[0] has no "endpoints" object'),
    ('{"nodes": [{"id": "n1", "endpoints": {"gateway": "h:1"}}]}',
     "{path}: nodes[0].endpoints.consensus must be a non-empty string, not None"),
    ('{"nodes": [{"id": "n1", "endpoints": {"consensus": "h:1"}}, {"id": "n1", "endpoints": {"consensus": "h:2"}}]}',
     "{path}: a node id appears twice in ['n1', 'n1']"),
])
def test_a_bad_cluster_file_is_one_line_naming_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | None, message: str,
) -> None:
    path = tmp_path / "cluster.json"
    if content is not None:
        path.write_text(content)
    assert main(["status", "--cluster", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("fleetsuit: " + message.format(path=path)) and len(err.splitlines()) == 1, err


def test_endpoint_and_cluster_together_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--endpoint", "127.0.0.1:1", "--cluster", "x"]) == 2
    assert "not both" in capsys.readouterr().err


def _policy(**fields: Any) -> pb.RolloutPolicy:
    return pb.RolloutPolicy(**fields)


def test_the_stage_open_now_follows_the_policy() -> None:
    stage = cluster_status.rollout_stage
    assert stage(_policy(), 5) == (1, 1, 100)  # no stages: one of 100%, at once
    staged = _policy(start_at_unix_ms=1000, stages=[10, 50, 100], stage_interval_ms=100)
    assert [stage(staged, t) for t in (999, 1000, 1099, 1100, 1200, 10**9)] == [
        (0, 3, 0), (1, 3, 10), (1, 3, 10), (2, 3, 50), (3, 3, 100), (3, 3, 100)]
    assert stage(_policy(start_at_unix_ms=1000, stages=[10, 100]), 1000) == (2, 2, 100)  # no interval
