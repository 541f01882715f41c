"""The device agent: one device's update procedure (``procedure.py``) driven
by its gateway session (``session.py``), its downloads (``download.py``),
its slots and state file (``slots.py``) and its health check (``health.py``).

The procedure's calls are synchronous and every input reaches it on the
event loop's one thread, so no two inputs interleave; each ``Ready`` is
applied in the procedure's order: persist the state, then act, then send
the reports. The session runtime knows nothing of updates; this module
knows nothing of the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

import aiohttp

from fleetsuit import device_auth
from fleetsuit.v1 import gateway_pb2 as pb
from suit.auth import TrustAnchor

from .clock import ClockOffset
from .convert import hold_from_pb, offer_from_pb, report_to_pb, switch_back_from_pb
from .download import DownloadPolicy, download
from .errors import DownloadFailed, Refused
from .health import CommandHealthCheck, HealthCheck, HealthRequest, always_healthy
from .model import Installed, Report, factory_state
from .procedure import (
    Action,
    CancelInstall,
    Procedure,
    Ready,
    RunHealthCheck,
    StartInstall,
    Switched,
)
from .session import ChannelPool, Session, SessionPolicy, SessionRunner
from .slots import FileStateStore, MemoryStateStore, SlotFiles, StateStore
from .verify import DEFAULT_DEVICE_CLASS, DEFAULT_VENDOR_DOMAIN, DeviceProfile, load_trust_anchors

log = logging.getLogger("fleetsuit.agent")

DEFAULT_COMPONENT = "firmware"
RESEND_INTERVALS = 3  # heartbeat intervals without an ack before a report is sent again


@dataclass(frozen=True, slots=True)
class AgentConfig:
    device_id: str
    gateways: tuple[str, ...]  # HOST:PORT of gateways' Session service to start from
    key_path: Path | None = None  # the device's private key (PEM); or AgentDeps.key
    trust_anchor_paths: tuple[Path, ...] = ()  # PEM public keys; or AgentDeps.anchors
    data_dir: Path | None = None  # slots and state file (None: in memory, no_install only)
    components: tuple[str, ...] = (DEFAULT_COMPONENT,)
    vendor_domain: str = DEFAULT_VENDOR_DOMAIN
    device_class: str = DEFAULT_DEVICE_CLASS
    factory_sequence: int = 0  # the factory image's sequence number (anti-rollback floor)
    health_check: str = ""  # a command; "" means healthy
    health_check_timeout_ms: int = 30_000
    no_install: bool = False  # download and hash, write nothing (the simulator)
    handshake_timeout_ms: int = 5_000
    retry_max_ms: int = 5_000
    pending_retry_ms: int = 15_000
    download_attempts: int = 8

    def validate(self) -> None:
        if not self.device_id:
            raise ValueError("device_id must not be empty")
        if not self.gateways:
            raise ValueError("gateways: give at least one HOST:PORT")
        if not self.components or any(not c for c in self.components):
            raise ValueError("components: give at least one non-empty name")
        if self.data_dir is None and not self.no_install:
            raise ValueError("data_dir is needed unless no_install")
        if self.factory_sequence < 0:
            raise ValueError("factory_sequence must not be negative")
        for name in ("health_check_timeout_ms", "handshake_timeout_ms", "retry_max_ms",
                     "pending_retry_ms", "download_attempts"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")

    def session_policy(self) -> SessionPolicy:
        return SessionPolicy(handshake_timeout_ms=self.handshake_timeout_ms,
                             retry_max_ms=self.retry_max_ms, pending_retry_ms=self.pending_retry_ms)


class Observer(Protocol):
    """Who watches a device (the simulator's summary, a test)."""

    def switched(self, agent: Agent, switched: Switched) -> None: ...
    def reported(self, agent: Agent, report: Report) -> None: ...


class NullObserver:
    def switched(self, agent: Agent, switched: Switched) -> None:
        return None

    def reported(self, agent: Agent, report: Report) -> None:
        return None


@dataclass
class AgentDeps:
    """What an agent uses that a process may share or a test may replace."""

    channels: ChannelPool | None = None
    http: aiohttp.ClientSession | None = None
    store: StateStore | None = None
    health: HealthCheck | None = None
    key: device_auth.DevicePrivateKey | None = None
    anchors: tuple[TrustAnchor, ...] | None = None
    local_clock: Callable[[], int] = field(default=lambda: int(time.time() * 1000))
    rng: random.Random | None = None
    observer: Observer = field(default_factory=NullObserver)


class Agent:
    def __init__(self, config: AgentConfig, deps: AgentDeps | None = None) -> None:
        config.validate()
        deps = deps or AgentDeps()
        self.config = config
        self._deps = deps
        key = deps.key
        if key is None:
            if config.key_path is None:
                raise ValueError("key_path: the device's private key is needed")
            key = device_auth.load_private_key(config.key_path.read_bytes())
        anchors = deps.anchors or load_trust_anchors(p.read_bytes() for p in config.trust_anchor_paths)
        if deps.store is not None:
            self._store: StateStore = deps.store
        elif config.data_dir is not None:
            self._store = FileStateStore(config.data_dir)
        else:
            self._store = MemoryStateStore()
        self._slots = SlotFiles(config.data_dir) if config.data_dir is not None and not config.no_install else None
        state = self._store.load()
        fresh = factory_state(config.components, config.factory_sequence)
        if state is None:
            # A device with no state (new, or reset) counts its reports from
            # its clock in microseconds: the ledger keys a report by (device,
            # seq), so a counter restarting at 1 would reuse the keys of an
            # earlier life of the same device and those reports would be
            # taken for ones already committed.
            state = replace(fresh, report_counter=int(time.time() * 1_000_000))
            self._store.save(state)
        for c in fresh.components:
            if state.component(c.component) is None:  # a component added to the config
                state = state.with_component(c)
        self.procedure = Procedure(DeviceProfile(anchors, config.vendor_domain, config.device_class,
                                                 config.device_id), state)
        self.clock = ClockOffset()
        self._local_clock = deps.local_clock
        self._rng = deps.rng or random.Random()
        self._channels = deps.channels or ChannelPool()
        self._health: HealthCheck = deps.health or (
            CommandHealthCheck(config.health_check, config.health_check_timeout_ms)
            if config.health_check else always_healthy)
        self.runner = SessionRunner(
            device_id=config.device_id, device_class=config.device_class,
            vendor_domain=config.vendor_domain, key=key,
            endpoints=config.gateways, handler=self, channels=self._channels, clock=self.clock,
            local_clock=self._local_clock, policy=config.session_policy(), rng=self._rng,
        )
        self._http = deps.http
        self._installs: dict[str, asyncio.Task[None]] = {}
        self._resends: dict[int, asyncio.TimerHandle] = {}  # report seq -> its next resend
        self._tasks: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._download_policy = DownloadPolicy(attempts=config.download_attempts)

    @property
    def device_id(self) -> str:
        return self.config.device_id

    def gateway_now(self) -> int:
        return self.clock.gateway_now(self._local_clock())

    # ------------------------------------------------------------ running

    async def run(self, stop: asyncio.Event) -> str:
        """Until ``stop`` is set (returns "") or the device is rejected or
        revoked (returns that code)."""
        own_http = self._http is None
        if self._http is None:
            self._http = aiohttp.ClientSession()
        timer = asyncio.create_task(self._timer(stop))
        try:
            self._apply(self.procedure.start(self.gateway_now()))
            return await self.runner.run(stop)
        finally:
            timer.cancel()
            for handle in self._resends.values():
                handle.cancel()
            self._resends.clear()
            pending = [timer, *self._installs.values(), *self._tasks]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            if own_http:
                await self._http.close()
                self._http = None
            if self._deps.channels is None:
                await self._channels.close()

    async def _timer(self, stop: asyncio.Event) -> None:
        """Wakes the procedure when a switch is due (gateway time, through
        the clock offset: never before)."""
        while not stop.is_set():
            self._wake.clear()
            deadline = self.procedure.next_deadline()
            if deadline is None:
                await self._wake.wait()
                continue
            delay_s = (self.clock.local_at(deadline) - self._local_clock()) / 1000
            if delay_s > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), delay_s)
                continue
            ready = self.procedure.tick(self.gateway_now())
            self._apply(ready)
            if not ready.actions:
                await asyncio.sleep(0.002)  # the estimate moved: a few ms more

    # ------------------------------------------------------------ the procedure's outputs

    def _apply(self, ready: Ready) -> None:
        if ready.state_changed:
            self._store.save(self.procedure.state)  # before acting or reporting
        for action in ready.actions:
            self._act(action)
        session = self.runner.session
        for report in ready.reports:
            self._deps.observer.reported(self, report)
            if session is not None:
                self._send_report(session, report)
        self._wake.set()

    def _act(self, action: Action) -> None:
        if isinstance(action, StartInstall):
            old = self._installs.pop(action.component, None)
            if old is not None:
                old.cancel()
            self._installs[action.component] = asyncio.create_task(self._install(action))
        elif isinstance(action, CancelInstall):
            task = self._installs.pop(action.component, None)
            if task is not None:
                task.cancel()
        elif isinstance(action, RunHealthCheck):
            task = asyncio.create_task(self._check(action))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:
            log.info("device %s: %s now runs %s (slot %s)%s", self.device_id, action.component,
                     action.release_id, action.slot, " (back)" if action.back else "")
            self._deps.observer.switched(self, action)

    async def _install(self, action: StartInstall) -> None:
        release = action.release
        urls = action.urls or self._payload_urls(release.cid)
        dest = part = None
        if self._slots is not None:
            dest = self._slots.path(action.slot, action.component)
            part = self._slots.part_path(action.slot, action.component, release.sha256.hex())
            self._slots.clear_parts(action.slot, action.component, keep=part)
        error: Refused | DownloadFailed | None = None
        assert self._http is not None
        try:
            await download(self._http, urls, release.sha256, release.size, dest, part,
                           policy=self._download_policy, rng=self._rng)
        except (Refused, DownloadFailed) as exc:
            error = exc
        except OSError as exc:
            error = DownloadFailed(f"cannot write the slot: {exc}")
        if self._installs.get(action.component) is asyncio.current_task():
            del self._installs[action.component]
        self._apply(self.procedure.install_result(action.component, release.release_id, error,
                                                  self.gateway_now()))

    def _payload_urls(self, cid: str) -> tuple[str, ...]:
        session = self.runner.session
        addresses = session.http_addresses if session is not None else ()
        return tuple(f"http://{a}/v1/payloads/{cid}" for a in addresses)

    async def _check(self, action: RunHealthCheck) -> None:
        path = self._slots.path(action.slot, action.component) if self._slots is not None else None
        result = await self._health(HealthRequest(action.component, action.slot, action.release_id, path))
        self._apply(self.procedure.health_result(action.component, action.release_id, result.healthy,
                                                 result.detail, self.gateway_now()))

    # ------------------------------------------------------------ session handler

    def installed(self) -> tuple[Installed, ...]:
        return self.procedure.installed()

    def on_welcome(self, session: Session, acked_report_seq: int) -> None:
        if acked_report_seq:
            self._apply(self.procedure.acked_up_to(acked_report_seq))
        for report in self.procedure.state.unacked:  # nothing reported is lost
            self._send_report(session, report)

    def on_message(self, session: Session, message: pb.GatewayMessage) -> None:
        kind = message.WhichOneof("kind")
        now = self.gateway_now()
        if kind == "offer":
            self._apply(self.procedure.offer(offer_from_pb(message.offer), now))
        elif kind == "switch_back":
            self._apply(self.procedure.switch_back(switch_back_from_pb(message.switch_back), now))
        elif kind == "hold":
            self._apply(self.procedure.hold(hold_from_pb(message.hold), now))
        elif kind == "report_ack":
            ack = message.report_ack
            if not ack.error_code:
                handle = self._resends.pop(ack.seq, None)
                if handle is not None:
                    handle.cancel()
                self._apply(self.procedure.ack(ack.seq))
            else:
                log.info("device %s: report %d not committed (%s: %s); sent again later",
                         self.device_id, ack.seq, ack.error_code, ack.error_message)
                self._resend_later(session, ack.seq, session.heartbeat_interval_ms / 1000)

    def on_session_end(self, session: Session) -> None:
        return None

    def _send_report(self, session: Session, report: Report) -> None:
        """Send a report, and again every few heartbeat intervals on this
        session while it stays unacknowledged: a gateway that could not
        commit it (no leader for a while, its node restarting) sends no
        ack, and the session may well outlive the trouble."""
        session.post(pb.DeviceMessage(report=report_to_pb(report)))
        self._resend_later(session, report.seq, RESEND_INTERVALS * session.heartbeat_interval_ms / 1000)

    def _resend_later(self, session: Session, seq: int, delay_s: float) -> None:
        handle = self._resends.pop(seq, None)
        if handle is not None:
            handle.cancel()
        self._resends[seq] = asyncio.get_running_loop().call_later(delay_s, self._resend, session, seq)

    def _resend(self, session: Session, seq: int) -> None:
        self._resends.pop(seq, None)
        if session.closed:
            return  # the next session sends every unacknowledged report
        for report in self.procedure.state.unacked:
            if report.seq == seq:
                self._send_report(session, report)
