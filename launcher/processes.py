"""Whether a recorded process still runs what it was started to run (a pid
reused by an unrelated process does not count)."""

from __future__ import annotations

import os
from pathlib import Path


def running(pid: int, command: list[str] | None) -> bool:
    """True when ``pid`` runs and, where /proc tells, runs ``command`` (a pid
    reused by an unrelated process does not count; an exited child not yet
    reaped has no command line and does not count either)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    if command is None:
        return True
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return False
    except OSError:
        return True  # no /proc here: kill(0) is all we know
    if not raw:
        # No command line: an exited child not yet reaped, or one caught
        # while it execs (the kernel shows none for a moment).
        return not _zombie(pid)
    return raw.split(b"\0")[:-1] == [os.fsencode(part) for part in command]


def _zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # gone meanwhile
    return stat.rpartition(")")[2].split()[:1] == ["Z"]
