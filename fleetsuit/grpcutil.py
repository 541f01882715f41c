"""gRPC plumbing shared by every service: server options, health and
reflection, channel options tuned for fast reconnects, graceful shutdown.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Sequence

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

MAX_MESSAGE_BYTES = 8 * 1024 * 1024

SERVER_OPTIONS: list[tuple[str, int]] = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.so_reuseport", 0),
]

# gRPC's default reconnect backoff starts at 1 s and grows to 120 s: after a
# peer restarts that alone can add seconds to a failover (DESIGN: Consensus).
CHANNEL_OPTIONS: list[tuple[str, int]] = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.min_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 500),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.enable_retries", 0),
]


def insecure_channel(target: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)


def new_server() -> grpc.aio.Server:
    return grpc.aio.server(options=SERVER_OPTIONS)


def add_health_and_reflection(
    server: grpc.aio.Server, service_names: Sequence[str]
) -> health.aio.HealthServicer:
    """Register grpc.health.v1 (every service SERVING) and server reflection."""
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    reflection.enable_server_reflection(
        list(service_names) + [health.SERVICE_NAME, reflection.SERVICE_NAME], server
    )
    return servicer


async def mark_serving(servicer: health.aio.HealthServicer, service_names: Sequence[str]) -> None:
    for name in [*service_names, ""]:
        await servicer.set(name, health_pb2.HealthCheckResponse.SERVING)


def shutdown_event() -> asyncio.Event:
    """An event set by SIGINT or SIGTERM (call from inside the running loop)."""
    event = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, event.set)
    return event


async def graceful_stop(
    server: grpc.aio.Server,
    servicer: health.aio.HealthServicer | None,
    grace_s: float = 2.0,
) -> None:
    """Health NOT_SERVING first (so load balancers drain), then stop with grace."""
    if servicer is not None:
        await servicer.enter_graceful_shutdown()
    await server.stop(grace_s)
