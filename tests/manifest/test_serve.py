"""``serve(config, shutdown=...)`` in this process: the start line, health
SERVING once ready, a graceful stop when the event is set, and exit code 3
(with one log line naming the cause) when it cannot start."""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import time

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fleetsuit import grpcutil
from services.manifest.config import ManifestConfig
from services.manifest.server import SERVICE_NAME, serve

DEADLINE_S = 30.0


async def _logged(caplog: pytest.LogCaptureFixture, pattern: str) -> re.Match[str]:
    """The first log message matching ``pattern``, waiting up to the deadline."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        for record in caplog.records:
            match = re.search(pattern, record.getMessage())
            if match is not None:
                return match
        assert time.monotonic() < deadline, f"no log line like {pattern!r}"
        await asyncio.sleep(0.01)  # poll interval, not a wait for an event


@pytest.mark.asyncio
async def test_serve_reports_serving_and_stops_when_told(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    config = ManifestConfig(listen="127.0.0.1:0", metrics_port=-1, node_id="n7", cluster_id="c7")
    shutdown = asyncio.Event()
    task = asyncio.create_task(serve(config, shutdown=shutdown))
    try:
        start = await _logged(
            caplog,
            r"starting manifest version=\S+ cluster=c7 node=n7 "
            r"data=- grpc=127\.0\.0\.1:(\d+)$",
        )
        port = int(start[1])
        await _logged(caplog, rf"manifest n7 listening on port {port}\b")
        async with grpcutil.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for name in (SERVICE_NAME, ""):
                reply = await health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING, name
        shutdown.set()
        assert await asyncio.wait_for(task, DEADLINE_S) == 0
    finally:
        if not task.done():
            shutdown.set()
            await asyncio.wait_for(task, DEADLINE_S)
    starts = [r for r in caplog.records if "starting manifest" in r.getMessage()]
    assert len(starts) == 1 and caplog.records.index(starts[0]) == 0  # the first line


@pytest.mark.asyncio
async def test_serve_cannot_start_on_a_taken_port(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        config = ManifestConfig(listen=address, metrics_port=-1)
        code = await asyncio.wait_for(serve(config, shutdown=asyncio.Event()), DEADLINE_S)
    assert code == 3
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and address in errors[0].getMessage()
    assert not any("starting manifest" in r.getMessage() for r in caplog.records)
