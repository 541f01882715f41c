"""``make run``'s main job, end to end, as a new user runs it: the path of a
release on the real release path (trust anchor at bootstrap, ``FleetClient``
push, refusals before commit, a follower's reads, failover, offline proofs).
Asserted: the facts the narrative reports, not the wording of every line."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.ports import free_base_port

pytestmark = pytest.mark.slow


def _line(pattern: str, text: str) -> re.Match[str]:
    found = re.search(pattern, text, re.MULTILINE)
    assert found, f"no line matching {pattern!r} in:\n{text}"
    return found


def test_main_job_runs_the_path_of_a_release(tmp_path: Path) -> None:
    data = tmp_path / "run"
    out = subprocess.run(
        [sys.executable, "-m", "launcher.demo", "--data", str(data), "--base-port", str(free_base_port(40))],
        capture_output=True, text=True, timeout=240,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout
    assert "demo failed" not in out.stderr and "Traceback" not in out.stderr, out.stderr

    # The CI publisher's public key was written under the data directory and is the ledger's anchor.
    assert (data / "ci-publisher.pub.pem").read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    key_id = _line(r"^trust anchor in the ledger: key (\w+)", text).group(1)

    # The push through the client library, with plain progress lines.
    assert re.search(r"^\[ci\].*upload.*100%", text, re.MULTILINE), text
    pushed = _line(r"^\[ci\] published (firmware@2): block (\d+), position (\d+)", text)
    ci_node = _line(r"^\[(n\d)\] refused before commit", text).group(1)

    # Each refusal before commit, with its code.
    for code in ("UNTRUSTED_KEY", "STALE_SEQUENCE", "PAYLOAD_MISSING"):
        _line(rf"^\[n\d\] refused before commit: .*: {code} ", text)

    # The re-run is the same release, applied once.
    again = _line(r"^\[ci\] the same push re-run: (firmware@2), block (\d+), position (\d+), duplicate=True", text)
    assert again.groups() == pushed.groups()

    # Another node (a follower) lists it, alone, signed by the anchor; it is the class's current release.
    listed = _line(r"^\[(n\d) follower\] lists firmware@2 .*signed by (\w+)", text)
    assert listed.group(1) != ci_node and listed.group(2) == key_id
    _line(rf"^\[{listed.group(1)} follower\] current release of firmware for demo-board: firmware@2$", text)

    # Another node's dht serves the payload; the leader is killed and the next release commits.
    _line(r"^\[n\d dht\] served 4194304 bytes.*digest matches: True", text)
    killed = _line(r"^killing the leader (n\d)", text).group(1)
    survivor = _line(r"new leader (n\d) .*firmware@3 committed through (n\d)", text)
    assert killed not in survivor.groups()

    # Offline: the certified chain, and the release's proof, against anchors.json.
    _line(r"^\[offline\] .*every hash link and every quorum certificate verifies", text)
    proof = _line(r"^\[device\] proof verified offline: .*release (firmware@2) in certified block (\d+)", text)
    assert proof.group(2) == pushed.group(2)
    assert text.rstrip().endswith("cluster stopped")


def test_main_job_that_cannot_start_says_why_in_one_line(tmp_path: Path) -> None:
    base = free_base_port(40)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", base + 1))  # n1's consensus port
        taken.listen()
        out = subprocess.run(
            [sys.executable, "-m", "launcher.demo", "--data", str(tmp_path / "run"), "--base-port", str(base)],
            capture_output=True, text=True, timeout=60,
        )
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("demo cannot start: "), out.stderr
    assert not (tmp_path / "run").exists()  # nothing started, nothing written
