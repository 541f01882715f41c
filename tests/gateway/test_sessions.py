"""Device sessions over a real grpc.aio gateway on 127.0.0.1:0, with the
in-memory ledger and cluster (services/gateway/ports.py) and an injected
clock: registration and every refusal, heartbeats, offers, holds, switch
backs, redirects, silence (reports over a session: test_reports.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import grpc
import pytest
from prometheus_client import CollectorRegistry

from fleetsuit import device_auth
from fleetsuit.grpcutil import insecure_channel
from fleetsuit.v1 import gateway_pb2 as pb
from fleetsuit.v1 import gateway_pb2_grpc as pb_grpc
from services.gateway import convert, placement, rollout
from services.gateway.config import GatewayConfig
from services.gateway.model import (
    DeviceEventsWrite,
    Enrolment,
    EnrolmentRequestWrite,
    GatewayAddress,
)
from services.gateway.ports import MemoryCluster, MemoryLedger, MemoryPayloads
from services.gateway.server import GatewayDeps, GatewayRuntime, build_server
from services.gateway.sessions import Sent, plan
from tests.support.wait import ready, wait_for

ME = "g1"
HTTP = "127.0.0.1:17405"
CLASS = "class-a"
T0 = 1_700_000_000_000
READ_S = 10.0


@dataclass
class Clock:
    now_ms: int = T0

    def __call__(self) -> int:
        return self.now_ms


@dataclass
class Gateway:
    address: str
    deps: GatewayDeps
    ledger: MemoryLedger
    clock: Clock
    payloads: MemoryPayloads = field(default_factory=MemoryPayloads)

    @property
    def runtime(self) -> GatewayRuntime:
        assert self.deps.runtime is not None
        return self.deps.runtime

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        value = self.deps.registry.get_sample_value(name, labels or {})
        return 0.0 if value is None else value


@asynccontextmanager
async def running(
    ledger: MemoryLedger | None = None,
    *,
    cluster: MemoryCluster | None = None,
    clock: Clock | None = None,
    gateway_id: str = ME,
    **settings: Any,
) -> AsyncIterator[Gateway]:
    """A started gateway on 127.0.0.1:0 over the in-memory ledger."""
    ledger = ledger if ledger is not None else MemoryLedger()
    clock = clock or Clock()
    payloads = MemoryPayloads()
    config = GatewayConfig(
        listen="127.0.0.1:0", http_listen="127.0.0.1:0", node_id=gateway_id, metrics_port=-1,
        **{"offer_lead_ms": 0, "directory_refresh_ms": 50, **settings},
    ).validate()  # fmt: skip
    deps = GatewayDeps(
        ledger=ledger, registry=CollectorRegistry(), cluster=cluster or MemoryCluster(),
        payloads=payloads, clock=clock, http_address=HTTP,
    )  # fmt: skip
    server, port = build_server(config, deps)
    assert deps.runtime is not None
    await server.start()
    deps.runtime.start()
    try:
        await asyncio.wait_for(deps.runtime.view.ready.wait(), READ_S)
        yield Gateway(f"127.0.0.1:{port}", deps, ledger, clock, payloads)
    finally:
        await server.stop(None)
        await deps.runtime.stop()


@dataclass
class Device:
    device_id: str
    key: device_auth.DevicePrivateKey = field(default_factory=device_auth.new_device_key)
    device_class: str = CLASS

    def enrolment(
        self, state: str = "accepted", group: str = "",
        installed: tuple[tuple[str, str, int], ...] = (("app", "", 0),),
    ) -> Enrolment:
        """As the ledger holds it; by default recorded on the factory image
        of ``app``, what ``installed()`` registers with."""
        return Enrolment(self.device_id, state, self.device_class, group,
                         device_auth.public_pem(self.key), installed)  # fmt: skip


def installed(component: str = "app", release_id: str = "", sequence: int = 0,
              known_good: str = "", known_good_sequence: int = 0) -> pb.InstalledComponent:  # fmt: skip
    return pb.InstalledComponent(
        component=component, release_id=release_id, sequence_number=sequence,
        known_good_release_id=known_good, known_good_sequence_number=known_good_sequence,
    )  # fmt: skip


class Link:
    """One device's Session stream."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.call = pb_grpc.GatewayStub(channel).Session()

    async def send(self, **kind: Any) -> None:
        await self.call.write(pb.DeviceMessage(**kind))

    async def read(self) -> pb.GatewayMessage:
        message = await asyncio.wait_for(self.call.read(), READ_S)
        assert message is not grpc.aio.EOF, "the gateway ended the stream"
        return message  # type: ignore[no-any-return]

    async def read_kind(self, kind: str) -> Any:
        """The next message of this kind (heartbeat answers skipped)."""
        for _ in range(20):
            message = await self.read()
            if message.WhichOneof("kind") == kind:
                return getattr(message, kind)
            assert message.WhichOneof("kind") == "heartbeat", message
        raise AssertionError(f"no {kind}")

    async def refusal(self) -> str:
        """The error code the stream ended with."""
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            for _ in range(20):
                await asyncio.wait_for(self.call.read(), READ_S)
        trailing = dict(caught.value.trailing_metadata() or ())
        return str(trailing.get("fleetsuit-error-code", caught.value.code().name))

    async def register(
        self, device: Device, *, items: tuple[pb.InstalledComponent, ...] = (installed(),),
        previous: str = "", with_key: bool = False, sign_for: str | None = None,
        key: device_auth.DevicePrivateKey | None = None, vendor: str = "",
    ) -> pb.Challenge:  # fmt: skip
        await self.send(hello=pb.Hello(device_id=device.device_id))
        challenge = (await self.read()).challenge
        message = device_auth.registration_message(
            sign_for or challenge.gateway_id, device.device_id, challenge.nonce
        )
        await self.send(register=pb.Register(
            device_id=device.device_id,
            signature=device_auth.sign(key or device.key, message),
            public_key_pem=device_auth.public_pem(device.key) if with_key else b"",
            device_class=device.device_class, installed=list(items),
            device_time_unix_ms=T0, previous_gateway_id=previous, vendor_domain=vendor,
        ))  # fmt: skip
        return challenge

    async def welcome(self, device: Device, **kwargs: Any) -> pb.Welcome:
        await self.register(device, **kwargs)
        message = await self.read()
        assert message.WhichOneof("kind") == "welcome", message
        return message.welcome

    def close(self) -> None:
        self.call.cancel()


@asynccontextmanager
async def link(gateway: Gateway) -> AsyncIterator[Link]:
    async with insecure_channel(gateway.address) as channel:
        stream = Link(channel)
        try:
            yield stream
        finally:
            stream.close()


def release(
    release_id: str = "app@2", sequence: int = 2, *, state: str = "active",
    classes: tuple[str, ...] = (CLASS,), policy: rollout.Policy | None = None,
) -> rollout.ReleaseView:  # fmt: skip
    return rollout.ReleaseView(
        release_id, "app", classes, sequence, state, policy or rollout.Policy(),
        payload_cid="sha256:" + "ab" * 32, payload_size=1234,
    )  # fmt: skip


# ---------------------------------------------------------------- the pure rule


def test_plan_sends_only_what_changed() -> None:
    offer = rollout.Decision("app", rollout.Action.INSTALL, "app@2", 5)
    first, sent = plan({"app": offer}, {}, {})
    assert first == [offer]
    again, sent = plan({"app": offer}, {}, sent)
    assert again == []  # the same offer is not repeated
    stay = rollout.Decision("app", rollout.Action.STAY, "", reason="paused")
    held, sent = plan({"app": stay}, {}, sent)
    assert held == [replace(stay, release_id="app@2")]  # it names the offer withdrawn
    assert sent == {"app": Sent(rollout.Action.STAY)}
    assert plan({"app": stay}, {}, sent)[0] == []  # a hold is said once


def test_plan_says_nothing_when_the_device_did_what_it_was_told() -> None:
    offer = rollout.Decision("app", rollout.Action.INSTALL, "app@2", 5)
    _, sent = plan({"app": offer}, {}, {})
    done = {"app": rollout.Installed("app", "app@2", 2)}
    stay = rollout.Decision("app", rollout.Action.STAY, "app@2")
    assert plan({"app": stay}, done, sent) == ([], {})


# ---------------------------------------------------------------- registration


@pytest.mark.asyncio
async def test_an_enrolled_device_is_challenged_then_welcomed() -> None:
    device = Device("d-ok")
    ledger = MemoryLedger(devices={device.device_id: device.enrolment()})
    async with running(ledger, heartbeat_interval_ms=5000) as gw, link(gw) as stream:
        await stream.send(hello=pb.Hello(device_id=device.device_id))
        challenge = (await stream.read()).challenge
        assert len(challenge.nonce) == 32 and challenge.gateway_id == ME
        assert challenge.gateway_time_unix_ms == T0
        message = device_auth.registration_message(ME, device.device_id, challenge.nonce)
        await stream.send(register=pb.Register(
            device_id=device.device_id, signature=device_auth.sign(device.key, message),
            installed=[installed()]))  # fmt: skip
        welcome = (await stream.read()).welcome
        assert welcome.gateway_id == ME and welcome.heartbeat_interval_ms == 5000
        assert welcome.gateway_time_unix_ms == T0
        assert [g.gateway_id for g in welcome.gateways] == [ME]
        assert welcome.gateways[0].http_address == HTTP
        await wait_for(lambda: ready(len(gw.runtime.hub.sessions) == 1), READ_S, "the session")
        assert gw.metric("fleetsuit_gateway_registrations_total", {"result": "accepted"}) == 1
        assert gw.metric("fleetsuit_gateway_sessions") == 1
        assert gw.metric("fleetsuit_gateway_devices_by_version",
                         {"component": "app", "release": "factory"}) == 1  # fmt: skip


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("state", "code"),
    [("pending", "DEVICE_PENDING"), ("rejected", "DEVICE_REJECTED"), ("revoked", "DEVICE_REVOKED")],
)
async def test_a_device_not_accepted_is_refused_with_its_state(state: str, code: str) -> None:
    device = Device("d-" + state)
    ledger = MemoryLedger(devices={device.device_id: device.enrolment(state)})
    async with running(ledger) as gw, link(gw) as stream:
        await stream.register(device)
        assert await stream.refusal() == code
        assert gw.metric("fleetsuit_gateway_registrations_total", {"result": code}) == 1
        assert not gw.runtime.hub.sessions


@pytest.mark.asyncio
async def test_an_unknown_device_without_a_key_is_refused_as_unknown() -> None:
    async with running() as gw, link(gw) as stream:
        await stream.register(Device("d-nobody"))
        assert await stream.refusal() == "DEVICE_UNKNOWN"
        assert gw.ledger.submitted == []


@pytest.mark.asyncio
async def test_an_unknown_device_with_a_key_is_recorded_as_pending_once() -> None:
    device = Device("d-new")
    async with running() as gw:
        for _ in range(2):
            async with link(gw) as stream:
                await stream.register(device, with_key=True)
                assert await stream.refusal() == "DEVICE_PENDING"
        requests = [w for w in gw.ledger.submitted if isinstance(w, EnrolmentRequestWrite)]
        assert requests == [EnrolmentRequestWrite(
            device.device_id, CLASS, device_auth.public_pem(device.key), ME)]  # fmt: skip


@pytest.mark.asyncio
async def test_an_unknown_device_whose_key_does_not_sign_is_not_recorded() -> None:
    device = Device("d-liar")
    async with running() as gw, link(gw) as stream:
        await stream.register(device, with_key=True, key=device_auth.new_device_key())
        assert await stream.refusal() == "BAD_SIGNATURE"
        assert gw.ledger.attempts == []


@pytest.mark.asyncio
async def test_a_signature_by_another_key_is_refused() -> None:
    device = Device("d-stolen-id")
    ledger = MemoryLedger(devices={device.device_id: device.enrolment()})
    async with running(ledger) as gw, link(gw) as stream:
        await stream.register(device, key=device_auth.new_device_key())
        assert await stream.refusal() == "BAD_SIGNATURE"


@pytest.mark.asyncio
async def test_a_signature_made_for_another_gateway_is_refused() -> None:
    """Replay: a registration signed for g2 (same nonce) is no good at g1."""
    device = Device("d-replay")
    ledger = MemoryLedger(devices={device.device_id: device.enrolment()})
    async with running(ledger) as gw, link(gw) as stream:
        await stream.register(device, sign_for="g2")
        assert await stream.refusal() == "BAD_SIGNATURE"


@pytest.mark.asyncio
async def test_a_first_message_other_than_hello_is_a_protocol_error() -> None:
    async with running() as gw, link(gw) as stream:
        await stream.send(heartbeat=pb.Heartbeat(time_unix_ms=1))
        assert await stream.refusal() == "PROTOCOL_ERROR"


@pytest.mark.asyncio
async def test_a_register_that_does_not_come_in_time_is_a_protocol_error() -> None:
    async with running(register_timeout_ms=200) as gw, link(gw) as stream:
        await stream.send(hello=pb.Hello(device_id="d-slow"))
        assert (await stream.read()).WhichOneof("kind") == "challenge"
        assert await stream.refusal() == "PROTOCOL_ERROR"


@pytest.mark.asyncio
async def test_a_register_for_another_device_is_a_protocol_error() -> None:
    device = Device("d-a")
    ledger = MemoryLedger(devices={device.device_id: device.enrolment()})
    async with running(ledger) as gw, link(gw) as stream:
        await stream.send(hello=pb.Hello(device_id="d-b"))
        await stream.read()
        await stream.send(register=pb.Register(device_id="d-a", signature=b"x"))
        assert await stream.refusal() == "PROTOCOL_ERROR"


@pytest.mark.asyncio
async def test_a_device_revoked_in_session_is_disconnected() -> None:
    device = Device("d-gone")
    ledger = MemoryLedger(devices={device.device_id: device.enrolment()})
    async with running(ledger) as gw, link(gw) as stream:
        await stream.welcome(device)
        gw.ledger.enrol(device.enrolment("revoked"), action="revoke")
        assert await stream.refusal() == "DEVICE_REVOKED"


# ---------------------------------------------------------------- heartbeats


@pytest.mark.asyncio
async def test_a_heartbeat_is_answered_with_the_gateway_clock_and_an_echo() -> None:
    device = Device("d-hb")
    ledger = MemoryLedger(devices={device.device_id: device.enrolment()})
    async with running(ledger) as gw, link(gw) as stream:
        await stream.welcome(device)
        gw.clock.now_ms = T0 + 777
        await stream.send(heartbeat=pb.Heartbeat(time_unix_ms=T0 - 30_000))
        answer = (await stream.read()).heartbeat
        assert answer.time_unix_ms == T0 + 777 and answer.echo_time_unix_ms == T0 - 30_000


@pytest.mark.asyncio
async def test_a_silent_session_is_closed_and_counted() -> None:
    device = Device("d-quiet")
    ledger = MemoryLedger(devices={device.device_id: device.enrolment()})
    async with running(ledger, heartbeat_interval_ms=100, missed_heartbeats=3) as gw, \
            link(gw) as stream:  # fmt: skip
        await stream.welcome(device)
        assert await stream.refusal() == "HEARTBEAT_MISSED"
        assert gw.metric("fleetsuit_gateway_missed_heartbeats_total") == 1
        assert gw.metric("fleetsuit_gateway_sessions") == 0


# ---------------------------------------------------------------- decisions


@pytest.mark.asyncio
async def test_an_offer_goes_out_when_a_release_appears_and_a_hold_when_it_pauses() -> None:
    device = Device("d-offer")
    ledger = MemoryLedger(devices={device.device_id: device.enrolment()})
    async with running(ledger, offer_lead_ms=120_000) as gw, link(gw) as stream:
        await stream.welcome(device)
        start = T0 + 60_000
        gw.ledger.publish(release(policy=rollout.Policy(start_at_unix_ms=start)),
                          envelope=b"signed envelope")  # fmt: skip
        offer = await stream.read_kind("offer")
        assert (offer.release_id, offer.component, offer.sequence_number) == ("app@2", "app", 2)
        assert offer.envelope == b"signed envelope" and offer.payload_size == 1234
        assert offer.switch_at_unix_ms == start  # offered early (lead), switched at the start
        assert offer.payload_urls == [f"http://{HTTP}/v1/payloads/{offer.payload_cid}"]
        assert gw.payloads.pins == {offer.payload_cid}  # pinned while its rollout lasts
        await wait_for(lambda: ready(offer.payload_cid in gw.payloads.ensured), READ_S, "prefetch")
        gw.ledger.set_state("app@2", "paused")
        hold = await stream.read_kind("hold")
        assert hold.component == "app" and "paused" in hold.reason
        assert gw.metric("fleetsuit_gateway_offers_total", {"kind": "offer"}) == 1
        assert gw.metric("fleetsuit_gateway_offers_total", {"kind": "hold"}) == 1
        assert gw.metric("fleetsuit_gateway_devices_by_rollout_state", {"state": "current"}) == 1


@pytest.mark.asyncio
async def test_a_device_of_another_class_gets_no_offer() -> None:
    device = Device("d-other", device_class="class-b")
    ledger = MemoryLedger(devices={device.device_id: device.enrolment()})
    async with running(ledger) as gw, link(gw) as stream:
        await stream.welcome(device)
        gw.ledger.publish(release())
        await stream.send(heartbeat=pb.Heartbeat(time_unix_ms=1))
        assert (await stream.read()).WhichOneof("kind") == "heartbeat"
        await stream.send(heartbeat=pb.Heartbeat(time_unix_ms=2))
        assert (await stream.read()).WhichOneof("kind") == "heartbeat"


@pytest.mark.asyncio
async def test_a_device_of_another_vendor_gets_no_offer_for_a_class_of_the_same_name() -> None:
    theirs, ours = Device("d-theirs"), Device("d-ours")
    ledger = MemoryLedger(devices={d.device_id: d.enrolment() for d in (theirs, ours)})
    async with running(ledger) as gw, link(gw) as other, link(gw) as same:
        await other.welcome(theirs, vendor="other.example")
        await same.welcome(ours, vendor="acme.example")
        gw.ledger.publish(replace(release(), vendor_domain="acme.example"))
        assert (await same.read_kind("offer")).release_id == "app@2"
        for beat in (1, 2):  # heartbeats answered, and nothing else
            await other.send(heartbeat=pb.Heartbeat(time_unix_ms=beat))
            assert (await other.read()).WhichOneof("kind") == "heartbeat"


@pytest.mark.asyncio
async def test_the_ledger_learns_the_versions_a_device_registers_with_when_they_differ() -> None:
    """A device that fell back or was flashed while away, or never reported:
    the gateway records what it runs (``version`` events, in a key space of
    their own), and nothing when the ledger already says so."""
    moved, same = Device("d-moved"), Device("d-same")
    ledger = MemoryLedger(devices={
        moved.device_id: moved.enrolment(installed=(("app", "app@2", 2),)),
        same.device_id: same.enrolment(installed=(("app", "app@3", 3),)),
    })  # fmt: skip
    async with running(ledger) as gw, link(gw) as first, link(gw) as second:
        await first.welcome(moved, items=(installed("app", "app@1", 1),))
        await second.welcome(same, items=(installed("app", "app@3", 3),))
        await wait_for(lambda: ready(len(gw.ledger.submitted) == 1), READ_S, "the versions recorded")
        [write] = gw.ledger.submitted
        assert isinstance(write, DeviceEventsWrite) and write.device_id == "d-moved"
        assert write.client_id == "device-versions/d-moved" and write.seq > 0
        assert [(e.kind, e.component, e.release_id, e.sequence_number) for e in write.events] == [
            ("version", "app", "app@1", 1)]
        entry = convert.write_to_pb(write)
        assert entry.client_id == "device-versions/d-moved" and entry.request_id == write.seq


@pytest.mark.asyncio
async def test_a_device_on_an_ended_experiment_switches_back_at_its_end_time() -> None:
    device = Device("d-exp")
    end = T0 + 10_000
    ledger = MemoryLedger(devices={device.device_id: device.enrolment()})
    ledger.publish(release("app@2", 2))
    ledger.publish(release("app@3", 3, policy=rollout.Policy(experimental=True, end_at_unix_ms=end)))
    on_experiment = installed("app", "app@3", 3, known_good="app@2", known_good_sequence=2)
    async with running(ledger) as gw, link(gw) as stream:
        await stream.welcome(device, items=(on_experiment,))
        await stream.send(heartbeat=pb.Heartbeat(time_unix_ms=1))
        assert (await stream.read()).WhichOneof("kind") == "heartbeat"  # nothing to do yet
        gw.clock.now_ms = end + 1
        gw.runtime.view.recheck()
        back = await stream.read_kind("switch_back")
        assert (back.component, back.release_id, back.switch_at_unix_ms) == ("app", "app@2", end)
        assert gw.payloads.pins == {release().payload_cid}  # the experiment's is unpinned


@pytest.mark.asyncio
async def test_a_device_that_installed_its_offer_is_told_nothing_more() -> None:
    device = Device("d-done")
    ledger = MemoryLedger(devices={device.device_id: device.enrolment()})
    ledger.publish(release())
    async with running(ledger) as gw, link(gw) as stream:
        await stream.welcome(device)
        assert (await stream.read_kind("offer")).release_id == "app@2"
        await stream.send(heartbeat=pb.Heartbeat(time_unix_ms=1, installed=[installed("app", "app@2", 2)]))
        assert (await stream.read()).WhichOneof("kind") == "heartbeat"
        await stream.send(heartbeat=pb.Heartbeat(time_unix_ms=2, installed=[installed("app", "app@2", 2)]))
        assert (await stream.read()).WhichOneof("kind") == "heartbeat"
        assert gw.metric("fleetsuit_gateway_devices_by_version",
                         {"component": "app", "release": "app@2"}) == 1  # fmt: skip
        assert gw.metric("fleetsuit_gateway_devices_by_version",
                         {"component": "app", "release": "factory"}) == 0  # fmt: skip


# ---------------------------------------------------------------- placement


def device_whose_primary_is(gateway: str, among: list[str]) -> Device:
    for i in range(1000):
        if placement.rank(f"d-{i}", among)[0] == gateway:
            return Device(f"d-{i}")
    raise AssertionError("no such device")


def other_gateway(gateway_id: str = "g2") -> tuple[str, GatewayAddress]:
    endpoint = f"127.0.0.1:1{len(gateway_id)}404"
    return endpoint, GatewayAddress(gateway_id, endpoint, f"127.0.0.1:1{len(gateway_id)}405")


@pytest.mark.asyncio
async def test_a_device_whose_primary_is_another_live_gateway_is_redirected() -> None:
    endpoint, g2 = other_gateway()
    cluster = MemoryCluster(gateways={endpoint: g2})
    device = device_whose_primary_is("g2", [ME, "g2"])
    ledger = MemoryLedger(devices={device.device_id: device.enrolment()})
    async with running(ledger, cluster=cluster) as gw:
        await wait_for(lambda: ready("g2" in gw.runtime.directory.stable()), READ_S, "g2 stable")
        async with link(gw) as stream:
            welcome = await stream.welcome(device)
            assert [g.gateway_id for g in welcome.gateways] == ["g2", ME]
            redirect = await stream.read_kind("redirect")
            assert redirect.gateway.gateway_id == "g2" and redirect.gateway.grpc_address == endpoint
        async with link(gw) as stream:  # it came from g2: it stays
            await stream.welcome(device, previous="g2")
            await stream.send(heartbeat=pb.Heartbeat(time_unix_ms=1))
            assert (await stream.read()).WhichOneof("kind") == "heartbeat"
        assert gw.metric("fleetsuit_gateway_failovers_total") == 1
        assert gw.metric("fleetsuit_gateway_redirects_total") == 1


@pytest.mark.asyncio
async def test_sessions_are_redirected_when_their_primary_comes_back() -> None:
    endpoint, g2 = other_gateway()
    cluster = MemoryCluster(gateways={endpoint: g2}, silent={endpoint})
    device = device_whose_primary_is("g2", [ME, "g2"])
    ledger = MemoryLedger(devices={device.device_id: device.enrolment()})
    async with running(ledger, cluster=cluster) as gw, link(gw) as stream:
        await stream.welcome(device, previous="g2")
        cluster.silent.clear()
        redirect = await stream.read_kind("redirect")
        assert redirect.gateway.gateway_id == "g2"


@pytest.mark.asyncio
async def test_draining_sends_every_session_to_its_next_gateway() -> None:
    endpoint, g2 = other_gateway()
    cluster = MemoryCluster(gateways={endpoint: g2})
    device = device_whose_primary_is(ME, [ME, "g2"])
    ledger = MemoryLedger(devices={device.device_id: device.enrolment()})
    async with running(ledger, cluster=cluster) as gw, link(gw) as stream:
        await wait_for(lambda: ready("g2" in gw.runtime.directory.live), READ_S, "g2 live")
        await stream.welcome(device)
        assert gw.runtime.drain() == 1
        redirect = await stream.read_kind("redirect")
        assert redirect.gateway.gateway_id == "g2" and "stopping" in redirect.reason
        async with link(gw) as late:  # and newcomers are turned away
            await late.send(hello=pb.Hello(device_id=device.device_id))
            assert await late.refusal() == "GATEWAY_DRAINING"


@pytest.mark.asyncio
async def test_a_gateway_cut_off_from_the_ledger_hands_its_devices_over_and_takes_them_again() -> None:
    """Its node's ledger is gone for longer than ledger_lost_ms: the gateway
    could tell its devices of no new release, so it sends them to the next
    live gateway and turns newcomers away; once it follows the ledger again
    it takes devices again. Not before the delay, and with no other gateway
    live it keeps them (a partitioned minority serves what it has)."""
    endpoint, g2 = other_gateway()
    cluster = MemoryCluster(gateways={endpoint: g2})
    device = device_whose_primary_is(ME, [ME, "g2"])
    ledger = MemoryLedger(devices={device.device_id: device.enrolment()})
    async with running(ledger, cluster=cluster, ledger_lost_ms=30_000) as gw, link(gw) as stream:
        await wait_for(lambda: ready("g2" in gw.runtime.directory.live), READ_S, "g2 live")
        await stream.welcome(device)
        ledger.unavailable = True
        ledger.cut()
        await wait_for(lambda: ready(gw.runtime.view.lost_since_ms is not None), READ_S, "the ledger lost")
        gw.clock.now_ms += 29_000
        gw.runtime.check_ledger()
        assert not gw.runtime.hub.cut_off  # not yet
        gw.clock.now_ms += 1_000
        gw.runtime.check_ledger()
        assert gw.runtime.hub.cut_off
        redirect = await stream.read_kind("redirect")
        assert redirect.gateway.gateway_id == "g2" and "cannot reach the ledger" in redirect.reason
        assert gw.metric("fleetsuit_gateway_ledger_cut_off") == 1
        async with link(gw) as late:
            await late.send(hello=pb.Hello(device_id=device.device_id))
            assert await late.refusal() == "LEDGER_UNAVAILABLE"
        ledger.unavailable = False
        await wait_for(lambda: ready(gw.runtime.view.lost_since_ms is None), READ_S, "the ledger back")
        gw.runtime.check_ledger()
        assert not gw.runtime.hub.cut_off and gw.metric("fleetsuit_gateway_ledger_cut_off") == 0
        async with link(gw) as back:
            await back.welcome(device)


@pytest.mark.asyncio
async def test_a_gateway_cut_off_from_the_ledger_with_no_other_gateway_keeps_its_devices() -> None:
    device = Device("d-alone")
    ledger = MemoryLedger(devices={device.device_id: device.enrolment()})
    async with running(ledger, ledger_lost_ms=1_000) as gw, link(gw) as stream:
        await stream.welcome(device)
        ledger.unavailable = True
        ledger.cut()
        await wait_for(lambda: ready(gw.runtime.view.lost_since_ms is not None), READ_S, "the ledger lost")
        gw.clock.now_ms += 5_000
        gw.runtime.check_ledger()
        assert not gw.runtime.hub.cut_off  # nobody to hand them to
        await stream.send(heartbeat=pb.Heartbeat(time_unix_ms=1))
        assert (await stream.read()).WhichOneof("kind") == "heartbeat"  # still served


# ---------------------------------------------------------------- Info


@pytest.mark.asyncio
async def test_info_tells_sessions_versions_and_the_ledger_height() -> None:
    device = Device("d-info")
    ledger = MemoryLedger(devices={device.device_id: device.enrolment()})
    ledger.publish(release())
    async with running(ledger) as gw, link(gw) as stream:
        await stream.welcome(device, items=(installed("app", "app@2", 2),))
        async with insecure_channel(gw.address) as channel:
            info = await pb_grpc.GatewayStub(channel).Info(pb.GatewayInfoRequest(), timeout=READ_S)
        assert info.self.gateway_id == ME and info.self.grpc_address == gw.address
        assert info.sessions == 1 and dict(info.devices_by_version) == {"app@app@2": 1}
        assert [g.gateway_id for g in info.live_gateways] == [ME]
        assert info.ledger_height == ledger.height


@pytest.mark.asyncio
async def test_the_view_follows_the_ledger_again_after_the_watch_breaks() -> None:
    device = Device("d-watch")
    ledger = MemoryLedger(devices={device.device_id: device.enrolment()})
    async with running(ledger) as gw, link(gw) as stream:
        await stream.welcome(device)
        await wait_for(lambda: ready(ledger.watching == 1), READ_S, "the watch")
        ledger.cut()
        await wait_for(lambda: ready(ledger.watching == 1 and gw.metric(
            "fleetsuit_gateway_ledger_reconnects_total") == 1), READ_S, "a new watch")  # fmt: skip
        ledger.publish(replace(release(), release_id="app@5", sequence_number=5))
        assert (await stream.read_kind("offer")).release_id == "app@5"
