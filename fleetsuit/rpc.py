"""What every gRPC server of fleetsuit shares (STYLE 10): building and
binding the server, the one interceptor that maps service errors to gRPC
statuses and counts every call, health and reflection, graceful stop.

A servicer method only raises its service's errors; the interceptor turns
them into ``abort(status, "CODE: message")`` with the code also in the
trailing metadata (``fleetsuit-error-code``), logs the refusal (rate
limited), and records ``fleetsuit_grpc_server_handled_total`` and
``fleetsuit_grpc_server_handling_seconds``. No servicer calls
``context.abort`` for a service error itself.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry, Counter, Histogram

from fleetsuit.errors import ServiceError
from fleetsuit.logs import RateLimitedLog

ERROR_CODE_KEY = "fleetsuit-error-code"
MAX_MESSAGE_BYTES = 8 * 1024 * 1024

# An error class -> its gRPC status; looked up along the error's MRO, so a
# service maps its base class once and refines where a subclass differs.
ErrorTable = Mapping[type[BaseException], grpc.StatusCode]

SERVER_OPTIONS: list[tuple[str, int]] = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.so_reuseport", 0),
]

log = logging.getLogger(__name__)


def status_of(exc: BaseException, table: ErrorTable) -> grpc.StatusCode:
    """The gRPC status of an error: the table's entry for the nearest class
    in its MRO; INTERNAL for anything the table does not know."""
    for cls in type(exc).__mro__:
        status = table.get(cls)
        if status is not None:
            return status
    return grpc.StatusCode.INTERNAL


def error_code(exc: BaseException) -> str:
    code = getattr(exc, "code", "INTERNAL")
    return str(getattr(code, "value", code))


class RpcMetrics:
    """Per-method request counts (by status) and latencies of one server."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.handled = Counter(
            "fleetsuit_grpc_server_handled_total",
            "RPCs completed on the server, by method and status code.",
            ["grpc_service", "grpc_method", "grpc_code"],
            registry=registry,
        )
        self.seconds = Histogram(
            "fleetsuit_grpc_server_handling_seconds",
            "Time from a call's start to its end on the server (a stream: its whole life).",
            ["grpc_service", "grpc_method"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 60),
            registry=registry,
        )
        # Per method: its histogram child and its counter child per status,
        # resolved once (a labels() lookup per call is measurable).
        self._children: dict[str, tuple[Any, dict[grpc.StatusCode, Any]]] = {}

    def observe(self, full_method: str, code: grpc.StatusCode, seconds: float) -> None:
        children = self._children.get(full_method)
        if children is None:
            service, _, method = full_method.lstrip("/").rpartition("/")
            children = self._children[full_method] = (self.seconds.labels(service, method), {})
        histogram, counters = children
        histogram.observe(seconds)
        counter = counters.get(code)
        if counter is None:
            service, _, method = full_method.lstrip("/").rpartition("/")
            counter = counters[code] = self.handled.labels(service, method, code.name)
        counter.inc()


class ServiceInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Maps service errors to gRPC statuses and records every call."""

    def __init__(self, errors: ErrorTable, metrics: RpcMetrics | None, service: str) -> None:
        self._errors = errors
        self._metrics = metrics
        self._refused = RateLimitedLog(log, interval_s=10.0)
        self._service = service
        self._cache: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method: str = handler_call_details.method
        cached = self._cache.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap(method, handler)
        self._cache[method] = (handler, wrapped)
        return wrapped

    async def _refuse(self, method: str, context: grpc.aio.ServicerContext, exc: ServiceError) -> None:
        status, code = status_of(exc, self._errors), error_code(exc)
        self._refused.log(
            (method, code), logging.INFO, "%s refused %s: %s: %s", self._service, method, code, exc
        )
        context.set_trailing_metadata(((ERROR_CODE_KEY, code), *exc.trailing_metadata()))
        await context.abort(status, f"{code}: {exc}")

    def _finish(self, method: str, context: grpc.aio.ServicerContext, started: float,
                exc: BaseException | None) -> None:
        if self._metrics is None:
            return
        if exc is None:
            code = grpc.StatusCode.OK
        elif isinstance(exc, ServiceError):
            code = status_of(exc, self._errors)
        elif isinstance(exc, asyncio.CancelledError):
            code = grpc.StatusCode.CANCELLED
        else:
            code = _context_code(context) or grpc.StatusCode.UNKNOWN
        self._metrics.observe(method, code, time.perf_counter() - started)

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        if handler.unary_unary is not None or handler.stream_unary is not None:
            inner = handler.unary_unary or handler.stream_unary

            async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                async with _Call(self, method, context):
                    return await inner(request, context)

            factory = (grpc.unary_unary_rpc_method_handler if handler.unary_unary is not None
                       else grpc.stream_unary_rpc_method_handler)
            return factory(unary, request_deserializer=handler.request_deserializer,
                           response_serializer=handler.response_serializer)

        inner_stream = handler.unary_stream or handler.stream_stream
        assert inner_stream is not None
        streaming = inspect.isasyncgenfunction(inner_stream) or inspect.isasyncgenfunction(
            getattr(inner_stream, "__func__", None)
        )

        async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            async with _Call(self, method, context):
                if streaming:
                    async for item in inner_stream(request, context):
                        yield item
                else:  # a coroutine that writes with context.write
                    await inner_stream(request, context)

        factory = (grpc.unary_stream_rpc_method_handler if handler.unary_stream is not None
                   else grpc.stream_stream_rpc_method_handler)
        return factory(stream, request_deserializer=handler.request_deserializer,
                       response_serializer=handler.response_serializer)


class _Call:
    """One call through the interceptor: timed and counted however it ends;
    a ServiceError that escapes the servicer becomes its status (the abort
    raises from here, in place of the error)."""

    __slots__ = ("_interceptor", "_method", "_context", "_started")

    def __init__(self, interceptor: ServiceInterceptor, method: str, context: grpc.aio.ServicerContext) -> None:
        self._interceptor = interceptor
        self._method = method
        self._context = context
        self._started = 0.0

    async def __aenter__(self) -> None:
        self._started = time.perf_counter()

    async def __aexit__(self, exc_type: object, exc: BaseException | None, tb: object) -> bool:
        # Counted before the refusal goes out: grpc's abort sends the status
        # before it raises, so a client could see the error before the count.
        self._interceptor._finish(self._method, self._context, self._started, exc)  # noqa: SLF001
        if isinstance(exc, ServiceError):
            await self._interceptor._refuse(self._method, self._context, exc)  # noqa: SLF001
        return False


def _context_code(context: grpc.aio.ServicerContext) -> grpc.StatusCode | None:
    try:
        code = context.code()
    except Exception:  # not every grpc version exposes it
        return None
    return code if isinstance(code, grpc.StatusCode) else None


def new_server(
    service: str, errors: ErrorTable, registry: CollectorRegistry | None
) -> tuple[grpc.aio.Server, health.aio.HealthServicer]:
    """A gRPC server with the fleetsuit interceptor, plus its health
    servicer (not yet registered: see :func:`add_health_and_reflection`)."""
    metrics = RpcMetrics(registry) if registry is not None else None
    server = grpc.aio.server(
        options=SERVER_OPTIONS, interceptors=[ServiceInterceptor(errors, metrics, service)]
    )
    return server, health.aio.HealthServicer()


def bind(server: grpc.aio.Server, address: str) -> int:
    """Listen on ``address`` (HOST:PORT; port 0 picks one); the port bound.
    A taken or malformed address raises OSError naming it."""
    try:
        port = server.add_insecure_port(address)
    except RuntimeError as exc:  # grpc's way of saying the address is taken
        raise OSError(f"cannot listen on {address}: {exc}") from None
    if port == 0:
        raise OSError(f"cannot listen on {address}: address in use or invalid")
    return int(port)


def add_health_and_reflection(
    server: grpc.aio.Server, health_servicer: health.aio.HealthServicer, service_names: Sequence[str]
) -> None:
    """Register grpc.health.v1 and server reflection for ``service_names``."""
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        list(service_names) + [health.SERVICE_NAME, reflection.SERVICE_NAME], server
    )


async def set_serving(
    servicer: health.aio.HealthServicer, service_names: Sequence[str], serving: bool = True
) -> None:
    """SERVING or NOT_SERVING for each name and for the server as a whole ("")."""
    status = (health_pb2.HealthCheckResponse.SERVING if serving
              else health_pb2.HealthCheckResponse.NOT_SERVING)
    for name in [*service_names, ""]:
        await servicer.set(name, status)


def shutdown_event() -> asyncio.Event:
    """An event set by SIGINT or SIGTERM (call from inside the running loop)."""
    event = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, event.set)
    return event


async def graceful_stop(
    server: grpc.aio.Server, servicer: health.aio.HealthServicer | None, grace_s: float = 2.0
) -> None:
    """Health NOT_SERVING first (so load balancers drain), then stop with grace."""
    if servicer is not None:
        await servicer.enter_graceful_shutdown()
    await server.stop(grace_s)
