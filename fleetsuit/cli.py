"""What every ``fleetsuit`` sub-command shares (one shape for the command
line): exit codes, ``--json`` and ``-o/--output``, ``--quiet``, turning a
gRPC failure into one line that names the endpoint (and says so when the
endpoint is another service's), and progress shown only on a terminal.

The entry point that registers each service's sub-commands lives above the
services (``launcher/main.py``); this module imports no service.

Exit codes: 0 ok, 1 refused or failed, 2 usage (argparse), 3 cannot start.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Callable, Iterator
from typing import IO, Any

import grpc

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_CANNOT_START = 3


class CliError(Exception):
    """An error reported to the user as one line; exit code ``code``."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


def add_output_options(parser: argparse.ArgumentParser, *, output: bool = True) -> None:
    """``--json`` (a machine-readable result) and ``-o/--output FILE``
    (write the result there instead of stdout)."""
    parser.add_argument("--json", action="store_true", help="print the result as one JSON document")
    if output:
        parser.add_argument("-o", "--output", metavar="FILE", default=None,
                            help="write the result to FILE instead of stdout")


def add_quiet(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="no progress output (it is shown only on a terminal anyway)")


def command_group(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser], name: str, help: str
) -> argparse._SubParsersAction[argparse.ArgumentParser]:
    """The sub-commands of ``fleetsuit NAME``, which several modules may
    register into (``cluster up`` from the launcher, ``cluster add`` from
    the consensus service): created by the first caller; a later caller
    gets the same group, and its ``help`` is added to the group's."""
    existing = subparsers.choices.get(name)
    if existing is None:
        parser = subparsers.add_parser(name, help=help, description=help)
        group = parser.add_subparsers(dest=f"{name.replace('-', '_')}_command", metavar="COMMAND")
        group.required = True
        return group
    found = next((a for a in existing._actions if isinstance(a, argparse._SubParsersAction)), None)
    if found is None:
        raise ValueError(f"fleetsuit {name} is a command, not a group of commands")
    # argparse keeps the line ``fleetsuit --help`` shows for NAME in a
    # pseudo-action of the parent's sub-parsers; extend it there.
    for choice in subparsers._choices_actions:
        if choice.dest == name and choice.help and help not in choice.help:
            choice.help = f"{choice.help}; {help}"
            existing.description = choice.help
    return found


def add_endpoint(parser: argparse.ArgumentParser, service: str, default: str | None = None) -> None:
    parser.add_argument(
        "--endpoint", required=default is None, default=default, metavar="HOST:PORT",
        help=f"address of a node's {service} service" + (f" (default: {default})" if default else ""),
    )


def emit(args: argparse.Namespace, doc: Any, text: str | Callable[[Any], str] | None = None) -> None:
    """Print a command's result: JSON with ``--json``, else ``text`` (a
    string or a function of ``doc``; JSON when absent), to ``--output`` or
    stdout."""
    if getattr(args, "json", False) or text is None:
        out = json.dumps(doc, indent=2, sort_keys=False)
    else:
        out = text(doc) if callable(text) else text
    path = getattr(args, "output", None)
    if path and path != "-":
        try:
            with open(path, "w", encoding="utf-8") as f:
                f.write(out + "\n")
        except OSError as exc:
            raise CliError(f"cannot write {path}: {exc.strerror}") from None
    else:
        print(out)


def rpc_error(exc: grpc.RpcError, endpoint: str, service: str) -> CliError:
    """One line for a failed call: unreachable, wrong service, or the
    server's own typed refusal (``CODE: message``)."""
    code = exc.code() if hasattr(exc, "code") else None
    details = (exc.details() if hasattr(exc, "details") else "") or str(exc)
    if code == grpc.StatusCode.UNAVAILABLE:
        return CliError(f"cannot reach {endpoint}: {details}")
    if code == grpc.StatusCode.UNIMPLEMENTED:
        return CliError(
            f"{endpoint} is not a {service} endpoint (it does not implement this call); "
            f"check the port"
        )
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return CliError(f"{endpoint} did not answer in time: {details}")
    name = code.name if code is not None else "ERROR"
    return CliError(f"{endpoint}: {name}: {details}")


@contextlib.contextmanager
def calling(endpoint: str, service: str) -> Iterator[None]:
    """Turn any gRPC failure inside the block into a one-line CliError."""
    try:
        yield
    except grpc.RpcError as exc:
        raise rpc_error(exc, endpoint, service) from None


class Progress:
    """A one-line progress bar on stderr, drawn only when stderr is a
    terminal and not ``quiet``; otherwise silent (logs and CI stay clean)."""

    def __init__(self, total: int, label: str, *, quiet: bool = False, stream: IO[str] | None = None) -> None:
        self._stream = stream or sys.stderr
        self._on = not quiet and self._stream.isatty()
        self._total = max(total, 1)
        self._label = label
        self._shown = -1

    def update(self, done: int) -> None:
        if not self._on:
            return
        percent = min(100, done * 100 // self._total)
        if percent == self._shown:
            return
        self._shown = percent
        bar = "#" * (percent // 4)
        self._stream.write(f"\r{self._label} [{bar:<25}] {percent:3d}% {done / 1e6:,.1f} MB")
        self._stream.flush()

    def close(self) -> None:
        if self._on and self._shown >= 0:
            self._stream.write("\n")
            self._stream.flush()
