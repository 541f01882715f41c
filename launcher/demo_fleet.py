"""The fleet of ``make run``: devices an operator enrolls, running on the
gateways before any release is pushed, and watched while a release rolls
out to them.

The operator enrolls ``count`` simulated devices (seeded Ed25519 keys,
``agent.enrol``) with ``fleetsuit.device_admin``. ``FleetThread`` runs them
with the fleet simulator (``agent.simulator``: each device a real agent
with its own session to a gateway, verifying a release's envelope against
the CI publisher's key, downloading the payload from its gateway over HTTP
with its digest checked, switching at the time the gateway names and
reporting) on an event loop of its own, in a thread, so that the demo's
main thread can push releases and print progress meanwhile. The fleet runs
until it is stopped: heartbeats go on after a rollout.

``FleetThread.state()`` is read on the fleet's own loop (the simulator's
state is touched by one thread only); ``watch()`` prints a line of devices
per version every second while a release rolls out.
"""

from __future__ import annotations

import asyncio
import io
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.enrol import fleet_public_pems
from agent.simulator import Simulator, SimulatorConfig
from fleetsuit.cluster_status import rollout_stage
from fleetsuit.device_admin import DeviceAdmin
from fleetsuit.v1 import consensus_pb2 as pb

SEED = "fleetsuit-demo"
PREFIX = "dev-"
FACTORY = "factory"
RUN_FOR_S = 10 * 365 * 86400.0  # the simulator's own end: never, in practice (the demo stops it)
START_SPREAD_MS = 1_000  # the devices' first registrations are spread over this
STATE_TIMEOUT_S = 10.0
POLL_S = 0.1
START_TIMEOUT_S = 10.0


class FleetFailed(Exception):
    """The fleet did not do what the demo shows; the message says what."""


@dataclass(frozen=True, slots=True)
class FleetState:
    """The fleet as its devices see it: how many are in session, and what
    each runs of ``component`` (release id, or ``factory``)."""

    devices: int
    sessions: int
    versions: Mapping[str, int]
    unacked_reports: int
    first_switch_at_unix_ms: int | None
    switches: int  # forward switches so far (not switches back)
    elapsed_s: float

    def on(self, release_id: str) -> int:
        return self.versions.get(release_id, 0)

    def line(self) -> str:
        versions = " ".join(f"{r}={n}" for r, n in sorted(self.versions.items(), key=_factory_first)) or "-"
        return f"sessions {self.sessions}/{self.devices} | {versions}"


def _factory_first(item: tuple[str, int]) -> tuple[int, str]:
    return (0 if item[0] == FACTORY else 1, item[0])


def enroll_fleet(admin: DeviceAdmin, count: int, device_class: str) -> float:
    """Enroll ``count`` demo devices (accepted at once); the seconds it took.
    A re-run finds them enrolled already (duplicate) and goes on."""
    started = time.monotonic()
    for device_id, pem in fleet_public_pems(count, SEED, PREFIX).items():
        admin.enroll(device_id, device_class, pem)
    return time.monotonic() - started


def fleet_config(
    count: int, gateways: tuple[str, ...], anchor: Path, component: str, device_class: str,
) -> SimulatorConfig:
    return SimulatorConfig(
        count=count, gateways=gateways, trust_anchor_paths=(anchor,), seed=SEED, id_prefix=PREFIX,
        device_class=device_class, components=(component,), no_install=True, duration_s=RUN_FOR_S,
        summary_interval_s=RUN_FOR_S, start_spread_ms=START_SPREAD_MS,
    )


class FleetThread:
    """The simulator on its own event loop in a thread, until ``stop()``."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.component = config.components[0]
        self._sim = Simulator(config, out=io.StringIO())
        self._thread = threading.Thread(target=self._main, name="fleet", daemon=True)
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._summary: dict[str, Any] | None = None
        self._error: BaseException | None = None

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT_S):
            raise FleetFailed(f"the fleet simulator did not start in {START_TIMEOUT_S:g}s")

    def _main(self) -> None:
        asyncio.run(self._run())

    async def _run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._ready.set()
        try:
            self._summary = await self._sim.run(self._stop)
        except BaseException as exc:  # reported by state() and stop(), in the main thread
            self._error = exc

    def _check(self) -> asyncio.AbstractEventLoop:
        if self._error is not None:
            raise FleetFailed(f"the fleet simulator failed: {self._error!r}") from self._error
        if self._loop is None or not self._thread.is_alive():
            raise FleetFailed("the fleet simulator is not running")
        return self._loop

    def state(self) -> FleetState:
        """What the devices run now (read on the fleet's loop)."""
        future = asyncio.run_coroutine_threadsafe(self._state(), self._check())
        try:
            return future.result(STATE_TIMEOUT_S)
        except TimeoutError:
            future.cancel()
            raise FleetFailed(f"the fleet simulator did not answer in {STATE_TIMEOUT_S:g}s") from None

    async def _state(self) -> FleetState:
        summary = self._sim.summary()
        versions = summary["versions"].get(self.component, {})
        return FleetState(
            devices=self._sim.config.count, sessions=summary["sessions"],
            versions={r or FACTORY: n for r, n in versions.items()},
            unacked_reports=summary["unacked_reports"],
            first_switch_at_unix_ms=summary["first_switch_at_unix_ms"],
            switches=sum(1 for s in summary["switches"] if not s["back"]), elapsed_s=summary["elapsed_s"],
        )

    def until(self, done: Callable[[FleetState], bool], timeout_s: float, what: str) -> FleetState:
        """The fleet's state once ``done(state)``; FleetFailed after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while not done(state := self.state()):
            if time.monotonic() >= deadline:
                raise FleetFailed(f"timed out after {timeout_s:g}s waiting for {what}: {state.line()}")
            time.sleep(POLL_S)
        return state

    def watch(self, release_id: str, policy: pb.RolloutPolicy, every_s: float, timeout_s: float) -> FleetState:
        """A line of devices per version every ``every_s`` (with the stage
        of ``policy`` open at that time) until every device runs
        ``release_id`` and every report is committed; FleetFailed after
        ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        next_line = time.monotonic()
        while True:
            state = self.state()
            done = state.on(release_id) == state.devices and state.unacked_reports == 0
            if done or time.monotonic() >= next_line:
                now_ms = int(time.time() * 1000)
                opened, stages, percent = rollout_stage(policy, now_ms)
                stage = f"stage {opened}/{stages} ({percent}% admitted)" if opened else "before the start"
                offset = (now_ms - policy.start_at_unix_ms) / 1000
                print(f"[rollout T{offset:+.1f}s] {stage} | {state.line()}", flush=True)
                next_line = max(next_line + every_s, time.monotonic() + every_s / 2)
            if done:
                return state
            if time.monotonic() >= deadline:
                raise FleetFailed(f"the fleet did not reach {release_id} in {timeout_s:g}s: {state.line()}, "
                                  f"{state.unacked_reports} reports not committed")
            time.sleep(POLL_S)

    def stop(self, timeout_s: float = 30.0) -> dict[str, Any]:
        """Stop every device (their sessions close) and return the
        simulator's final summary."""
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread.ident is not None:
            self._thread.join(timeout_s)
        if self._thread.is_alive():
            raise FleetFailed(f"the fleet simulator did not stop in {timeout_s:g}s")
        if self._error is not None:
            raise FleetFailed(f"the fleet simulator failed: {self._error!r}") from self._error
        return self._summary or {}
