"""The device's gRPC session runtime (grpc.aio): one long-lived Session
stream with a gateway, and failover between gateways.

A session (gateway.proto): Hello -> Challenge -> Register (the device key
signs ``registration_message(gateway_id, device_id, nonce)``) -> Welcome,
then heartbeats both ways every ``heartbeat_interval_ms`` (the device's
carry its installed components; the gateway's carry its clock and the
device time they answer, for ``clock.ClockOffset``), reports up, commands
down. What the commands mean is the handler's (the agent's); this module
owns the stream, the heartbeat, the silence watchdog and the choice of the
next gateway.

Failover: when the stream breaks, or no gateway message arrives for
``silence_intervals`` heartbeat intervals, the device re-registers with its
backup, then the other gateways in the Welcome's rank order (then the one
that failed), then retries the list with a jittered backoff, capped. The
time from the last gateway message to the new Welcome is recorded. A
Redirect closes the session and goes to the named gateway. A registration
refused with DEVICE_PENDING, DEVICE_UNKNOWN or BAD_SIGNATURE is retried
slowly; DEVICE_REJECTED or DEVICE_REVOKED ends the runner.

One task reads the stream and calls the handler; one sends (so writes
never interleave); one ticks the heartbeat and the watchdog.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import grpc

from fleetsuit import device_auth
from fleetsuit.grpcutil import insecure_channel
from fleetsuit.v1 import gateway_pb2 as pb
from fleetsuit.v1 import gateway_pb2_grpc as pb_grpc

from .clock import ClockOffset
from .convert import installed_to_pb
from .errors import SessionLost, SessionRefused
from .model import Installed

log = logging.getLogger("fleetsuit.agent.session")

ERROR_CODE_KEY = "fleetsuit-error-code"
RETRY_CODES = frozenset({"DEVICE_PENDING", "DEVICE_UNKNOWN", "BAD_SIGNATURE"})
STOP_CODES = frozenset({"DEVICE_REJECTED", "DEVICE_REVOKED"})
REFUSAL_CODES = RETRY_CODES | STOP_CODES


@dataclass(frozen=True, slots=True)
class GatewayAddress:
    gateway_id: str  # "" for a configured endpoint not yet met
    grpc_address: str
    http_address: str = ""


@dataclass(frozen=True, slots=True)
class SessionPolicy:
    handshake_timeout_ms: int = 5_000  # Hello to Welcome
    silence_intervals: int = 2  # heartbeat intervals without a gateway message before failover
    retry_initial_ms: int = 200  # after every gateway of the list failed
    retry_max_ms: int = 5_000
    pending_retry_ms: int = 15_000  # a pending (or unknown) device asks again this often
    default_heartbeat_interval_ms: int = 10_000


@dataclass
class SessionStats:
    """What the runner did (read by the simulator's summary)."""

    connected: bool = False
    gateway_id: str = ""
    sessions: int = 0  # Welcomes received
    failovers: int = 0  # re-registrations after a session broke
    failover_ms: list[int] = field(default_factory=list)  # last gateway message -> new Welcome
    failover_intervals: list[float] = field(default_factory=list)  # the same in heartbeat intervals
    redirects: int = 0
    refusals: dict[str, int] = field(default_factory=dict)
    stopped_by: str = ""  # DEVICE_REJECTED or DEVICE_REVOKED when the runner gave up


class ChannelPool:
    """One gRPC channel per gateway address, shared by every agent of a
    process (the simulator runs thousands over a few channels)."""

    def __init__(self, factory: Callable[[str], grpc.aio.Channel] = insecure_channel) -> None:
        self._factory = factory
        self._channels: dict[str, grpc.aio.Channel] = {}

    def get(self, address: str) -> grpc.aio.Channel:
        channel = self._channels.get(address)
        if channel is None:
            channel = self._channels[address] = self._factory(address)
        return channel

    async def close(self) -> None:
        channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            await channel.close()


class Handler(Protocol):
    """The agent, as the session runtime sees it."""

    def installed(self) -> tuple[Installed, ...]: ...
    def on_welcome(self, session: Session, acked_report_seq: int) -> None: ...
    def on_message(self, session: Session, message: pb.GatewayMessage) -> None: ...
    def on_session_end(self, session: Session) -> None: ...


class Session:
    """One established stream: what the gateway said in its Welcome, and a
    non-blocking ``post`` that queues a message for the sending task."""

    def __init__(self, call: grpc.aio.StreamStreamCall[pb.DeviceMessage, pb.GatewayMessage],
                 welcome: pb.Welcome, last_message: float) -> None:
        self.call = call
        self.gateway_id = welcome.gateway_id
        self.heartbeat_interval_ms = welcome.heartbeat_interval_ms
        self.acked_report_seq = welcome.acked_report_seq
        self.gateways = tuple(GatewayAddress(g.gateway_id, g.grpc_address, g.http_address)
                              for g in welcome.gateways)
        self.last_message = last_message  # monotonic seconds
        self.closed = False
        self._out: asyncio.Queue[pb.DeviceMessage] = asyncio.Queue()

    def post(self, message: pb.DeviceMessage) -> None:
        if not self.closed:
            self._out.put_nowait(message)

    @property
    def http_addresses(self) -> tuple[str, ...]:
        """The payload servers, this gateway's first."""
        own = [g.http_address for g in self.gateways if g.gateway_id == self.gateway_id and g.http_address]
        return tuple(dict.fromkeys(own + [g.http_address for g in self.gateways if g.http_address]))

    async def _send_all(self) -> None:
        while True:
            message = await self._out.get()
            await self.call.write(message)


@dataclass(frozen=True, slots=True)
class _Ended:
    redirect: GatewayAddress | None = None
    voluntary: bool = False


def refusal_of(error: grpc.aio.AioRpcError) -> SessionRefused | None:
    """The registration refusal a status carries ("CODE: message" in its
    details, the code also in trailing metadata), or None for a transport error."""
    code = ""
    for key, value in error.trailing_metadata() or ():
        if key == ERROR_CODE_KEY:
            code = value.decode() if isinstance(value, bytes) else str(value)
    details = error.details() or ""
    if not code:
        code = details.split(":", 1)[0].strip()
    if code not in REFUSAL_CODES:
        return None
    message = details[len(code) + 2:] if details.startswith(f"{code}: ") else details
    return SessionRefused(code, message)


class SessionRunner:
    """Keeps one device in session with some gateway until stopped."""

    def __init__(
        self,
        *,
        device_id: str,
        device_class: str,
        key: device_auth.DevicePrivateKey,
        endpoints: tuple[str, ...],
        vendor_domain: str = "",
        handler: Handler,
        channels: ChannelPool,
        clock: ClockOffset,
        local_clock: Callable[[], int],
        policy: SessionPolicy = SessionPolicy(),
        rng: random.Random | None = None,
    ) -> None:
        if not endpoints:
            raise ValueError("a device needs at least one gateway endpoint")
        self.device_id = device_id
        self.device_class = device_class
        self.vendor_domain = vendor_domain
        self._key = key
        self._public_pem = device_auth.public_pem(key)
        self._seeds = tuple(GatewayAddress("", e) for e in endpoints)
        self._ranked: tuple[GatewayAddress, ...] = ()
        self._handler = handler
        self._channels = channels
        self._clock = clock
        self._local_clock = local_clock
        self.policy = policy
        self._rng = rng or random.Random()
        self.stats = SessionStats()
        self.session: Session | None = None
        self._previous_gateway_id = ""
        self._broken_at: float | None = None  # monotonic time of the last message of a broken session
        self._broken_interval_ms = policy.default_heartbeat_interval_ms
        self._drop_for_s: float | None = None

    # ------------------------------------------------------------ control

    def drop(self, for_s: float) -> None:
        """Leave the current session and stay away ``for_s`` seconds (the
        simulator's devices that drop off and come back); not a failover."""
        self._drop_for_s = for_s
        session = self.session
        if session is not None:
            session.call.cancel()

    def order(self, failed_id: str) -> list[GatewayAddress]:
        """The gateways to try, in turn: the ranked ones but the failed one
        (so its backup first), then the failed one, then configured
        endpoints not among them."""
        ranked = [g for g in self._ranked if g.gateway_id != failed_id]
        ranked += [g for g in self._ranked if g.gateway_id == failed_id]
        known = {g.grpc_address for g in ranked}
        seeds = [s for s in self._seeds if s.grpc_address not in known]
        return ranked + seeds

    # ------------------------------------------------------------ the loop

    async def run(self, stop: asyncio.Event) -> str:
        """Until ``stop`` is set (returns "") or a gateway rejects or revokes
        the device (returns that code)."""
        queue = self.order("")
        redirect: GatewayAddress | None = None
        rounds = 0
        failed_id = ""
        while not stop.is_set():
            if redirect is not None:
                target, redirect = redirect, None
            else:
                if not queue:
                    rounds += 1
                    cap = min(self.policy.retry_max_ms, self.policy.retry_initial_ms * 2 ** min(rounds, 16))
                    if await _wait(stop, self._rng.uniform(cap / 2, cap) / 1000):
                        break
                    queue = self.order(failed_id)
                target = queue.pop(0)
            try:
                ended = await self._one(target, stop)
            except SessionRefused as refused:
                self.stats.refusals[refused.status_code] = self.stats.refusals.get(refused.status_code, 0) + 1
                log.warning("device %s refused by %s: %s", self.device_id, target.grpc_address, refused)
                if refused.status_code in STOP_CODES:
                    self.stats.stopped_by = refused.status_code
                    return refused.status_code
                if await _wait(stop, self.policy.pending_retry_ms / 1000 * self._rng.uniform(0.8, 1.2)):
                    break
                queue = self.order(failed_id)
                continue
            except SessionLost as lost:
                log.debug("device %s: %s: %s", self.device_id, target.grpc_address, lost)
                continue
            rounds = 0
            if ended.redirect is not None:
                redirect = ended.redirect
                self.stats.redirects += 1
            elif ended.voluntary and self._drop_for_s is not None:
                drop_for, self._drop_for_s = self._drop_for_s, None
                if await _wait(stop, drop_for):
                    break
            failed_id = "" if ended.voluntary or ended.redirect else self._previous_gateway_id
            queue = self.order(failed_id)
        return ""

    async def _one(self, target: GatewayAddress, stop: asyncio.Event) -> _Ended:
        """One session with ``target``, from Hello to its end."""
        stub = pb_grpc.GatewayStub(self._channels.get(target.grpc_address))
        call = stub.Session()
        try:
            session = await self._handshake(call)
        except grpc.aio.AioRpcError as exc:
            call.cancel()
            refusal = refusal_of(exc)
            if refusal is not None:
                raise refusal from None
            raise SessionLost(f"{exc.code().name}: {exc.details()}") from None
        except (TimeoutError, SessionLost):
            call.cancel()
            raise SessionLost(f"no Welcome from {target.grpc_address}") from None
        self.session = session
        self._previous_gateway_id = session.gateway_id
        self._ranked = session.gateways or self._ranked
        self._welcomed(session)
        sender = asyncio.create_task(session._send_all())
        ticker = asyncio.create_task(self._tick(session))
        stopper = asyncio.create_task(_cancel_on(stop, call))
        if self._drop_for_s is not None:
            call.cancel()  # a drop asked for during the handshake
        try:
            redirect = await self._read(session, stopper)
        finally:
            session.closed = True
            self.session = None
            self.stats.connected = False
            for task in (sender, ticker, stopper):
                task.cancel()
            call.cancel()
            self._handler.on_session_end(session)
        voluntary = self._drop_for_s is not None or stop.is_set()
        if redirect is None and not voluntary:
            self._broken_at = session.last_message
            self._broken_interval_ms = session.heartbeat_interval_ms
        return _Ended(redirect, voluntary)

    async def _handshake(
        self, call: grpc.aio.StreamStreamCall[pb.DeviceMessage, pb.GatewayMessage]
    ) -> Session:
        timeout = self.policy.handshake_timeout_ms / 1000
        async with asyncio.timeout(timeout):
            await call.write(pb.DeviceMessage(hello=pb.Hello(device_id=self.device_id)))
            first = await call.read()
            if first is grpc.aio.EOF or not first.HasField("challenge"):
                raise SessionLost("the gateway did not answer Hello with a Challenge")
            challenge = first.challenge
            message = device_auth.registration_message(challenge.gateway_id, self.device_id, challenge.nonce)
            sent = self._local_clock()
            await call.write(pb.DeviceMessage(register=pb.Register(
                device_id=self.device_id,
                signature=device_auth.sign(self._key, message),
                public_key_pem=self._public_pem,
                device_class=self.device_class,
                vendor_domain=self.vendor_domain,
                installed=[installed_to_pb(i) for i in self._handler.installed()],
                device_time_unix_ms=sent,
                previous_gateway_id=self._previous_gateway_id,
            )))
            second = await call.read()
            if second is grpc.aio.EOF or not second.HasField("welcome"):
                raise SessionLost("the gateway did not answer Register with a Welcome")
        welcome = second.welcome
        self._clock.observe(sent, self._local_clock(), welcome.gateway_time_unix_ms)
        if not welcome.heartbeat_interval_ms:
            welcome.heartbeat_interval_ms = self.policy.default_heartbeat_interval_ms
        return Session(call, welcome, time.monotonic())

    def _welcomed(self, session: Session) -> None:
        now = time.monotonic()
        stats = self.stats
        stats.sessions += 1
        stats.connected = True
        stats.gateway_id = session.gateway_id
        if self._broken_at is not None:
            ms = int((now - self._broken_at) * 1000)
            stats.failovers += 1
            stats.failover_ms.append(ms)
            stats.failover_intervals.append(ms / max(1, self._broken_interval_ms))
            self._broken_at = None
        self._handler.on_welcome(session, session.acked_report_seq)

    async def _read(self, session: Session, stopper: asyncio.Task[None]) -> GatewayAddress | None:
        """Gateway messages until the stream ends; a Redirect's target."""
        call = session.call
        while True:
            try:
                message = await call.read()
            except grpc.aio.AioRpcError:
                return None  # broken, cancelled by the watchdog, or dropped
            except asyncio.CancelledError:
                if call.cancelled() or stopper.done():
                    return None
                raise
            if message is grpc.aio.EOF or stopper.done():
                return None
            session.last_message = time.monotonic()
            kind = message.WhichOneof("kind")
            if kind == "heartbeat":
                beat = message.heartbeat
                if beat.echo_time_unix_ms:
                    self._clock.observe(beat.echo_time_unix_ms, self._local_clock(), beat.time_unix_ms)
            elif kind == "redirect":
                g = message.redirect.gateway
                if g.grpc_address:
                    return GatewayAddress(g.gateway_id, g.grpc_address, g.http_address)
                known = [r for r in self._ranked if r.gateway_id == g.gateway_id]
                if known:
                    return known[0]
                log.warning("device %s: a redirect to %r, an unknown gateway, is ignored",
                            self.device_id, g.gateway_id)
            else:
                self._handler.on_message(session, message)

    async def _tick(self, session: Session) -> None:
        """Heartbeats every interval (the first at a random point of it, so
        a fleet's beats spread out), and the silence watchdog."""
        interval = session.heartbeat_interval_ms / 1000
        silence = interval * self.policy.silence_intervals
        next_beat = time.monotonic() + self._rng.uniform(0, interval)
        while True:
            now = time.monotonic()
            if now - session.last_message >= silence:
                log.info("device %s: no message from %s for %.1f s", self.device_id, session.gateway_id, silence)
                session.call.cancel()
                return
            if now >= next_beat:
                session.post(pb.DeviceMessage(heartbeat=pb.Heartbeat(
                    time_unix_ms=self._local_clock(),
                    installed=[installed_to_pb(i) for i in self._handler.installed()],
                )))
                next_beat = max(next_beat + interval, now)  # no burst after a stall
            await asyncio.sleep(max(0.0, min(next_beat, session.last_message + silence) - time.monotonic()))


async def _cancel_on(stop: asyncio.Event, call: grpc.aio.Call) -> None:
    await stop.wait()
    call.cancel()


async def _wait(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep ``seconds`` unless ``stop`` is set first; whether it was."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
    return stop.is_set()
