"""Free loopback ports and port ranges for processes started by tests and
benchmarks.

Ports are picked below the kernel's ephemeral range: a port from inside it
can be taken by any outgoing connection (a gRPC client's, say) between the
moment we find it free and the moment a child process binds it, and the
child then exits with "address in use" while the test waits on it.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

LOWEST = 10_000

# Ports already handed out by this process: a port found free is not bound
# until a child starts, so two calls in a row (a service's port and its
# metrics port, five nodes of a cluster) could otherwise pick the same one.
_handed: set[int] = set()
_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range (32768 when unknown)."""
    try:
        return int(_EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


def _ceiling(span: int) -> int:
    low = ephemeral_low()
    if low - span > LOWEST + 1_000:
        return low - span
    return 60_000 - span  # an unusual kernel setting: fall back to a high range


def free_base_port(span: int, rng: random.Random | None = None) -> int:
    """A base port such that base..base+span-1 are all free on 127.0.0.1
    and lie below the ephemeral range (bases are multiples of 10, the
    launcher's spacing between nodes)."""
    rng = rng or random.Random()
    top = _ceiling(span)
    for _ in range(200):
        base = rng.randrange(LOWEST, top, 10)
        if any(port in _handed for port in range(base, base + span)):
            continue
        socks: list[socket.socket] = []
        try:
            for port in range(base, base + span):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                socks.append(s)
                s.bind(("127.0.0.1", port))
            if len(_handed) > 20_000:
                _handed.clear()
            _handed.update(range(base, base + span))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port range found")


def free_port() -> int:
    """One free port on 127.0.0.1, below the ephemeral range."""
    return free_base_port(1)
