"""What ``fleetsuit cluster up`` checks before it starts any child, so that
a bad start fails at once with one line instead of children dying one by
one: the plan is sane (at least one node, every port below 65536), every
trust anchor given is a readable P-256 or Ed25519 public key, the data
directory is not in use by a live cluster (its lock, or a ``cluster.json``
whose processes still run), the cluster id is the one recorded there, and
every port the cluster will bind is free.

Each check raises :class:`fleetsuit.cli.CliError` with exit code 2 (usage)
or 3 (cannot start); none writes anything but the lock file.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from fleetsuit.cli import EXIT_CANNOT_START, EXIT_USAGE, CliError

from .layout import ANCHORS_FILE, CLUSTER_FILE, HIGHEST_OFFSET, NODE_PORT_SPAN, SUPERVISOR_COMMAND
from .processes import running

LOCK_FILE = "cluster.lock"
HOST = "127.0.0.1"
HIGHEST_PORT = 65_535


def check_trust_anchors(specs: Sequence[str]) -> None:
    """Every ``--trust-anchor PATH[:components=..][:classes=..]`` parses and
    its file is a usable key, each key given once: a usage error naming the
    file otherwise (the consensus processes would refuse to start)."""
    from services.consensus.anchors import AnchorError, load_anchors, parse_anchor_spec

    try:
        load_anchors([parse_anchor_spec(text) for text in specs])
    except AnchorError as exc:
        raise CliError(f"--trust-anchor: {exc}", EXIT_USAGE) from None


def check_plan(count: int, base_port: int) -> None:
    """At least one node, and every port of every node within 1..65535."""
    if count < 1:
        raise CliError(f"--nodes must be at least 1 (got {count})", EXIT_USAGE)
    top = base_port + NODE_PORT_SPAN * (count - 1) + HIGHEST_OFFSET
    if base_port < 1 or top > HIGHEST_PORT:
        highest_base = HIGHEST_PORT - NODE_PORT_SPAN * (count - 1) - HIGHEST_OFFSET
        raise CliError(
            f"--base-port {base_port} does not fit {count} node(s): they use ports "
            f"{base_port}..{top}; choose a base port from 1 to {highest_base}",
            EXIT_USAGE,
        )


class DataDirLock:
    """An exclusive lock on ``DIR/cluster.lock`` held while ``cluster up``
    runs (released by the kernel if it dies), holding its pid."""

    def __init__(self, data_dir: Path) -> None:
        path = data_dir / LOCK_FILE
        # "a+": a refused second launcher must not truncate the holder's pid.
        self._file: IO[str] = open(path, "a+", encoding="utf-8")  # noqa: SIM115 (held until close)
        try:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            self._file.seek(0)
            holder = self._file.read().strip() or "unknown"
            self._file.close()
            if exc.errno in (errno.EWOULDBLOCK, errno.EACCES):
                raise CliError(
                    f"data directory {data_dir} is in use by another `fleetsuit cluster up` "
                    f"(pid {holder}); stop it first",
                    EXIT_CANNOT_START,
                ) from None
            raise CliError(f"cannot lock {path}: {exc.strerror}", EXIT_CANNOT_START) from None
        self._file.seek(0)
        self._file.truncate()
        self._file.write(f"{os.getpid()}\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def read_description(data_dir: Path) -> dict[str, Any] | None:
    """``DIR/cluster.json`` as a dict, or None when absent or unreadable."""
    try:
        doc = json.loads((data_dir / CLUSTER_FILE).read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def live_processes(data_dir: Path) -> list[str]:
    """The processes of ``DIR/cluster.json`` still running ("consensus of n1
    (pid 1234)"), node supervisors included (one may be waiting to restart a
    child); empty when there is no such file or all have exited."""
    doc = read_description(data_dir)
    if doc is None:
        return []
    live = []
    for node in doc.get("nodes", []):
        supervisor, config = node.get("supervisor_pid"), node.get("config")
        if isinstance(supervisor, int) and isinstance(config, str) and \
                running(supervisor, [*SUPERVISOR_COMMAND, config]):
            live.append(f"the node supervisor of {node.get('id', '?')} (pid {supervisor})")
        commands = node.get("commands", {})
        for service, pid in node.get("pids", {}).items():
            if isinstance(pid, int) and running(pid, commands.get(service)):
                live.append(f"{service} of {node.get('id', '?')} (pid {pid})")
    return live


def check_not_in_use(data_dir: Path) -> None:
    live = live_processes(data_dir)
    if live:
        more = f" and {len(live) - 3} more" if len(live) > 3 else ""
        raise CliError(
            f"data directory {data_dir} is in use by a running cluster: "
            f"{', '.join(live[:3])}{more}; stop it first",
            EXIT_CANNOT_START,
        )


def recorded_cluster_id(data_dir: Path) -> str | None:
    """The cluster id written at bootstrap (anchors.json, else cluster.json)."""
    for name in (ANCHORS_FILE, CLUSTER_FILE):
        with contextlib.suppress(OSError, ValueError, AttributeError):
            value = json.loads((data_dir / name).read_text()).get("cluster_id")
            if isinstance(value, str) and value:
                return value
    return None


def resolve_cluster_id(data_dir: Path, requested: str | None) -> str | None:
    """The id to start with: the recorded one (a restart), the requested one
    on a first start, or None (a new one is generated). Asking for another
    id than the recorded one is refused: the nodes' stored identity would
    not match."""
    recorded = recorded_cluster_id(data_dir)
    if requested and recorded and requested != recorded:
        raise CliError(
            f"data directory {data_dir} holds cluster {recorded!r}, not {requested!r}",
            EXIT_CANNOT_START,
        )
    return recorded or requested or None


def port_problem(port: int, host: str = HOST) -> str | None:
    """None when ``host:port`` can be bound for listening, else why not.
    SO_REUSEADDR as the servers set it: a port held only by connections in
    TIME_WAIT (a cluster just stopped) is free for them, a listener is not."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
            s.listen(1)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return "is taken"
            return f"cannot be bound ({exc.strerror})"
    return None


def check_ports_free(ports: list[tuple[int, str]], host: str = HOST) -> None:
    """Fail on the first port that is taken, naming it and its use."""
    for port, use in ports:
        problem = port_problem(port, host)
        if problem is not None:
            raise CliError(f"{host}:{port} {problem} (needed by {use})", EXIT_CANNOT_START)
