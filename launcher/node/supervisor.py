"""The node supervisor: runs the four services of one node as child
processes, restarts a child that exits (after a delay that doubles at each
exit in a row, up to a cap, and starts again from the first delay once a
child has run long enough; each restart counted and logged), serves
``/healthz`` and ``/metrics`` over HTTP, keeps ``DATA/node.json`` up to date,
and on SIGTERM or SIGINT stops the children in order: the gateway first
(it hands its devices to the other gateways), then consensus (a leader hands
leadership to another voter before it stops: ``services/consensus/server.py``),
then dht and manifest; a child still running ``stop_grace_ms`` after its
SIGTERM is killed.

``/healthz`` answers 200 only when all four children answer grpc.health.v1
``Check`` SERVING, else 503; its JSON body names each service's state.
``run_service`` runs one service alone (a Kubernetes container): no restart
(Kubernetes restarts the container), signals forwarded, the child's exit
code returned.

What this module does not do: read or check the configuration
(``config.py``), or choose ports (``[node] base_port``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
from aiohttp import web
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    generate_latest,
)

from fleetsuit.cli import EXIT_CANNOT_START, CliError
from fleetsuit.metrics import new_registry

from ..processes import running
from .config import ChildSpec, NodeConfig

T = TypeVar("T")

STATE_FILE = "node.json"
STOP_ORDER: tuple[tuple[str, ...], ...] = (("gateway",), ("consensus",), ("dht", "manifest"))
HEALTH_TIMEOUT_S = 1.0
PROBE_INTERVAL_S = 1.0  # how often the health gauges are refreshed between scrapes
MEMBERSHIP_DEADLINE_S = 120.0  # a StatefulSet learner asking to be added
SERVING = "SERVING"
NOT_RUNNING = "NOT_RUNNING"
UNREACHABLE = "UNREACHABLE"
# A child that restarts is found again within a second, not after gRPC's
# default reconnect backoff (up to two minutes).
PROBE_CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]

log = logging.getLogger("fleetsuit.node")


class Backoff:
    """The restart delays of one child: ``initial_ms``, doubled at each exit
    in a row, at most ``max_ms``; a child that ran ``stable_after_ms`` or
    longer starts again from ``initial_ms``. Time comes in as arguments."""

    def __init__(self, initial_ms: int, max_ms: int, stable_after_ms: int) -> None:
        self.initial_ms = initial_ms
        self.max_ms = max_ms
        self.stable_after_ms = stable_after_ms
        self.exits_in_a_row = 0

    def after_exit(self, uptime_ms: float) -> int:
        """The delay before restarting a child that ran ``uptime_ms``."""
        if uptime_ms >= self.stable_after_ms:
            self.exits_in_a_row = 0
        delay: int = min(self.max_ms, self.initial_ms << min(self.exits_in_a_row, 40))
        self.exits_in_a_row += 1
        return delay


class NodeMetrics:
    """The supervisor's own metrics, every series present from the start."""

    def __init__(self, registry: CollectorRegistry, services: Sequence[str]) -> None:
        self.restarts = Counter(
            "fleetsuit_node_child_restarts", "Times the supervisor restarted a service that had exited.",
            ["service"], registry=registry,
        )
        self.up = Gauge("fleetsuit_node_child_up", "1 while the service's process runs.", ["service"],
                        registry=registry)
        self.serving = Gauge("fleetsuit_node_child_serving",
                             "1 while the service answers grpc.health.v1 SERVING.", ["service"], registry=registry)
        self.healthy = Gauge("fleetsuit_node_healthy", "1 when every service of the node answers SERVING.",
                             registry=registry)
        for name in services:
            self.restarts.labels(name)
            self.up.labels(name).set(0)
            self.serving.labels(name).set(0)


def last_line(path: Path | None, limit: int = 300) -> str:
    """The last non-empty line of a log, shortened: why a child exited."""
    if path is None:
        return ""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 8192))
            lines = [line.strip() for line in f.read().decode(errors="replace").splitlines()]
    except OSError:
        return ""
    last = next((line for line in reversed(lines) if line), "")
    return last if len(last) <= limit else last[: limit - 3] + "..."


def read_state(data_dir: Path) -> dict[str, Any] | None:
    """``DATA/node.json`` as a dict, or None when absent or unreadable."""
    try:
        doc = json.loads((data_dir / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def write_json(path: Path, doc: dict[str, Any]) -> None:
    """Write a JSON file atomically (a reader sees the old or the new one)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2))
    os.replace(tmp, path)


def check_not_running(config: NodeConfig) -> None:
    """Refuse to start a node whose children of a previous supervisor (one
    killed outright) still run: they hold its ports and its data."""
    state = read_state(config.data_dir)
    if state is None:
        return
    live = [
        f"{name} (pid {child['pid']})"
        for name, child in state.get("children", {}).items()
        if isinstance(child, dict) and isinstance(child.get("pid"), int)
        and running(child["pid"], child.get("command"))
    ]
    if live:
        raise CliError(
            f"node {config.node.id} already runs from {config.data_dir}: {', '.join(live)} "
            f"({config.data_dir / STATE_FILE}); stop it first", EXIT_CANNOT_START,
        )


async def _in_thread(fn: Callable[[], T]) -> T:
    """Run a blocking call in a daemon thread (never joined at exit, so a
    stop is not held up by it)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def run() -> None:
        result: T | None = None
        error: BaseException | None = None
        try:
            result = fn()
        except Exception as exc:  # handed to the awaiting task
            error = exc
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits any more
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=run, name="membership", daemon=True).start()
    return await future


async def request_membership(config: NodeConfig) -> None:
    """A StatefulSet pod above the bootstrap ordinals asks the cluster to add
    its consensus process (``launcher/statefulset.py``; bounded)."""
    from launcher.statefulset import request_membership as ask

    plan = config.plan
    assert plan is not None
    own = config.children["consensus"].endpoint
    log.info("asking the cluster to add %s at %s", config.node.id, own)
    await _in_thread(lambda: ask(plan, own, MEMBERSHIP_DEADLINE_S))
    log.info("%s is a member of the cluster", config.node.id)


async def _spawn(spec: ChildSpec, log_dir: Path | None) -> asyncio.subprocess.Process:
    """Start one child in a session of its own (a terminal's Ctrl-C reaches
    the supervisor only, which stops the children in order); its output to
    ``LOG_DIR/SERVICE.log``, else to the supervisor's own."""
    env = {**os.environ, **spec.env} if spec.env else None
    if log_dir is None:
        return await asyncio.create_subprocess_exec(*spec.command, env=env, start_new_session=True)
    with open(log_dir / f"{spec.service}.log", "ab") as out:
        return await asyncio.create_subprocess_exec(
            *spec.command, stdout=out, stderr=asyncio.subprocess.STDOUT, env=env, start_new_session=True,
        )


def exit_status(code: int) -> int:
    """A child's return code as a process exit status (killed by signal N: 128+N)."""
    return 128 - code if code < 0 else code


async def _terminate(proc: asyncio.subprocess.Process, grace_s: float, name: str) -> int:
    """SIGTERM, then SIGKILL once ``grace_s`` has passed; the return code."""
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        return await asyncio.wait_for(proc.wait(), grace_s)
    except TimeoutError:
        log.warning("%s (pid %d) still runs %.1fs after SIGTERM: killing it", name, proc.pid, grace_s)
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        return await proc.wait()


@dataclass
class Child:
    """One supervised service and what the supervisor knows of it."""

    spec: ChildSpec
    backoff: Backoff
    log_path: Path | None
    proc: asyncio.subprocess.Process | None = None
    started: float = 0.0
    restarts: int = 0
    last_exit: dict[str, Any] | None = None
    channel: grpc.aio.Channel | None = None
    spawning: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def name(self) -> str:
        return self.spec.service

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def health(self) -> str:
        """grpc.health.v1 Check of the whole server: SERVING, NOT_SERVING, ...
        or NOT_RUNNING / UNREACHABLE."""
        if not self.running:
            return NOT_RUNNING
        if self.channel is None:
            self.channel = grpc.aio.insecure_channel(self.spec.probe, options=PROBE_CHANNEL_OPTIONS)
        stub = health_pb2_grpc.HealthStub(self.channel)
        try:
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=HEALTH_TIMEOUT_S)
        except grpc.RpcError:
            return UNREACHABLE
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))

    async def close_channel(self) -> None:
        if self.channel is not None:
            await self.channel.close()
            self.channel = None

    def state(self) -> dict[str, Any]:
        return {
            "pid": self.proc.pid if self.proc is not None and self.running else None,
            "endpoint": self.spec.endpoint, "metrics": self.spec.metrics, "restarts": self.restarts,
            "command": list(self.spec.command), "log": str(self.log_path) if self.log_path else None,
            "last_exit": self.last_exit,
        }


class Supervisor:
    """The four children of one node, from start to a graceful stop."""

    def __init__(self, config: NodeConfig, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self._clock = clock
        node = config.node
        log_dir = config.log_dir
        self.children = {
            name: Child(spec, Backoff(node.restart_backoff_initial_ms, node.restart_backoff_max_ms,
                                      node.stable_after_ms),
                        log_dir / f"{name}.log" if log_dir else None)
            for name, spec in config.children.items()
        }
        self.registry = new_registry("node", node.id)
        self.metrics = NodeMetrics(self.registry, list(self.children))
        self._stop = asyncio.Event()
        self.exit_code = 0

    # ------------------------------------------------------------ state

    def state(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(), "node_id": self.config.node.id, "cluster_id": self.config.node.cluster_id,
            "health": self.config.health_url,
            "config": str(self.config.path.absolute()) if self.config.path else None,
            "children": {name: child.state() for name, child in self.children.items()},
        }

    def write_state(self) -> None:
        write_json(self.config.data_dir / STATE_FILE, self.state())

    # ------------------------------------------------------------ health

    async def health(self) -> dict[str, str]:
        """Each child's health now; the gauges follow."""
        names = list(self.children)
        states = await asyncio.gather(*(self.children[n].health() for n in names))
        out = dict(zip(names, states, strict=True))
        for name, status in out.items():
            self.metrics.serving.labels(name).set(1 if status == SERVING else 0)
            self.metrics.up.labels(name).set(1 if self.children[name].running else 0)
        self.metrics.healthy.set(1 if all(s == SERVING for s in out.values()) else 0)
        return out

    async def _healthz(self, _request: web.Request) -> web.Response:
        states = await self.health()
        not_serving = [name for name, status in states.items() if status != SERVING]
        body = {"node_id": self.config.node.id, "healthy": not not_serving, "services": states,
                "not_serving": not_serving}
        return web.json_response(body, status=503 if not_serving else 200)

    async def _metrics(self, _request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _start_http(self) -> web.AppRunner | None:
        port = self.config.health_port
        if port is None:
            return None
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/metrics", self._metrics)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        host = self.config.node.listen_host
        try:
            await web.TCPSite(runner, host, port).start()
        except OSError as exc:
            await runner.cleanup()
            raise CliError(f"{host}:{port} cannot be bound for /healthz ([node] health_port): {exc.strerror}",
                           EXIT_CANNOT_START) from None
        return runner

    async def _probe_loop(self) -> None:
        while not self._stop.is_set():
            await self.health()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), PROBE_INTERVAL_S)

    # ------------------------------------------------------------ children

    async def _keep_running(self, child: Child) -> None:
        """Start the child, and again after each exit, until the stop."""
        while True:
            async with child.spawning:
                if self._stop.is_set():
                    return
                await child.close_channel()
                try:
                    child.proc = await _spawn(child.spec, self.config.log_dir)
                except OSError as exc:
                    child.proc = None
                    child.last_exit = {"pid": None, "code": None, "uptime_s": 0.0, "why": str(exc)}
                    log.error("cannot start %s: %s", child.name, exc)
                else:
                    child.started = self._clock()
                    self.metrics.up.labels(child.name).set(1)
                    if child.restarts:
                        log.info("restarted %s as pid %d (restart %d)", child.name, child.proc.pid, child.restarts)
                    else:
                        log.info("started %s as pid %d: %s", child.name, child.proc.pid, " ".join(child.spec.command))
                self.write_state()
            if child.proc is not None:
                code = await child.proc.wait()
                if self._stop.is_set():
                    return  # stopped by the stop sequence, which reports it
                uptime_s = self._clock() - child.started
                child.last_exit = {"pid": child.proc.pid, "code": code, "uptime_s": round(uptime_s, 3),
                                   "why": last_line(child.log_path)}
            else:
                uptime_s = 0.0
            self.metrics.up.labels(child.name).set(0)
            self.metrics.serving.labels(child.name).set(0)
            delay_ms = child.backoff.after_exit(uptime_s * 1000)
            log.warning("%s (pid %s) exited with code %s after %.1fs; restart %d in %.1fs",
                        child.name, child.last_exit["pid"] if child.last_exit else None,
                        child.last_exit["code"] if child.last_exit else None, uptime_s,
                        child.restarts + 1, delay_ms / 1000)
            self.write_state()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay_ms / 1000)
                return
            child.restarts += 1
            self.metrics.restarts.labels(child.name).inc()

    async def _stop_child(self, child: Child) -> None:
        async with child.spawning:  # no start in flight
            proc = child.proc
        if proc is None or proc.returncode is not None:
            return
        log.info("stopping %s (pid %d)", child.name, proc.pid)
        code = await _terminate(proc, self.config.node.stop_grace_ms / 1000, child.name)
        self.metrics.up.labels(child.name).set(0)
        self.metrics.serving.labels(child.name).set(0)
        log.info("%s (pid %d) stopped with code %d", child.name, proc.pid, code)

    async def stop_children(self) -> None:
        """Gateway, then consensus, then dht and manifest together."""
        self._stop.set()
        for stage in STOP_ORDER:
            await asyncio.gather(*(self._stop_child(self.children[n]) for n in stage if n in self.children))

    async def _join(self) -> None:
        try:
            await request_membership(self.config)
        except Exception as exc:  # the plan's own errors, or a deadline passed
            log.error("%s could not join the cluster: %s", self.config.node.id, exc)
            self.exit_code = EXIT_CANNOT_START
            self._stop.set()

    # ------------------------------------------------------------ run

    async def run(self, shutdown: asyncio.Event) -> int:
        """Supervise until ``shutdown`` is set; then stop every child in
        order and return the exit code (0, or 3 when the node could not
        start or join)."""
        check_not_running(self.config)
        for folder in (self.config.data_dir, self.config.log_dir):
            if folder is not None:
                try:
                    folder.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise CliError(f"cannot create {folder}: {exc.strerror}", EXIT_CANNOT_START) from None
        runner = await self._start_http()
        tasks = [asyncio.create_task(self._keep_running(c), name=c.name) for c in self.children.values()]
        tasks.append(asyncio.create_task(self._probe_loop(), name="health"))
        plan = self.config.plan
        if plan is not None and plan.join:
            tasks.append(asyncio.create_task(self._join(), name="join"))
        log.info("node %s of cluster %s: supervising %s; health at %s", self.config.node.id,
                 self.config.node.cluster_id, ", ".join(self.children), self.config.health_url or "none")
        waiters = [asyncio.create_task(shutdown.wait()), asyncio.create_task(self._stop.wait())]
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            log.info("node %s stopping", self.config.node.id)
        finally:
            for waiter in waiters:
                waiter.cancel()
            await self.stop_children()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for child in self.children.values():
                await child.close_channel()
            self.write_state()
            if runner is not None:
                await runner.cleanup()
        log.info("node %s stopped", self.config.node.id)
        return self.exit_code


async def run_service(config: NodeConfig, name: str, shutdown: asyncio.Event) -> int:
    """One service alone, in the foreground: started once, SIGTERM/SIGINT
    forwarded as SIGTERM (SIGKILL after ``stop_grace_ms``), its exit
    status returned. A StatefulSet learner's consensus asks to be added
    once it runs; if it cannot be, the service is stopped and 3 returned."""
    spec = config.children[name]
    if config.log_dir is not None:
        config.log_dir.mkdir(parents=True, exist_ok=True)
    proc = await _spawn(spec, config.log_dir)
    log.info("started %s as pid %d: %s", name, proc.pid, " ".join(spec.command))
    grace_s = config.node.stop_grace_ms / 1000
    exited = asyncio.create_task(proc.wait())
    stopping = asyncio.create_task(shutdown.wait())
    joining: asyncio.Task[None] | None = None
    if name == "consensus" and config.plan is not None and config.plan.join:
        joining = asyncio.create_task(request_membership(config))
    failed = False
    while not exited.done():
        waiting = [t for t in (exited, stopping, joining) if t is not None and not t.done()]
        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        if not failed and joining is not None and joining.done() and joining.exception() is not None:
            log.error("%s could not join the cluster: %s", config.node.id, joining.exception())
            failed = True
        if not exited.done() and (failed or stopping.done()):
            await _terminate(proc, grace_s, name)
    for task in (stopping, joining):
        if task is not None:
            task.cancel()
    code = exit_status(exited.result())
    log.info("%s (pid %d) exited with code %d", name, proc.pid, exited.result())
    return EXIT_CANNOT_START if failed else code
