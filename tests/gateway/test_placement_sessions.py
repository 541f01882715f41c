"""Where devices go, over a real grpc.aio gateway with the in-memory
cluster: redirects to a device's primary, back when it returns, draining,
and a gateway cut off from its node's ledger handing its devices over."""

from __future__ import annotations

import dataclasses

import pytest

from fleetsuit.v1 import gateway_pb2 as pb
from services.gateway.ports import MemoryCluster, MemoryLedger
from tests.support.wait import ready, wait_for

from .harness import ME, READ_S, Device, device_whose_primary_is, link, other_gateway, running


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
async def test_a_device_that_left_a_live_primary_stays_until_that_gateway_restarts() -> None:
    """The device came from g2, which this gateway's directory still sees
    live (g2 restarted between two refreshes, or the device alone cannot
    reach it): it is not sent back while g2 is the same process, however
    many refreshes pass; once g2 answers with a new start time (it
    restarted), the device is sent back to it."""
    endpoint, g2 = other_gateway()
    g2 = dataclasses.replace(g2, started_unix_ms=1_000)
    cluster = MemoryCluster(gateways={endpoint: g2})
    device = device_whose_primary_is("g2", [ME, "g2"])
    ledger = MemoryLedger(devices={device.device_id: device.enrolment()})
    async with running(ledger, cluster=cluster) as gw:
        await wait_for(lambda: ready("g2" in gw.runtime.directory.stable()), READ_S, "g2 stable")
        async with link(gw) as stream:
            await stream.welcome(device, previous="g2")
            seen = gw.runtime.directory.refreshes
            await wait_for(lambda: ready(gw.runtime.directory.refreshes >= seen + 5), READ_S, "five refreshes")
            await stream.send(heartbeat=pb.Heartbeat(time_unix_ms=1))
            assert (await stream.read()).WhichOneof("kind") == "heartbeat"  # no redirect before it
            assert gw.metric("fleetsuit_gateway_redirects_total") == 0
            cluster.gateways[endpoint] = dataclasses.replace(g2, started_unix_ms=2_000)
            redirect = await stream.read_kind("redirect")
            assert redirect.gateway.gateway_id == "g2" and redirect.reason == "your primary gateway is back"
            assert redirect.gateway.started_unix_ms == 2_000
        assert gw.metric("fleetsuit_gateway_redirects_total") == 1


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
