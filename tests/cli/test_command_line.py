"""The ``fleetsuit`` command as a whole: exit codes documented in --help,
one ``cluster`` group shared by the launcher and the consensus service,
help on every option, --json and -o on every command that prints a result,
and no traceback when the reader of its output goes away."""

from __future__ import annotations

import argparse
import subprocess

import pytest

from launcher import cli as launcher_cli
from launcher.main import build_parser, main
from services.consensus import cli as consensus_cli
from tests.support.cli import CLI, run_cli

# Every consensus and launcher command, and whether it prints a result.
COMMANDS = {
    ("status",): True,
    ("ledger", "append"): True,
    ("ledger", "export"): True,
    ("ledger", "verify"): True,
    ("ledger", "prove"): True,
    ("ledger", "verify-proof"): True,
    ("cluster", "add"): True,
    ("cluster", "remove"): True,
    ("cluster", "transfer-leader"): True,
    ("cluster", "keys"): True,
    ("cluster", "up"): False,  # runs in the foreground; cluster.json is its result
}


def _subparser(parser: argparse.ArgumentParser, path: tuple[str, ...]) -> argparse.ArgumentParser:
    for name in path:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[name]
    return parser


def test_help_documents_the_exit_codes() -> None:
    out = run_cli("--help")
    assert out.returncode == 0
    for line in ("exit codes:", "  0  ok", "  1  refused or failed", "  2  usage", "  3  cannot start"):
        assert line in out.stdout


def test_the_cluster_group_holds_up_and_the_membership_changes() -> None:
    parser = build_parser()
    up = parser.parse_args(["cluster", "up", "--data", "d"])
    assert up.func is launcher_cli.cmd_up and up.nodes == 3 and up.base_port == 7100
    assert up.cluster_id is None
    add = parser.parse_args(["cluster", "add", "--endpoint", "e", "--node-id", "n4", "--address", "a"])
    assert add.func is consensus_cli.cmd_cluster_add
    cluster = _subparser(parser, ("cluster",))
    group = next(a for a in cluster._actions if isinstance(a, argparse._SubParsersAction))
    names = set(group.choices)
    assert names == {"up", "keys", "add", "remove", "transfer-leader"}
    help_text = run_cli("--help").stdout
    assert "membership of a running cluster" in help_text and "a local cluster on loopback (up)" in help_text


@pytest.mark.parametrize("path", sorted(COMMANDS))
def test_every_option_has_help(path: tuple[str, ...]) -> None:
    parser = _subparser(build_parser(), path)
    for action in parser._actions:
        assert action.help, f"fleetsuit {' '.join(path)}: {action.option_strings or action.dest} has no help"


@pytest.mark.parametrize("path", sorted(p for p, prints in COMMANDS.items() if prints))
def test_every_command_that_prints_a_result_has_json_and_output(path: tuple[str, ...]) -> None:
    options = {s for a in _subparser(build_parser(), path)._actions for s in a.option_strings}
    assert {"--json", "-o", "--output"} <= options, f"fleetsuit {' '.join(path)}"


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "usage" in capsys.readouterr().err.lower()


def test_help_into_a_pipe_closed_early_has_no_traceback() -> None:
    """``fleetsuit --help | head -c1``."""
    proc = subprocess.Popen([*CLI, "--help"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    proc.stdout.close()
    _, err = proc.communicate(timeout=60)
    assert b"Traceback" not in err and b"Exception ignored" not in err, err.decode()
