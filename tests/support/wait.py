"""Waiting on a condition with a deadline, never a fixed sleep: poll, and
fail naming what was awaited (and the last error the probe raised)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

POLL_S = 0.05


def wait_until(
    cond: Callable[[], T | None], timeout_s: float, what: str, interval_s: float = POLL_S
) -> T:
    """Call ``cond`` until it returns a true value and return that value;
    raise AssertionError after ``timeout_s``. An exception from ``cond``
    counts as "not yet" (a process may still be starting) and is named in
    the failure."""
    deadline = time.monotonic() + timeout_s
    last_error: BaseException | None = None
    while True:
        try:
            value = cond()
            if value:
                return value
        except Exception as exc:
            last_error = exc
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"timed out after {timeout_s}s waiting for {what} (last error: {last_error})"
            )
        time.sleep(interval_s)  # a poll interval, not a wait for an event


async def wait_for(
    probe: Callable[[], Awaitable[T | None]], timeout_s: float, what: str, interval_s: float = POLL_S
) -> T:
    """Await ``probe`` until it returns something other than None and return
    it; raise AssertionError after ``timeout_s``. An exception from the probe
    counts as "not yet" and is named in the failure."""
    deadline = time.monotonic() + timeout_s
    last_error: BaseException | None = None
    while True:
        try:
            value = await probe()
            if value is not None:
                return value
        except Exception as exc:  # the condition may throw while nodes come up
            last_error = exc
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"timed out after {timeout_s}s waiting for {what} (last error: {last_error})"
            )
        await asyncio.sleep(interval_s)


async def ready(cond: bool) -> bool | None:
    """A probe for :func:`wait_for` from a plain condition."""
    return True if cond else None
