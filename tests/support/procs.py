"""Stopping processes by pid: SIGTERM, then SIGKILL once a grace period
has passed, and waiting (bounded) until each one is gone. Never by name."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TypeAlias

# A child started by the test (text or bytes pipes), or a bare pid.
Proc: TypeAlias = "subprocess.Popen[bytes] | subprocess.Popen[str] | int"

STOP_GRACE_S = 10.0
GONE_DEADLINE_S = 10.0


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie, exited but not yet reaped, is gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc: trust kill(0)
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _wait_gone(proc: Proc, timeout_s: float) -> bool:
    """Wait until the process is gone; reap it when it is our child."""
    if isinstance(proc, subprocess.Popen):
        try:
            proc.wait(timeout=max(0.0, timeout_s))
            return True
        except subprocess.TimeoutExpired:
            return False
    deadline = time.monotonic() + timeout_s
    while pid_alive(proc):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)  # a poll interval: a pid that is not our child cannot be waited on
    return True


def stop_processes(
    procs: Iterable[Proc],
    grace_s: float = STOP_GRACE_S,
) -> None:
    """SIGTERM every process (a Popen or a bare pid), wait up to ``grace_s``
    for them all, SIGKILL those still running, and wait until they are gone."""
    items = list(procs)
    running = [p for p in items if _running(p)]
    for p in running:
        _signal(_pid(p), signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    stubborn = [p for p in running if not _wait_gone(p, deadline - time.monotonic())]
    for p in stubborn:
        _signal(_pid(p), signal.SIGKILL)
    for p in stubborn:
        if not _wait_gone(p, GONE_DEADLINE_S):
            raise AssertionError(f"process {_pid(p)} survived SIGKILL for {GONE_DEADLINE_S}s")


def stop_pid(pid: int, grace_s: float = STOP_GRACE_S) -> None:
    stop_processes([pid], grace_s)


def kill(proc: Proc, sig: int = signal.SIGKILL, timeout_s: float = 20.0) -> None:
    """Send ``sig`` to one process and wait (bounded) for it to exit."""
    _signal(_pid(proc), sig)
    if not _wait_gone(proc, timeout_s):
        raise AssertionError(f"process {_pid(proc)} still running {timeout_s}s after signal {sig}")


def _pid(p: Proc) -> int:
    return p if isinstance(p, int) else p.pid


def _running(p: Proc) -> bool:
    return pid_alive(p) if isinstance(p, int) else p.poll() is None
