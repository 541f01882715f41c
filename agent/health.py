"""The health-check hook a device runs after switching to a new release: a
command, run with the slot's path and the release in its environment, that
exits 0 when the release is healthy. A command that does not finish within
its timeout is killed and counts as unhealthy. (The simulator's devices use
a function instead: ``HealthCheck`` is the port.)"""

from __future__ import annotations

import asyncio
import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

MAX_OUTPUT = 2_000  # characters of the command's output kept for the report


@dataclass(frozen=True, slots=True)
class HealthRequest:
    component: str
    slot: str
    release_id: str
    path: Path | None  # the slot's image (None: the device installs nothing)


@dataclass(frozen=True, slots=True)
class HealthResult:
    healthy: bool
    detail: str = ""


class HealthCheck(Protocol):
    async def __call__(self, request: HealthRequest) -> HealthResult: ...


async def always_healthy(request: HealthRequest) -> HealthResult:
    return HealthResult(True)


class CommandHealthCheck:
    """Runs ``command`` (split like a shell would, no shell) with
    FLEETSUIT_COMPONENT, FLEETSUIT_SLOT, FLEETSUIT_SLOT_PATH and
    FLEETSUIT_RELEASE_ID in its environment."""

    def __init__(self, command: str, timeout_ms: int) -> None:
        self._argv = shlex.split(command)
        if not self._argv:
            raise ValueError("the health-check command is empty")
        self._timeout_s = timeout_ms / 1000

    async def __call__(self, request: HealthRequest) -> HealthResult:
        env = dict(os.environ, FLEETSUIT_COMPONENT=request.component, FLEETSUIT_SLOT=request.slot,
                   FLEETSUIT_SLOT_PATH=str(request.path or ""), FLEETSUIT_RELEASE_ID=request.release_id)
        try:
            proc = await asyncio.create_subprocess_exec(
                *self._argv, env=env, stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            )
        except OSError as exc:
            return HealthResult(False, f"cannot run the health check: {exc}")
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), self._timeout_s)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            return HealthResult(False, f"the health check did not finish in {self._timeout_s:g} s")
        text = out.decode(errors="replace")[-MAX_OUTPUT:]
        if proc.returncode == 0:
            return HealthResult(True, text)
        return HealthResult(False, f"exit status {proc.returncode}: {text}")
