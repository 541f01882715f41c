"""``fleetsuit cluster up`` in the foreground, ``status --json``, ``ledger
append | export | verify`` — as a person would run them."""

from __future__ import annotations

import json
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support.cli import CLI, ClusterUp, run_cli
from tests.support.procs import pid_alive
from tests.support.wait import wait_until

pytestmark = pytest.mark.slow


def _run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, check=check)


def _serving(endpoint: str) -> bool:
    channel = grpc.insecure_channel(endpoint)
    try:
        resp = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
        return bool(resp.status == health_pb2.HealthCheckResponse.SERVING)
    except grpc.RpcError:
        return False
    finally:
        channel.close()


def _scrape(address: str) -> str:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as resp:
        return str(resp.read().decode())


def test_cluster_up_status_append_export_verify(tmp_path: Path) -> None:
    data = tmp_path / "cluster"
    up = ClusterUp(data, nodes=3)
    child_pids: list[int] = []
    try:
        doc = up.wait_up()
        assert [n["id"] for n in doc["nodes"]] == ["n1", "n2", "n3"]
        # Success is printed only once every service of every node serves.
        for node in doc["nodes"]:
            assert set(node["pids"]) == set(node["endpoints"])
            assert {"consensus", "dht", "manifest"} <= set(node["endpoints"])
            child_pids.extend(node["pids"].values())
            for service, endpoint in node["endpoints"].items():
                assert _serving(endpoint), f"{service} of {node['id']} not serving after success"
        assert doc["cluster_id"].startswith("fs-")
        assert json.loads(Path(doc["anchors"]).read_text())["cluster_id"] == doc["cluster_id"]
        endpoints = [n["endpoints"]["consensus"] for n in doc["nodes"]]

        def leader_known() -> dict[str, Any] | None:
            out = _run("status", "--endpoint", endpoints[0], "--json", check=False)
            if out.returncode != 0:
                return None
            status: dict[str, Any] = json.loads(out.stdout)
            return status if status["leader_id"] else None

        status = wait_until(leader_known, 30, "a leader")
        for key in ("node_id", "role", "term", "leader_id", "commit_index", "applied_index"):
            assert key in status
        assert status["node_id"] == "n1"
        assert status["cluster_id"] == doc["cluster_id"]

        metrics = _scrape(doc["nodes"][0]["metrics"]["consensus"])
        for name in (
            "fleetsuit_server_term", "fleetsuit_server_commit_index", "fleetsuit_server_applied_index",
            "fleetsuit_server_has_leader 1.0", "fleetsuit_server_is_leader",
            "fleetsuit_server_leader_changes_seen_total", "fleetsuit_server_proposals_committed_total",
            "fleetsuit_server_proposals_pending", "fleetsuit_server_proposals_failed",
            "fleetsuit_disk_wal_fsync_duration_seconds_bucket",
            "fleetsuit_disk_wal_append_duration_seconds_bucket",
        ):
            assert name in metrics, f"{name} missing from /metrics"

        first = json.loads(_run("ledger", "append", "--endpoint", endpoints[1], "hello", "--json").stdout)
        second = json.loads(_run("ledger", "append", "--endpoint", endpoints[2], "world", "--json").stdout)
        assert second["index"] > first["index"]
        assert second["block_height"] == first["block_height"] + 1

        # Idempotency: the same client and request id is applied once.
        again = [
            json.loads(_run("ledger", "append", "--endpoint", ep, "once", "--json",
                            "--client-id", "ci-42", "--request-id", "9").stdout)
            for ep in endpoints[:2]
        ]
        assert again[0]["duplicate"] is False and again[1]["duplicate"] is True
        assert again[0]["index"] == again[1]["index"]

        # The entry's text from stdin ("-") and from a file.
        piped = run_cli("ledger", "append", "--endpoint", endpoints[0], "-", "--json", input="from stdin")
        assert piped.returncode == 0, piped.stderr
        text_file = tmp_path / "entry.txt"
        text_file.write_text("from a file")
        filed = _run("ledger", "append", "--endpoint", endpoints[0], "--file", str(text_file), "--json")
        assert json.loads(filed.stdout)["index"] > json.loads(piped.stdout)["index"]

        def certified() -> bool:
            status = json.loads(_run("status", "--endpoint", endpoints[0], "--json").stdout)
            return bool(status["certified_height"] >= again[0]["block_height"])

        wait_until(certified, 30, "the blocks certified")
        ledger = tmp_path / "ledger.bin"
        exported = _run("ledger", "export", "--endpoint", endpoints[0], "-o", str(ledger), "--json")
        assert json.loads(exported.stdout)["blocks"] >= 3
        ok = json.loads(_run("ledger", "verify", str(ledger), "--json", "--anchors", doc["anchors"]).stdout)
        assert ok["ok"] is True and ok["blocks"] >= 3
        report = tmp_path / "report.json"
        _run("ledger", "verify", str(ledger), "--json", "--anchors", doc["anchors"], "-o", str(report))
        assert json.loads(report.read_text())["blocks"] == ok["blocks"]

        raw = bytearray(ledger.read_bytes())
        raw[len(raw) // 2] ^= 0x01
        bad = tmp_path / "bad.bin"
        bad.write_bytes(bytes(raw))
        out = _run("ledger", "verify", str(bad), "--anchors", doc["anchors"], check=False)
        assert out.returncode != 0
        assert "Traceback" not in out.stderr
        assert "block" in out.stderr or "record" in out.stderr

        # An endpoint of another service is named as such, not "Method not found".
        for service in ("dht", "manifest"):
            wrong = doc["nodes"][0]["endpoints"][service]
            out = _run("status", "--endpoint", wrong, check=False)
            assert out.returncode == 1
            assert f"{wrong} is not a consensus endpoint" in out.stderr, out.stderr
            assert "Traceback" not in out.stderr and "Method not found" not in out.stderr

        # A reader that goes away early (`| head -c1`): no traceback.
        reader = subprocess.Popen([*CLI, "status", "--endpoint", endpoints[0], "--json"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert reader.stdout is not None
        reader.stdout.close()
        _, err = reader.communicate(timeout=60)
        assert b"Traceback" not in err and b"Exception ignored" not in err, err.decode()
    finally:
        code = up.stop()
    assert code == 0, up.stdout + up.stderr
    assert "cluster stopped" in up.stdout
    wait_until(lambda: not any(pid_alive(pid) for pid in child_pids), 10, f"children {child_pids} to stop")
