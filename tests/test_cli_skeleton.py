"""The CLI dispatcher: help works and a missing command is a usage error."""

import subprocess
import sys


def test_help_lists_commands() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "launcher", "--help"], capture_output=True, text=True, check=True
    )
    assert "fleetsuit" in out.stdout


def test_no_command_is_usage_error() -> None:
    out = subprocess.run([sys.executable, "-m", "launcher"], capture_output=True, text=True)
    assert out.returncode == 2
    assert "usage" in out.stderr.lower()
