"""``fleetsuit cluster up`` in the foreground, ``status --json``, ``ledger
append | export | verify`` — as a person would run them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fleetsuit.ports import free_base_port

pytestmark = pytest.mark.slow

CLI = [sys.executable, "-m", "launcher"]


def _run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60, check=check)


def _wait(cond, timeout_s: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _serving(endpoint: str) -> bool:
    channel = grpc.insecure_channel(endpoint)
    try:
        resp = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
        return resp.status == health_pb2.HealthCheckResponse.SERVING
    except grpc.RpcError:
        return False
    finally:
        channel.close()


def _scrape(address: str) -> str:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as resp:
        return resp.read().decode()


def test_cluster_up_status_append_export_verify(tmp_path: Path) -> None:
    data = tmp_path / "cluster"
    base = free_base_port(40)
    up = subprocess.Popen(
        [*CLI, "cluster", "up", "--nodes", "3", "--data", str(data), "--base-port", str(base)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    child_pids: list[int] = []
    try:
        doc = _wait(
            lambda: json.loads((data / "cluster.json").read_text()) if (data / "cluster.json").exists() else None,
            30, "cluster.json",
        )
        assert [n["id"] for n in doc["nodes"]] == ["n1", "n2", "n3"]
        for node in doc["nodes"]:
            assert set(node["pids"]) == set(node["endpoints"])
            assert {"consensus", "dht", "manifest"} <= set(node["endpoints"])
            child_pids.extend(node["pids"].values())
        endpoints = [n["endpoints"]["consensus"] for n in doc["nodes"]]

        def leader_known() -> dict | None:
            out = _run("status", "--endpoint", endpoints[0], "--json", check=False)
            if out.returncode != 0:
                return None
            status = json.loads(out.stdout)
            return status if status["leader_id"] else None

        status = _wait(leader_known, 30, "a leader")
        for key in ("node_id", "role", "term", "leader_id", "commit_index", "applied_index"):
            assert key in status
        assert status["node_id"] == "n1"

        for service, endpoint in doc["nodes"][0]["endpoints"].items():
            assert _wait(lambda ep=endpoint: _serving(ep), 30, f"{service} health SERVING")

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

        def certified() -> bool:
            status = json.loads(_run("status", "--endpoint", endpoints[0], "--json").stdout)
            return bool(status["certified_height"] >= again[0]["block_height"])

        _wait(certified, 30, "the blocks certified")
        ledger = tmp_path / "ledger.bin"
        _run("ledger", "export", "--endpoint", endpoints[0], "-o", str(ledger))
        ok = json.loads(_run("ledger", "verify", str(ledger), "--json", "--anchors", doc["anchors"]).stdout)
        assert ok["ok"] is True and ok["blocks"] >= 3

        raw = bytearray(ledger.read_bytes())
        raw[len(raw) // 2] ^= 0x01
        bad = tmp_path / "bad.bin"
        bad.write_bytes(bytes(raw))
        out = _run("ledger", "verify", str(bad), "--anchors", doc["anchors"], check=False)
        assert out.returncode != 0
        assert "Traceback" not in out.stderr
        assert "block" in out.stderr or "record" in out.stderr
    finally:
        up.send_signal(signal.SIGTERM)
        try:
            up.wait(timeout=20)
        except subprocess.TimeoutExpired:
            up.kill()
            up.wait()
            for pid in child_pids:
                if _pid_alive(pid):
                    os.kill(pid, signal.SIGKILL)
    assert up.returncode == 0
    for pid in child_pids:
        _wait(lambda pid=pid: not _pid_alive(pid), 10, f"child {pid} to stop")
