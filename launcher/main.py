"""The ``fleetsuit`` command: registers each service's sub-commands
explicitly (``register(subparsers)`` of each ``services/<name>/cli.py``) and
turns every failure into one line and an exit code (``fleetsuit.cli``):
0 ok, 1 refused or failed, 2 usage, 3 cannot start. A closed pipe
(``fleetsuit status | head -1``) ends the command quietly."""

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

# In help order.
COMMANDS = (consensus_cli, dht_cli, manifest_cli)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fleetsuit", description="Signed firmware updates for device fleets."
    )
    parser.add_argument("--version", action="version", version=f"fleetsuit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module in COMMANDS:
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()
        return code
    except CliError as exc:
        print(f"fleetsuit: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (``| head``): no traceback, and no second
        # error when Python flushes stdout at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
