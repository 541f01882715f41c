"""The shared test helpers do what they promise: free ports below the
ephemeral range, waits that end at their deadline naming what they waited
for, and processes stopped by pid even when they ignore SIGTERM."""

from __future__ import annotations

import asyncio
import random
import socket
import subprocess
import sys
import time

import pytest

from .ports import ephemeral_low, free_base_port, free_port
from .procs import kill, pid_alive, stop_pid, stop_processes
from .wait import ready, wait_for, wait_until

IGNORES_SIGTERM = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(60)"


def test_a_free_base_port_range_is_free_and_below_the_ephemeral_range() -> None:
    base = free_base_port(40, random.Random(3))
    limit = ephemeral_low() if ephemeral_low() - 40 > 11_000 else 60_000
    assert base % 10 == 0 and base + 40 <= limit
    for port in range(base, base + 40):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", port))


def test_free_port_skips_a_taken_one() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", free_port()))
        taken.listen(1)
        assert all(free_port() != taken.getsockname()[1] for _ in range(20))


def test_wait_until_returns_the_first_true_value() -> None:
    values = iter([0, None, "", "done"])
    assert wait_until(lambda: next(values), 5, "a value", interval_s=0.001) == "done"


def test_wait_until_fails_at_its_deadline_naming_what_and_the_last_error() -> None:
    def failing() -> bool:
        raise ConnectionError("refused")

    started = time.monotonic()
    with pytest.raises(AssertionError, match=r"waiting for the port \(last error: refused\)"):
        wait_until(failing, 0.2, "the port")
    assert 0.2 <= time.monotonic() - started < 2


def test_wait_for_awaits_a_value_other_than_none() -> None:
    answers = iter([None, False])

    async def probe() -> bool | None:
        return next(answers)

    assert asyncio.run(wait_for(probe, 5, "an answer", interval_s=0.001)) is False
    assert asyncio.run(wait_for(lambda: ready(True), 5, "ready")) is True
    with pytest.raises(AssertionError, match="timed out after 0.1s waiting for never"):
        asyncio.run(wait_for(lambda: ready(False), 0.1, "never"))


def _ignoring_sigterm() -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", IGNORES_SIGTERM], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    return proc


def test_stop_processes_kills_what_ignores_sigterm_after_the_grace() -> None:
    stubborn = _ignoring_sigterm()
    polite = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        stop_processes([stubborn, polite], grace_s=0.5)
        assert stubborn.returncode == -9 and polite.returncode == -15
    finally:
        for proc in (stubborn, polite):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert stubborn.stdout is not None
        stubborn.stdout.close()


def test_stop_pid_stops_a_bare_pid_and_an_exited_child_counts_as_gone() -> None:
    stubborn = _ignoring_sigterm()
    try:
        stop_pid(stubborn.pid, grace_s=0.3)
        # Not reaped yet: a zombie is not alive.
        assert not pid_alive(stubborn.pid)
    finally:
        stubborn.kill()
        stubborn.wait()
        assert stubborn.stdout is not None
        stubborn.stdout.close()
    assert not pid_alive(stubborn.pid)


def test_kill_waits_for_the_exit() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    kill(proc)
    assert proc.returncode == -9
