"""The ``fleetsuit`` command: a thin dispatcher.

Each service contributes its own sub-commands from ``services/<name>/cli.py``
through ``register(subparsers)``; every handler returns a process exit code.
Errors a user can act on are printed as one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# Modules that contribute sub-commands, in help order.
COMMAND_MODULES = (
    "services.consensus.cli",
    "services.dht.cli",
    "services.manifest.cli",
    "services.gateway.cli",
)


class CliError(Exception):
    """An error reported to the user as one line, exit code 1 (or ``code``)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fleetsuit", description="Signed firmware updates for device fleets."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # that service is not part of this build
                continue
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CliError as exc:
        print(f"fleetsuit: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    # Run through the canonical module so that ``CliError`` raised by service
    # modules (imported as fleetsuit.cli) is the class caught here.
    from fleetsuit.cli import main as _main

    sys.exit(_main())
