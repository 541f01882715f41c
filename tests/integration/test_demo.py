"""``make run``'s main job, end to end, as a new user runs it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.ports import free_base_port

pytestmark = pytest.mark.slow


def test_main_job_runs_the_path_of_a_release(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "launcher.demo", "--data", str(tmp_path / "run"),
         "--base-port", str(free_base_port(40))],
        capture_output=True, text=True, timeout=240,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    for expected in (
        "update from sequence 1: accepted=True",
        "accepted=False (MANIFEST_ERROR_ROLLBACK)",
        "got the same answer (applied once)",
        "digest matches: True",
        "every hash link and every quorum certificate verifies",
        "shows release demo-2 in certified block",
        "cluster stopped",
    ):
        assert expected in out.stdout, f"missing {expected!r} in:\n{out.stdout}"
