"""The ``fleetsuit`` command: registers each service's sub-commands
explicitly (``register(subparsers)`` of each ``services/<name>/cli.py``, and
the launcher's own ``cluster up``, ``release`` / ``rollout`` and ``device``)
and turns every failure into one line and an exit code (``fleetsuit.cli``):
0 ok, 1 refused or failed, 2 usage, 3 cannot start. A closed pipe (``fleetsuit
status | head -1``) ends the command quietly."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from fleetsuit import __version__
from fleetsuit.cli import EXIT_FAILED, CliError
from services.consensus import cli as consensus_cli
from services.dht import cli as dht_cli
from services.manifest import cli as manifest_cli

from . import cli as launcher_cli
from . import device_cli, keys_cli, release_cli
from .node import cli as node_cli

# In help order; the launcher's ``cluster up`` joins the consensus
# service's ``cluster`` group.
COMMANDS = (consensus_cli, launcher_cli, keys_cli, node_cli, release_cli, device_cli, dht_cli, manifest_cli)

EPILOG = """\
exit codes:
  0  ok
  1  refused or failed: the server's refusal, an unreachable or wrong endpoint,
     a file that does not verify
  2  usage: a bad option or argument
  3  cannot start: cluster up found a port taken, its data directory in use,
     or a child that does not serve

`fleetsuit COMMAND --help` describes each command. Commands that print a
result print text, or one JSON document with --json; -o FILE writes it to
FILE instead of stdout."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fleetsuit", description="Signed firmware updates for device fleets.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"fleetsuit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module in COMMANDS:
        module.register(sub)
    return parser


def _quiet_stdout() -> None:
    """The reader went away (``| head``): point stdout at /dev/null so that
    Python's flush at exit raises no second error."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        parser = build_parser()
        args = parser.parse_args(argv)  # --help and --version print here
        code = int(args.func(args) or 0)
        sys.stdout.flush()
        return code
    except CliError as exc:
        print(f"fleetsuit: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        _quiet_stdout()
        return EXIT_FAILED
    except SystemExit as exc:  # argparse: usage errors (2), --help and --version (0)
        try:
            sys.stdout.flush()
        except BrokenPipeError:
            _quiet_stdout()
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
