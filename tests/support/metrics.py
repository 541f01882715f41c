"""Asking a service's Prometheus endpoint from a test."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable

from .wait import wait_until


def serves_metrics(url: str, timeout_s: float = 5.0) -> bool:
    """True when ``url`` answers 200 with a fleetsuit registry
    (``fleetsuit_build_info``); False when it refuses or fails."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return resp.status == 200 and b"fleetsuit_build_info" in resp.read()
    except (urllib.error.URLError, OSError):
        return False


async def answers_elsewhere(serve: Callable[[asyncio.Event], Awaitable[int]], port: int) -> bool:
    """Run a service (``serve(shutdown)``, its ``/metrics`` on ``port``)
    until its metrics answer on 127.0.0.1; whether they also answer on
    127.0.0.2, another address of the host (a scraper's view of a pod,
    which only a server bound to every interface answers on). The service
    is stopped and must exit 0."""
    stop = asyncio.Event()
    task = asyncio.ensure_future(serve(stop))
    try:
        local = f"http://127.0.0.1:{port}/metrics"
        await asyncio.to_thread(wait_until, lambda: serves_metrics(local), 30, "/metrics on 127.0.0.1")
        return await asyncio.to_thread(serves_metrics, f"http://127.0.0.2:{port}/metrics")
    finally:
        stop.set()
        assert await asyncio.wait_for(task, 30) == 0
