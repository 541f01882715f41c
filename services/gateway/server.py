"""The gateway gRPC service: devices' Session streams and Info.

Owns the network edge and the process's life: the Session stream (Hello,
Challenge, Register, then heartbeats and reports in, commands out), Info,
health and reflection, the payload downloads over HTTP beside the gRPC
server, and ``serve`` (start, drain on SIGTERM, stop). What a session is
told is ``sessions``; who is admitted is ``devices``; the ledger is followed
by ``ledger_view``; reports go through ``reports``. A servicer method raises
the gateway's errors and ``fleetsuit.rpc``'s interceptor turns them into
statuses (``convert.ERRORS``): a refused registration ends the stream with
the refusal's status and code.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health as grpc_health
from prometheus_client import CollectorRegistry

from fleetsuit import __version__, rpc
from fleetsuit.cli import EXIT_CANNOT_START, EXIT_OK
from fleetsuit.logs import RateLimitedLog, log_start
from fleetsuit.metrics import new_registry, serve_metrics
from fleetsuit.v1 import gateway_pb2 as pb
from fleetsuit.v1 import gateway_pb2_grpc as pb_grpc

from . import convert, rollout
from .config import GatewayConfig
from .devices import Admission, EnrolmentCache, RequestLimiter, admit
from .directory import Directory
from .errors import (
    DevicePending,
    Draining,
    GatewayError,
    LedgerUnavailable,
    ProtocolError,
    describe,
)
from .ledger_view import LedgerView, PayloadKeeper
from .metrics import GatewayMetrics
from .model import (
    DeviceEventsWrite,
    Enrolment,
    EnrolmentRequestWrite,
    GatewayAddress,
    ReportEvent,
    versions_client_id_of,
)
from .ports import ClusterPort, LedgerPort, MemoryCluster, PayloadStore
from .reports import ReportSink
from .sessions import Session as DeviceSession
from .sessions import SessionHub

SERVICE = "gateway"
SERVICE_NAME = "fleetsuit.v1.Gateway"
MAX_DEVICE_ID = 256
MAX_VENDOR = 253  # characters of a vendor domain (a DNS name)

log = logging.getLogger(__name__)


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class GatewayDeps:
    """What the service is given rather than makes (constructor injection)."""

    ledger: LedgerPort
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    cluster: ClusterPort = field(default_factory=MemoryCluster)
    payloads: PayloadStore | None = None
    clock: Callable[[], int] = wall_clock_ms  # gateway time, unix ms
    monotonic: Callable[[], float] = time.monotonic
    rng: random.Random = field(default_factory=random.SystemRandom)  # nonces
    http_address: str = ""  # where devices download (default: the config's)
    # Set by build_server: the health servicer, and the runtime serve() starts.
    health: grpc_health.aio.HealthServicer | None = None
    runtime: GatewayRuntime | None = None


class GatewayRuntime:
    """The gateway's moving parts, wired: the ledger view, the directory,
    the session hub, the report sink, the enrolment cache."""

    def __init__(self, config: GatewayConfig, deps: GatewayDeps, me: GatewayAddress) -> None:
        self.config = config
        self.deps = deps
        self.me = me
        self.metrics = GatewayMetrics(deps.registry)
        self.enrolments = EnrolmentCache(
            deps.ledger,
            max_entries=config.device_cache_entries,
            ttl_s=config.device_cache_ttl_ms / 1000,
            clock=deps.monotonic,
        )
        self.requests = RequestLimiter()
        self.directory = Directory(
            deps.cluster, me, refresh_s=config.directory_refresh_ms / 1000,
            clock=deps.monotonic, metrics=self.metrics,
        )  # fmt: skip
        self.keeper = PayloadKeeper(deps.payloads) if deps.payloads is not None else None
        self.hub = SessionHub(
            me=me, directory=self.directory, metrics=self.metrics, clock=deps.clock,
            lead_ms=config.offer_lead_ms, heartbeat_interval_ms=config.heartbeat_interval_ms,
            missed_heartbeats=config.missed_heartbeats, enrolments=self.enrolments,
            payloads=self.keeper, monotonic=deps.monotonic,
        )  # fmt: skip
        self.directory.on_change = self.hub.directory_changed
        self.view = LedgerView(
            deps.ledger, self.hub, clock=deps.clock, rng=random.Random(deps.rng.random()),
            lead_ms=config.offer_lead_ms, metrics=self.metrics,
        )  # fmt: skip
        self.reports = ReportSink(deps.ledger, self.metrics, me.gateway_id)
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self.view.start()
        self.directory.start()
        self._tasks = [asyncio.create_task(self.hub.watch_silence()),
                       asyncio.create_task(self._guard_ledger())]  # fmt: skip

    def check_ledger(self) -> None:
        """Hand the devices to the other gateways once this one has been cut
        off from its node's ledger for ``ledger_lost_ms`` (it could tell them
        of no new release, nor commit their reports); take devices again
        once it follows the ledger. With no other gateway live it keeps
        serving them: a partitioned minority still serves what was
        committed."""
        hub, lost = self.hub, self.view.lost_since_ms
        others = any(g != self.me.gateway_id for g in self.directory.live)
        cut = lost is not None and others and self.deps.clock() - lost >= self.config.ledger_lost_ms
        if cut and not hub.cut_off and not hub.draining:
            assert lost is not None
            hub.cut_off = True
            told = hub.hand_over(f"gateway {self.me.gateway_id} cannot reach the ledger")
            self.metrics.ledger_cut_off.set(1)
            log.warning("gateway %s cut off from the ledger for %.1f s: %d devices sent to other gateways",
                        self.me.gateway_id, (self.deps.clock() - lost) / 1000, told)  # fmt: skip
        elif not cut and hub.cut_off:
            hub.cut_off = False
            self.metrics.ledger_cut_off.set(0)
            log.info("gateway %s takes devices again (%s)", self.me.gateway_id,
                     "it follows the ledger" if lost is None else "no other gateway is live")  # fmt: skip

    async def _guard_ledger(self) -> None:
        while True:
            await asyncio.sleep(self.config.heartbeat_interval_ms / 1000)
            self.check_ledger()

    def drain(self) -> int:
        return self.hub.drain()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        await self.view.stop()
        await self.directory.stop()
        if self.keeper is not None:
            await self.keeper.stop()


class GatewayServicer(pb_grpc.GatewayServicer):
    def __init__(self, runtime: GatewayRuntime) -> None:
        self.rt = runtime
        self.config = runtime.config
        self.metrics = runtime.metrics
        self._register_timeout_s = self.config.register_timeout_ms / 1000
        self._refused = RateLimitedLog(log, interval_s=10.0)
        self._background: set[asyncio.Task[None]] = set()  # versions being recorded

    async def Session(  # noqa: N802
        self, request_iterator: AsyncIterator[pb.DeviceMessage], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.GatewayMessage]:
        """Hello -> Challenge -> Register -> Welcome, then commands out and
        heartbeats and reports in until either side ends the stream."""
        rt = self.rt
        requests = aiter(request_iterator)
        hello = await self._next(requests, "Hello")
        if hello.WhichOneof("kind") != "hello":
            raise ProtocolError("the first message of a session must be Hello")
        device_id = hello.hello.device_id
        if not device_id or len(device_id) > MAX_DEVICE_ID:
            raise ProtocolError(f"a device id is 1..{MAX_DEVICE_ID} characters")
        if rt.hub.draining:
            raise Draining(f"gateway {rt.me.gateway_id} is stopping")
        if rt.hub.cut_off:
            raise LedgerUnavailable(f"gateway {rt.me.gateway_id} cannot reach the ledger: go to another")
        nonce = rt.deps.rng.randbytes(32)
        yield convert.challenge(nonce, rt.me.gateway_id, rt.deps.clock())
        message = await self._next(requests, "Register")
        if message.WhichOneof("kind") != "register":
            raise ProtocolError("the answer to a Challenge must be Register")
        session = await self._register(device_id, nonce, message.register)
        reader = asyncio.create_task(self._read(requests, session))
        try:
            while True:
                item = await session.outbox.get()
                if item is None:
                    return
                if isinstance(item, GatewayError):
                    raise item
                yield item
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            rt.hub.remove(session)

    async def _next(self, requests: AsyncIterator[pb.DeviceMessage], what: str) -> pb.DeviceMessage:
        try:
            return await asyncio.wait_for(anext(requests), self._register_timeout_s)
        except TimeoutError:
            raise ProtocolError(
                f"no {what} within {self.config.register_timeout_ms} ms"
            ) from None
        except StopAsyncIteration:
            raise ProtocolError(f"the device ended the stream before {what}") from None

    async def _register(self, device_id: str, nonce: bytes, register: pb.Register) -> DeviceSession:
        rt = self.rt
        try:
            if len(register.vendor_domain) > MAX_VENDOR:
                raise ProtocolError(f"a vendor domain is at most {MAX_VENDOR} characters")
            if register.device_id and register.device_id != device_id:
                raise ProtocolError("Register names another device than Hello")
            installed = _installed(register.installed)
            enrolment = await rt.enrolments.get(device_id)
            admission = admit(
                enrolment, gateway_id=rt.me.gateway_id, device_id=device_id, nonce=nonce,
                signature=register.signature, public_key_pem=register.public_key_pem,
            )  # fmt: skip
            if admission is Admission.REQUEST:
                await self._request_enrolment(device_id, register)
                raise DevicePending(
                    f"device {device_id} is recorded as pending: an operator must accept it"
                )
        except GatewayError as exc:
            self.metrics.registrations.labels(str(exc.code)).inc()
            raise
        assert enrolment is not None  # admitted
        self.metrics.registrations.labels("accepted").inc()
        previous = register.previous_gateway_id
        if previous and previous != rt.me.gateway_id:
            self.metrics.failovers.inc()
        session = DeviceSession(
            device_id, enrolment.device_class or register.device_class, enrolment.group,
            installed, previous_gateway_id=previous, vendor_domain=register.vendor_domain,
            now_s=rt.deps.monotonic(),
        )  # fmt: skip
        session.send(convert.welcome(
            rt.me.gateway_id, self.config.heartbeat_interval_ms,
            rt.directory.ranked(device_id), rt.deps.clock(),
        ))  # fmt: skip
        rt.hub.add(session)
        if versions_differ(enrolment, installed):
            task = asyncio.create_task(self._record_versions(device_id, installed))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        return session

    async def _record_versions(self, device_id: str, installed: tuple[rollout.Installed, ...]) -> None:
        """The ledger learns what the device really runs, when that is not
        what it recorded (a device that fell back or was flashed while away,
        or one that never reported): ``version`` events, one per component."""
        rt = self.rt
        now = rt.deps.clock()
        write = DeviceEventsWrite(
            device_id, seq=now * 1000 + rt.deps.rng.randrange(1000), gateway_id=rt.me.gateway_id,
            events=tuple(
                ReportEvent("version", i.component, i.release_id or rollout.FACTORY, i.sequence_number, now)
                for i in installed
            ),
            client_id=versions_client_id_of(device_id),
        )  # fmt: skip
        try:
            await rt.deps.ledger.submit(write)
        except Exception as exc:  # the next registration tries again
            self._refused.log(
                "versions", logging.WARNING, "cannot record the versions of device %s: %s", device_id,
                describe(exc),
            )  # fmt: skip

    async def _request_enrolment(self, device_id: str, register: pb.Register) -> None:
        """Record the unknown device as pending, once per device in a while."""
        rt = self.rt
        if not rt.requests.allow(device_id, rt.deps.monotonic()):
            return
        write = EnrolmentRequestWrite(
            device_id, register.device_class, bytes(register.public_key_pem), rt.me.gateway_id
        )
        try:
            await rt.deps.ledger.submit(write)
        except Exception as exc:  # the device is told pending either way; it retries
            rt.requests.forget(device_id)
            self._refused.log(
                "request", logging.WARNING, "cannot record device %s as pending: %s", device_id, exc
            )
        else:
            log.info("device %s registered unknown: recorded as pending", device_id)

    async def _read(self, requests: AsyncIterator[pb.DeviceMessage], session: DeviceSession) -> None:
        """Heartbeats and reports in, until the device ends the stream."""
        reports: set[asyncio.Task[None]] = set()
        try:
            async for message in requests:
                kind = message.WhichOneof("kind")
                if kind == "heartbeat":
                    self.rt.hub.heartbeat(
                        session, _installed(message.heartbeat.installed),
                        message.heartbeat.time_unix_ms,
                    )  # fmt: skip
                elif kind == "report":
                    self.rt.hub.seen(session)
                    task = asyncio.create_task(self._report(session, message.report))
                    reports.add(task)
                    task.add_done_callback(reports.discard)
                else:
                    raise ProtocolError(f"{kind} is not expected once registered")
            session.close()
        except GatewayError as exc:
            session.close(exc)
        except rollout.RolloutError as exc:
            session.close(ProtocolError(str(exc)))
        except grpc.aio.AioRpcError:
            session.close()
        finally:
            for task in reports:
                task.cancel()

    async def _report(self, session: DeviceSession, report: pb.Report) -> None:
        if report.seq == 0 or not report.events:
            session.send(convert.report_ack(
                report.seq, "INVALID_REPORT", "a report needs a seq above 0 and events"))
            return
        answer = await self.rt.reports.submit(
            session.device_id, report.seq, convert.events_from_pb(report)
        )
        if answer is not None:
            session.send(convert.report_ack(answer.seq, answer.error_code, answer.error_message))

    async def Info(  # noqa: N802
        self, request: pb.GatewayInfoRequest, context: grpc.aio.ServicerContext
    ) -> pb.GatewayInfo:
        rt = self.rt
        if rt.hub.draining:  # so the other gateways stop sending devices here
            raise Draining(f"gateway {rt.me.gateway_id} is stopping")
        stats = rt.deps.payloads.stats() if rt.deps.payloads is not None else None
        return convert.info_to_pb(
            rt.me, self.config.node_id, len(rt.hub.sessions), rt.directory.live.values(),
            rt.hub.devices_by_version(), stats.bytes if stats else 0,
            stats.entries if stats else 0, rt.view.height,
        )  # fmt: skip


def versions_differ(enrolment: Enrolment, installed: tuple[rollout.Installed, ...]) -> bool:
    """Whether the device runs, in a component it reports, something else
    than the ledger recorded (the factory image may be "" or "factory")."""

    def norm(release_id: str) -> str:
        return release_id or rollout.FACTORY

    recorded = {c: (norm(r), s) for c, r, s in enrolment.installed}
    return any(recorded.get(i.component) != (norm(i.release_id), i.sequence_number) for i in installed)


def _installed(items: object) -> tuple[rollout.Installed, ...]:
    installed = convert.installed_from_pb(items)  # type: ignore[arg-type]
    components = [i.component for i in installed]
    if len(set(components)) != len(components):
        raise ProtocolError("a component is reported twice")
    return installed


def _advertised(address: str, port: int) -> str:
    host = address.rpartition(":")[0]
    return f"{host}:{port}"


def build_server(config: GatewayConfig, deps: GatewayDeps) -> tuple[grpc.aio.Server, int]:
    """A server bound to ``config.listen`` (not started) and its port; the
    health servicer and the runtime (not started) are left in ``deps``.
    OSError if the address cannot be bound."""
    config.validate()
    server, health_servicer = rpc.new_server(SERVICE, convert.ERRORS, deps.registry)
    port = rpc.bind(server, config.listen)
    me = GatewayAddress(
        config.id,
        config.advertise or _advertised(config.listen, port),
        deps.http_address or config.advertise_http or config.http_listen,
        started_unix_ms=deps.clock(),
    )
    runtime = GatewayRuntime(config, deps, me)
    pb_grpc.add_GatewayServicer_to_server(GatewayServicer(runtime), server)
    rpc.add_health_and_reflection(server, health_servicer, [SERVICE_NAME])
    deps.health = health_servicer
    deps.runtime = runtime
    return server, port


async def serve(config: GatewayConfig, *, shutdown: asyncio.Event | None = None) -> int:
    """Run until ``shutdown`` is set (default: SIGINT or SIGTERM); the exit
    code: 0 after a graceful stop, 3 when the service cannot start (an
    address that cannot be bound, a cache directory that cannot be made).
    The consensus node and the dht need not be up: the gateway follows the
    ledger once it answers, and serves registrations it can check."""
    from .cache import PayloadCache
    from .dht_source import DhtBlobSource
    from .http import build_http_app, start_http
    from .ports import GrpcCluster, GrpcLedger

    registry = new_registry(SERVICE, config.node_id)
    ledger = GrpcLedger(
        config.consensus_endpoint, client_id=f"gateway/{config.id}",
        submit_timeout_ms=config.report_timeout_ms,
    )  # fmt: skip
    cluster = GrpcCluster(config.consensus_endpoint, timeout_s=config.probe_timeout_ms / 1000)
    source = DhtBlobSource(config.dht_endpoint)
    server: grpc.aio.Server | None = None
    runner = None
    cache: PayloadCache | None = None
    try:
        cache = PayloadCache(Path(config.cache_dir), config.cache_max_bytes, source, registry)
        deps = GatewayDeps(ledger=ledger, registry=registry, cluster=cluster, payloads=cache)

        def may_fetch(cid: str) -> bool:
            return deps.runtime is not None and deps.runtime.view.is_payload(cid)

        http_host, _, http_port = config.http_listen.rpartition(":")
        app = build_http_app(cache, may_fetch=may_fetch, registry=registry)
        runner, bound_http = await start_http(app, http_host, int(http_port))
        deps.http_address = config.advertise_http or f"{http_host}:{bound_http}"
        server, port = build_server(config, deps)
        addresses = {"grpc": _advertised(config.listen, port), "http": f"{http_host}:{bound_http}"}
        if config.metrics_enabled:
            metrics_port = serve_metrics(registry, config.metrics_host, config.metrics_port)
            addresses["metrics"] = f"{config.metrics_host}:{metrics_port}"
    except (OSError, ValueError) as exc:
        log.error("gateway cannot start: %s", exc)
        if server is not None:
            await server.stop(None)  # bound, never started: free the port
        if runner is not None:
            await runner.cleanup()
        await _close(cache, source, ledger, cluster)
        return EXIT_CANNOT_START
    log_start(
        log, service=SERVICE, version=__version__, cluster_id=config.cluster_id,
        node_id=config.node_id, data_dir=config.data_dir, addresses=addresses,
    )  # fmt: skip
    assert deps.health is not None and deps.runtime is not None  # set by build_server
    runtime = deps.runtime
    stop = shutdown if shutdown is not None else rpc.shutdown_event()
    await server.start()
    runtime.start()
    await rpc.set_serving(deps.health, [SERVICE_NAME])
    log.info(
        "gateway %s serving devices on port %d (downloads at %s, ledger at %s)",
        runtime.me.gateway_id, port, deps.http_address, config.consensus_endpoint,
    )  # fmt: skip
    await stop.wait()
    told = runtime.drain()
    log.info("gateway %s stopping: %d sessions sent elsewhere (grace %.1f s)",
             runtime.me.gateway_id, told, config.grace_s)  # fmt: skip
    await rpc.graceful_stop(server, deps.health, config.grace_s)
    await runtime.stop()
    await runner.cleanup()
    await _close(cache, source, ledger, cluster)
    return EXIT_OK


async def _close(cache: object, *closables: object) -> None:
    for thing in (cache, *closables):
        close = getattr(thing, "close", None)
        if close is not None:
            with contextlib.suppress(Exception):
                await close()
