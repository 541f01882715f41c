"""Device sessions over a real grpc.aio gateway on 127.0.0.1:0, with the
in-memory ledger and cluster (services/gateway/ports.py) and an injected
clock (``harness.py``): registration and every refusal, heartbeats, offers,
holds, switch backs, silence, Info (reports over a session:
test_reports.py; redirects, draining and a cut-off ledger:
test_placement_sessions.py)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from fleetsuit import device_auth
from fleetsuit.grpcutil import insecure_channel
from fleetsuit.v1 import gateway_pb2 as pb
from fleetsuit.v1 import gateway_pb2_grpc as pb_grpc
from services.gateway import convert, rollout
from services.gateway.model import (
    DeviceEventsWrite,
    EnrolmentRequestWrite,
)
from services.gateway.ports import MemoryLedger
from services.gateway.sessions import Sent, plan
from tests.support.wait import ready, wait_for

from .harness import (
    CLASS,
    HTTP,
    ME,
    READ_S,
    T0,
    Device,
    installed,
    link,
    release,
    running,
)

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
async def test_a_vendor_domain_longer_than_a_dns_name_is_a_protocol_error() -> None:
    device = Device("d-vendor")
    ledger = MemoryLedger(devices={device.device_id: device.enrolment()})
    async with running(ledger) as gw, link(gw) as stream:
        await stream.register(device, vendor="v" * 254)
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
        assert info.sessions == 1 and dict(info.devices_by_version) == {"app@2": 1}
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
