"""CPU time of other processes, for benchmarks that count what servers spend."""

from __future__ import annotations

import os
import pathlib


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (Linux /proc; 0 elsewhere or once it is gone)."""
    try:
        fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
