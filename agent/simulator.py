"""The fleet simulator: N device agents in one asyncio process, sharing one
gRPC channel per gateway address and one HTTP client session, so a
thousand devices run on one core (no thread per device; each device's
heartbeats start at a random point of the interval and its registration at
a random point of ``start_spread_ms``).

Faults are chosen per device by a stable hash of (seed, device id), so a
run is repeatable: a fraction fails its health check, a fraction drops its
session and comes back, each device's clock is off by a seeded amount in
±``clock_skew_ms``. It prints a summary line every ``summary_interval_s``
and returns (and writes, as JSON) the final summary, with the switch times
the devices observed in gateway time.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import random
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import aiohttp

from suit.auth import TrustAnchor

from .agent import DEFAULT_COMPONENT, Agent, AgentConfig, AgentDeps
from .enrol import DEFAULT_PREFIX, DEFAULT_SEED, device_id_of, sim_key
from .health import HealthRequest, HealthResult, always_healthy
from .model import Kind, Report
from .procedure import Switched
from .session import ChannelPool
from .verify import DEFAULT_DEVICE_CLASS, DEFAULT_VENDOR_DOMAIN, load_trust_anchors

MAX_HTTP_CONNECTIONS = 256


@dataclass(frozen=True, slots=True)
class SimulatorConfig:
    count: int
    gateways: tuple[str, ...]
    trust_anchor_paths: tuple[Path, ...] = ()
    seed: str = DEFAULT_SEED
    id_prefix: str = DEFAULT_PREFIX
    device_class: str = DEFAULT_DEVICE_CLASS
    vendor_domain: str = DEFAULT_VENDOR_DOMAIN
    components: tuple[str, ...] = (DEFAULT_COMPONENT,)
    no_install: bool = True
    data_dir: Path | None = None  # each device's slots and state under data_dir/<device id>
    fail_fraction: float = 0.0  # of devices whose health check fails
    drop_fraction: float = 0.0  # of devices that drop their session once
    drop_after_s: float = 10.0
    come_back_after_s: float = 10.0
    clock_skew_ms: int = 0  # each device's clock is off by a seeded amount in +-this
    duration_s: float = 60.0
    until_release: str = ""  # stop once every device runs it
    summary_interval_s: float = 5.0
    start_spread_ms: int = 1_000
    retry_max_ms: int = 5_000
    pending_retry_ms: int = 15_000

    def validate(self) -> None:
        if self.count <= 0:
            raise ValueError("count must be positive")
        if not self.gateways:
            raise ValueError("gateways: give at least one HOST:PORT")
        for name in ("fail_fraction", "drop_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1")
        if not self.no_install and self.data_dir is None:
            raise ValueError("data_dir is needed unless no_install")
        if self.duration_s <= 0 or self.summary_interval_s <= 0:
            raise ValueError("duration_s and summary_interval_s must be positive")
        if self.clock_skew_ms < 0 or self.start_spread_ms < 0:
            raise ValueError("clock_skew_ms and start_spread_ms must not be negative")


def fraction_of(seed: str, what: str, device_id: str) -> float:
    """A stable number in [0, 1) for (seed, what, device): who fails, who drops."""
    digest = hashlib.sha256(f"{seed}\0{what}\0{device_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


@dataclass
class _Device:
    agent: Agent
    skew_ms: int
    fails: bool
    drops: bool


@dataclass
class _Watch:
    """The simulator's observer of every agent."""

    switches: list[dict[str, Any]] = field(default_factory=list)
    reports: Counter[str] = field(default_factory=Counter)

    def switched(self, agent: Agent, switched: Switched) -> None:
        self.switches.append({"device_id": agent.device_id, "component": switched.component,
                              "release_id": switched.release_id, "at_unix_ms": switched.at_unix_ms,
                              "back": switched.back})

    def reported(self, agent: Agent, report: Report) -> None:
        self.reports.update(str(e.kind) for e in report.events)


def _skewed_clock(skew_ms: int) -> Callable[[], int]:
    def now() -> int:
        return int(time.time() * 1000) + skew_ms
    return now


async def _failing(request: HealthRequest) -> HealthResult:
    return HealthResult(False, "simulated health-check failure")


class Simulator:
    def __init__(self, config: SimulatorConfig, *, anchors: tuple[TrustAnchor, ...] | None = None,
                 out: TextIO | None = None) -> None:
        config.validate()
        self.config = config
        self._anchors = anchors or load_trust_anchors(p.read_bytes() for p in config.trust_anchor_paths)
        self._out = out if out is not None else sys.stdout
        self._watch = _Watch()
        self._channels = ChannelPool()
        self.devices: list[_Device] = []
        self._started = 0.0
        self.reached = False

    def _build(self, http: aiohttp.ClientSession) -> None:
        c = self.config
        for i in range(c.count):
            device_id = device_id_of(c.id_prefix, i)
            rng = random.Random(f"{c.seed}/{device_id}")
            skew = round(rng.uniform(-c.clock_skew_ms, c.clock_skew_ms)) if c.clock_skew_ms else 0
            fails = fraction_of(c.seed, "fail", device_id) < c.fail_fraction
            drops = fraction_of(c.seed, "drop", device_id) < c.drop_fraction
            config = AgentConfig(
                device_id=device_id, gateways=c.gateways,
                data_dir=None if c.data_dir is None else c.data_dir / device_id,
                components=c.components, vendor_domain=c.vendor_domain, device_class=c.device_class,
                no_install=c.no_install, retry_max_ms=c.retry_max_ms, pending_retry_ms=c.pending_retry_ms,
            )
            deps = AgentDeps(
                channels=self._channels, http=http, key=sim_key(c.seed, i), anchors=self._anchors,
                health=_failing if fails else always_healthy, rng=rng, observer=self._watch,
                local_clock=_skewed_clock(skew),
            )
            self.devices.append(_Device(Agent(config, deps), skew, fails, drops))

    async def run(self, stop: asyncio.Event | None = None) -> dict[str, Any]:
        """Run the fleet until ``until_release`` is reached everywhere, the
        duration is over, or ``stop`` is set; the final summary."""
        c = self.config
        stop = stop or asyncio.Event()
        agents_stop = asyncio.Event()
        connector = aiohttp.TCPConnector(limit=MAX_HTTP_CONNECTIONS)
        async with aiohttp.ClientSession(connector=connector) as http:
            self._build(http)
            self._started = time.monotonic()
            spread = random.Random(c.seed)
            tasks = [asyncio.create_task(self._device(d, spread.uniform(0, c.start_spread_ms / 1000), agents_stop))
                     for d in self.devices]
            try:
                await self._watch_until_done(stop)
                summary = self.summary()  # while the sessions are up
                self._print(final=True)
            finally:
                agents_stop.set()
                await asyncio.gather(*tasks, return_exceptions=True)
                await self._channels.close()
        return summary

    async def _device(self, device: _Device, delay_s: float, stop: asyncio.Event) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay_s)
        if stop.is_set():
            return
        dropper = None
        if device.drops:
            dropper = asyncio.create_task(self._drop(device))
        try:
            await device.agent.run(stop)
        finally:
            if dropper is not None:
                dropper.cancel()

    async def _drop(self, device: _Device) -> None:
        await asyncio.sleep(self.config.drop_after_s)
        device.agent.runner.drop(self.config.come_back_after_s)

    async def _watch_until_done(self, stop: asyncio.Event) -> None:
        c = self.config
        deadline = self._started + c.duration_s
        next_summary = self._started + c.summary_interval_s
        while not stop.is_set():
            now = time.monotonic()
            if c.until_release and self._all_run(c.until_release) and not self._unacked():
                self.reached = True
                return
            if now >= deadline:
                self.reached = bool(c.until_release) and self._all_run(c.until_release)
                return
            if now >= next_summary:
                self._print()
                next_summary += c.summary_interval_s
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), min(0.1, max(0.0, deadline - now)))

    def _all_run(self, release_id: str) -> bool:
        return all(any(i.release_id == release_id for i in d.agent.installed()) for d in self.devices)

    def _unacked(self) -> int:
        return sum(len(d.agent.procedure.state.unacked) for d in self.devices)

    # ------------------------------------------------------------ the summary

    def versions(self) -> dict[str, dict[str, int]]:
        out: dict[str, Counter[str]] = {}
        for d in self.devices:
            for i in d.agent.installed():
                out.setdefault(i.component, Counter())[i.release_id] += 1
        return {component: dict(sorted(counts.items())) for component, counts in sorted(out.items())}

    def summary(self) -> dict[str, Any]:
        stats = [d.agent.runner.stats for d in self.devices]
        switches = sorted(self._watch.switches, key=lambda s: (s["at_unix_ms"], s["device_id"]))
        forward = [s["at_unix_ms"] for s in switches if not s["back"]]
        refusals: Counter[str] = Counter()
        for s in stats:
            refusals.update(s.refusals)
        return {
            "devices": len(self.devices),
            "elapsed_s": round(time.monotonic() - self._started, 3) if self._started else 0.0,
            "until_release": self.config.until_release,
            "reached": self.reached,
            "versions": self.versions(),
            "sessions": sum(1 for s in stats if s.connected),
            "registrations": sum(s.sessions for s in stats),
            "failovers": sum(s.failovers for s in stats),
            "failover_ms": sorted(ms for s in stats for ms in s.failover_ms),
            "failover_intervals": sorted(round(x, 3) for s in stats for x in s.failover_intervals),
            "redirects": sum(s.redirects for s in stats),
            "refusals": dict(refusals),
            "stopped": {d.agent.device_id: s.stopped_by for d, s in zip(self.devices, stats, strict=True)
                        if s.stopped_by},
            "reports": {str(k): self._watch.reports.get(str(k), 0) for k in Kind},
            "unacked_reports": self._unacked(),
            "first_switch_at_unix_ms": min(forward) if forward else None,
            "switches": switches,
            "per_device": {
                d.agent.device_id: {
                    "installed": {i.component: i.release_id for i in d.agent.installed()},
                    "gateway_id": s.gateway_id, "failovers": s.failovers,
                    "clock_skew_ms": d.skew_ms, "fails_health": d.fails, "drops": d.drops,
                }
                for d, s in zip(self.devices, stats, strict=True)
            },
        }

    def _print(self, final: bool = False) -> None:
        stats = [d.agent.runner.stats for d in self.devices]
        versions = " ".join(f"{r}={n}" for counts in self.versions().values() for r, n in counts.items())
        reports = self._watch.reports
        elapsed = time.monotonic() - self._started
        print(f"[{elapsed:7.1f}s]{' final' if final else ''} sessions {sum(s.connected for s in stats)}/"
              f"{len(self.devices)} | {versions} | failovers {sum(s.failovers for s in stats)} | "
              f"failed {reports.get(str(Kind.INSTALL_FAILED), 0)} fell_back {reports.get(str(Kind.FELL_BACK), 0)} "
              f"refused {reports.get(str(Kind.REFUSED), 0)}", file=self._out, flush=True)


def write_summary(summary: dict[str, Any], path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(summary, indent=1, sort_keys=True))
    tmp.replace(path)
