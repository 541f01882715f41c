"""``make run`` as a new user runs it (``python -m launcher.demo``, a child
process on free ports): a 3-node cluster, 300 simulated devices in session
before the release, the release pushed with a start time ahead and rolled
out in stages, progress every second, the release path (refusals before
commit, a re-run, a follower's reads, failover, offline proofs), the
metrics addresses and the scrape configuration. With ``--once`` it exits 0
once every device runs the release; without, it runs until SIGINT and then
leaves no process behind. Asserted: the facts the lines report, not the
wording of every line."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import threading
from datetime import datetime
from pathlib import Path

import pytest
import yaml

from agent.enrol import device_id_of
from launcher.demo_fleet import PREFIX
from services.gateway import rollout
from tests.support.ports import free_base_port
from tests.support.procs import pid_alive, stop_processes
from tests.support.wait import wait_until

pytestmark = pytest.mark.slow

DEVICES = 300
STAGES = (10, 50, 100)
RELEASE = "firmware@2"
DEMO = [sys.executable, "-m", "launcher.demo"]


def _line(pattern: str, text: str) -> re.Match[str]:
    found = re.search(pattern, text, re.MULTILINE)
    assert found, f"no line matching {pattern!r} in:\n{text}"
    return found


def _ms(iso: str) -> int:
    return round(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000)


def _pids(data: Path) -> list[int]:
    """Every process cluster.json names: each node's supervisor and its four services."""
    doc = json.loads((data / "cluster.json").read_text())
    return [pid for node in doc["nodes"] for pid in (node["supervisor_pid"], *node["pids"].values())]


def _admitted(stages_open: int) -> int:
    """Devices the first ``stages_open`` stages admit (the gateways' rule)."""
    policy = rollout.Policy(stages=STAGES)
    stages = [rollout.device_stage(policy, device_id_of(PREFIX, i), RELEASE) for i in range(DEVICES)]
    return sum(1 for stage in stages if stage is not None and stage < stages_open)


def _check_rollout(text: str) -> None:
    """Before the start no device runs the release; at each line no more
    devices than the open stages admit; the count grows to every device."""
    start_ms = _ms(_line(r"^\[rollout\] start time (\S+) \(", text).group(1))
    progress = re.findall(r"^\[rollout T([+-][\d.]+)s\] (before the start|stage (\d)/3 \(\d+% admitted\)) "
                          r"\| sessions \d+/300 \| (.*)$", text, re.MULTILINE)
    assert len(progress) >= 3, text
    counts = []
    for offset, what, stage, versions in progress:
        on = int(m.group(1)) if (m := re.search(rf"{RELEASE}=(\d+)", versions)) else 0
        if what == "before the start":
            assert float(offset) < 0 and on == 0, (offset, versions)
        else:
            assert float(offset) >= 0 and on <= _admitted(int(stage)), (offset, stage, versions)
        counts.append(on)
    assert counts == sorted(counts) and counts[0] == 0 and counts[-1] == DEVICES, counts
    assert progress[-1][3] == f"{RELEASE}={DEVICES}"
    first = _line(rf"^\[rollout\] every one of the {DEVICES} devices runs {RELEASE}; the first switched at "
                  r"(\S+), (\d+) ms after the start time: no device switched before it$", text)
    assert _ms(first.group(1)) >= start_ms and _ms(first.group(1)) - start_ms == int(first.group(2))


def test_make_run_once_rolls_a_release_out_to_the_whole_fleet_and_exits_0(tmp_path: Path) -> None:
    data = tmp_path / "run"
    base = free_base_port(40)
    out = subprocess.run([*DEMO, "--data", str(data), "--base-port", str(base), "--once"],
                         capture_output=True, text=True, timeout=300)
    text = out.stdout
    assert out.returncode == 0, text + out.stderr
    assert "demo failed" not in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert not [pid for pid in _pids(data) if pid_alive(pid)]

    _line(r"^started 3 nodes on 127\.0\.0\.1, each a `fleetsuit node` supervisor of its four services", text)
    assert len(_pids(data)) == 15

    # The CI publisher's public key was written under the data directory and is the ledger's anchor.
    assert (data / "ci-publisher.pub.pem").read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    key_id = _line(r"^trust anchor in the ledger: key (\w+)", text).group(1)

    # The fleet runs on the gateways before the release: every device in session, on its factory image.
    _line(rf"^\[operator\] enrolled {DEVICES} devices of class demo-board", text)
    fleet = _line(rf"^\[fleet\] {DEVICES} simulated devices in session with the gateways .*"
                  rf"sessions {DEVICES}/{DEVICES} \| factory={DEVICES}$", text)
    push = _line(rf"^\[ci\] .* push {RELEASE} for demo-board: .*rollout from (\S+) in stages 10,50,100%", text)
    assert fleet.start() < push.start()

    # The push through the client library, with plain progress lines, and the start time ahead.
    assert re.search(r"^\[ci\].*upload.*100%", text, re.MULTILINE), text
    pushed = _line(rf"^\[ci\] published ({RELEASE}): block (\d+), position (\d+)", text)
    start = _line(r"^\[rollout\] start time (\S+) \(([\d.]+)s from now\): no device switches before it$", text)
    assert start.group(1) == push.group(1) and float(start.group(2)) > 0

    # Each refusal before commit, with its code; the re-run is the same release, applied once.
    for code in ("UNTRUSTED_KEY", "STALE_SEQUENCE", "PAYLOAD_MISSING"):
        _line(rf"^\[n1\] refused before commit: .*: {code} ", text)
    again = _line(rf"^\[ci\] the same push re-run: ({RELEASE}), block (\d+), position (\d+), duplicate=True", text)
    assert again.groups() == pushed.groups()

    # A follower lists it, alone, signed by the anchor; another node's dht serves the payload.
    listed = _line(rf"^\[(n\d) follower\] lists {RELEASE} .*signed by (\w+)", text)
    assert listed.group(1) != "n1" and listed.group(2) == key_id
    _line(rf"^\[{listed.group(1)} follower\] current release of firmware for demo-board: {RELEASE}$", text)
    _line(r"^\[n\d dht\] served 4194304 bytes.*digest matches: True", text)

    # The rollout, every second, and the ledger's device table.
    _check_rollout(text)
    _line(rf"^\[ledger\] device table: {DEVICES} devices report {RELEASE} installed, 0 failed; "
          rf"by version \{{'{RELEASE}': {DEVICES}\}}$", text)

    # The leader is killed, the next release commits through a survivor, the killed process comes back.
    killed = _line(r"^killing the leader (n\d)", text).group(1)
    survivor = _line(r"new leader (n\d) .*firmware@3 \(for demo-board-rev-b\) committed through (n\d)", text)
    assert killed not in survivor.groups()
    _line(rf"^  {killed}'s consensus: its supervisor restarted it \(pid \d+\); follower", text)

    # Offline: the certified chain, and the release's proof, against anchors.json.
    _line(r"^\[offline\] .*every hash link and every quorum certificate verifies", text)
    proof = _line(rf"^\[device\] proof verified offline: .*release ({RELEASE}) in certified block (\d+)", text)
    assert proof.group(2) == pushed.group(2)

    # Every process's metrics (each service's, each supervisor's), and a scrape configuration naming each.
    urls = set(re.findall(r"http://127\.0\.0\.1:(\d+)/metrics", _line(r"^\[metrics\] Prometheus", text).string))
    expected = {str(base + 10 * i + offset) for i in range(3) for offset in (0, 6, 7, 8, 9)}
    assert urls == expected
    scrape = _line(r"^\[metrics\] scrape configuration for Prometheus: (\S+) ", text).group(1)
    assert Path(scrape) == data / "prometheus.yml"
    config = yaml.safe_load(Path(scrape).read_text())
    targets = {t.rpartition(":")[2] for job in config["scrape_configs"] for s in job["static_configs"]
               for t in s["targets"]}
    assert targets == expected
    _line(rf"^\[status\] the whole cluster: \S*fleetsuit status --cluster {re.escape(str(data))}$", text)

    assert text.rstrip().endswith(f"done: every one of the {DEVICES} devices runs {RELEASE}\ncluster stopped")


def test_make_run_keeps_running_until_sigint_then_stops_every_process(tmp_path: Path) -> None:
    data = tmp_path / "run"
    proc = subprocess.Popen([*DEMO, "--data", str(data), "--base-port", str(free_base_port(40))],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    assert proc.stdout is not None
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout or ()), daemon=True)
    reader.start()
    try:
        wait_until(lambda: any(line.startswith("[rollout] every one of") for line in lines) or proc.poll() is not None,
                   240, "the rollout line")
        assert proc.poll() is None, "".join(lines) + (proc.stderr.read() if proc.stderr else "")
        # Every process runs (but the leader's consensus, which the demo kills next, may be gone).
        assert sum(1 for pid in _pids(data) if not pid_alive(pid)) <= 1
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=60)
        reader.join(timeout=10)
        text = "".join(lines)
        err = proc.stderr.read() if proc.stderr else ""
        assert code == 0, text + err
        assert "Traceback" not in err, err
        assert text.rstrip().endswith("cluster stopped")
        # Every process the cluster file names now (a restarted one too) is gone.
        assert not [pid for pid in _pids(data) if pid_alive(pid)]
    finally:
        if proc.poll() is None:
            stop_processes([proc])
        if (data / "cluster.json").exists():
            stop_processes([pid for pid in _pids(data) if pid_alive(pid)])


def test_make_run_that_cannot_start_says_why_in_one_line(tmp_path: Path) -> None:
    base = free_base_port(40)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", base + 1))  # n1's consensus port
        taken.listen()
        out = subprocess.run([*DEMO, "--data", str(tmp_path / "run"), "--base-port", str(base), "--once"],
                             capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("demo cannot start: "), out.stderr
    assert not (tmp_path / "run").exists()  # nothing started, nothing written
