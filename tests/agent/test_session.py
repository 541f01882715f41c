"""The agent against fake gateways (real grpc.aio servers on 127.0.0.1:0):
registration with a signature the gateway checks, heartbeats, an offer
installed and switched at its time whatever the device's clock says,
failover with reports resent, redirect, refusals of tampered releases,
and registration refusals."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import grpc
import pytest
import pytest_asyncio

from agent.agent import Agent, AgentConfig, AgentDeps
from agent.health import CommandHealthCheck, HealthCheck
from agent.model import FACTORY, Report
from agent.procedure import Switched
from agent.verify import load_trust_anchors
from fleetsuit import device_auth
from fleetsuit.v1 import gateway_pb2 as pb
from tests.support.wait import ready, wait_for

from .fakes import (
    COMPONENT,
    FakeGateway,
    PayloadServer,
    Publisher,
    cid_of,
    device_key,
    now_ms,
    offer,
    offer_pb,
    start_gateway,
)

PUB = Publisher.new(1)
PAYLOAD = b"release two " * 4000
DEVICE = "dev-1"
KEY = device_key(DEVICE)
KEYS = {DEVICE: device_auth.public_pem(KEY)}
TIMEOUT_S = 15


@dataclass
class Recorder:
    switches: list[tuple[Switched, int]] = field(default_factory=list)  # with the true time
    reports: list[Report] = field(default_factory=list)

    def switched(self, agent: Agent, switched: Switched) -> None:
        self.switches.append((switched, now_ms()))

    def reported(self, agent: Agent, report: Report) -> None:
        self.reports.append(report)


@dataclass
class Rig:
    tmp: Path
    payloads: PayloadServer
    gateways: list[tuple[FakeGateway, grpc.aio.Server, str]] = field(default_factory=list)
    tasks: list[tuple[asyncio.Task[str], asyncio.Event]] = field(default_factory=list)

    async def gateway(self, gateway_id: str, **kwargs: object) -> tuple[FakeGateway, str]:
        fake = FakeGateway(gateway_id, dict(KEYS), **kwargs)  # type: ignore[arg-type]
        server, address = await start_gateway(fake)
        self.gateways.append((fake, server, address))
        return fake, address

    def rank(self) -> None:
        """Every fake's Welcome ranks the fakes in creation order."""
        ranked = [pb.GatewayAddress(gateway_id=f.gateway_id, grpc_address=a, http_address=self.payloads.address)
                  for f, _, a in self.gateways]
        for fake, _, _ in self.gateways:
            fake.ranked = ranked

    def agent(self, endpoints: tuple[str, ...], *, skew_ms: int = 0, recorder: Recorder | None = None,
              device_id: str = DEVICE, health: HealthCheck | None = None) -> Agent:
        config = AgentConfig(device_id=device_id, gateways=endpoints, data_dir=self.tmp / device_id,
                             components=(COMPONENT,), retry_max_ms=300, handshake_timeout_ms=2_000,
                             pending_retry_ms=200)
        deps = AgentDeps(key=KEY if device_id == DEVICE else device_key(device_id),
                         anchors=load_trust_anchors([PUB.public_pem]),
                         local_clock=lambda: now_ms() + skew_ms, observer=recorder or Recorder(),
                         health=health)
        return Agent(config, deps)

    def start(self, agent: Agent) -> asyncio.Task[str]:
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))
        self.tasks.append((task, stop))
        return task


@pytest_asyncio.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    payloads = PayloadServer({cid_of(PAYLOAD): PAYLOAD})
    await payloads.start()
    r = Rig(tmp_path, payloads)
    try:
        yield r
    finally:
        for _, stop in r.tasks:
            stop.set()
        for task, _ in r.tasks:
            await asyncio.wait_for(task, 10)
        for _, server, _ in r.gateways:
            await server.stop(0)
        await payloads.stop()


def running(agent: Agent) -> str:
    (installed,) = agent.installed()
    return installed.release_id


@pytest.mark.asyncio
async def test_registers_with_a_good_signature_and_heartbeats(rig: Rig) -> None:
    fake, address = await rig.gateway("gw-a")
    agent = rig.agent((address,))
    rig.start(agent)
    await wait_for(lambda: ready(DEVICE in fake.sessions and fake.sessions[DEVICE].heartbeats >= 3),
                   TIMEOUT_S, "three heartbeats")
    reg = fake.sessions[DEVICE].register
    assert reg.device_class == "default" and reg.public_key_pem == KEYS[DEVICE]
    assert [(i.component, i.release_id) for i in reg.installed] == [(COMPONENT, FACTORY)]
    assert agent.clock.known and agent.runner.stats.sessions == 1


@pytest.mark.asyncio
@pytest.mark.parametrize("skew_ms", [30_000, -30_000])
async def test_an_offer_is_installed_and_switched_at_its_gateway_time(rig: Rig, skew_ms: int) -> None:
    fake, address = await rig.gateway("gw-a")
    recorder = Recorder()
    agent = rig.agent((address,), skew_ms=skew_ms, recorder=recorder)
    rig.start(agent)
    await wait_for(lambda: ready(DEVICE in fake.sessions), TIMEOUT_S, "a session")
    switch_at = now_ms() + 1_500
    fake.send(DEVICE, offer_pb(offer(PUB, 2, PAYLOAD, switch_at=switch_at,
                                     urls=(rig.payloads.url(cid_of(PAYLOAD)),))))
    await wait_for(lambda: ready(any(e.kind == "installed" for e in fake.events(DEVICE))),
                   TIMEOUT_S, "the installed report")
    (switched, true_ms), = recorder.switches
    assert true_ms >= switch_at, "switched before switch_at in gateway time"
    assert switched.at_unix_ms >= switch_at
    (event,) = fake.events(DEVICE)
    assert (event.release_id, event.sequence_number, event.at_unix_ms >= switch_at) == (f"{COMPONENT}@2", 2, True)
    assert running(agent) == f"{COMPONENT}@2"
    slot = rig.tmp / DEVICE / "slots" / switched.slot / COMPONENT
    assert slot.read_bytes() == PAYLOAD
    await wait_for(lambda: ready(not agent.procedure.state.unacked), TIMEOUT_S, "the ack")
    await wait_for(lambda: ready(fake.sessions[DEVICE].installed[0].release_id == f"{COMPONENT}@2"),
                   TIMEOUT_S, "a heartbeat with the new release")


@pytest.mark.asyncio
async def test_failover_to_the_backup_resends_unacknowledged_reports(rig: Rig) -> None:
    primary, a = await rig.gateway("gw-a", auto_ack=False)
    backup, _ = await rig.gateway("gw-b")
    rig.rank()
    agent = rig.agent((a,))
    rig.start(agent)
    await wait_for(lambda: ready(DEVICE in primary.sessions), TIMEOUT_S, "a session with the primary")
    primary.send(DEVICE, offer_pb(offer(Publisher.new(5), 2, PAYLOAD)))  # refused: a report
    await wait_for(lambda: ready(bool(primary.reports)), TIMEOUT_S, "the report at the primary")
    assert agent.procedure.state.unacked  # the primary never acknowledged it
    await rig.gateways[0][1].stop(0)
    await wait_for(lambda: ready(bool(backup.reports)), TIMEOUT_S, "the report resent to the backup")
    assert [r.seq for _, r in backup.reports] == [r.seq for _, r in primary.reports]
    await wait_for(lambda: ready(not agent.procedure.state.unacked), TIMEOUT_S, "the backup's ack")
    stats = agent.runner.stats
    assert stats.failovers == 1 and stats.gateway_id == "gw-b"
    assert backup.sessions[DEVICE].register.previous_gateway_id == "gw-a"
    assert len(stats.failover_ms) == 1


@pytest.mark.asyncio
async def test_a_report_without_an_ack_is_sent_again_on_the_same_session(rig: Rig) -> None:
    """A gateway that could not commit a report sends no ack (no leader for a
    while); the session may outlive that, so the device sends the report
    again every few intervals until it is acknowledged, then stops."""
    gateway, a = await rig.gateway("gw-a", auto_ack=False)
    rig.rank()
    agent = rig.agent((a,))
    rig.start(agent)
    await wait_for(lambda: ready(DEVICE in gateway.sessions), TIMEOUT_S, "a session")
    gateway.send(DEVICE, offer_pb(offer(Publisher.new(5), 2, PAYLOAD)))  # refused: a report
    await wait_for(lambda: ready(len(gateway.reports) >= 3), TIMEOUT_S, "the report sent again, twice")
    seqs = {r.seq for _, r in gateway.reports}
    assert len(seqs) == 1 and agent.runner.stats.sessions == 1  # the same report, the same session
    gateway.ack(DEVICE, seqs.pop())
    await wait_for(lambda: ready(not agent.procedure.state.unacked), TIMEOUT_S, "the ack")
    sent = len(gateway.reports)
    # Not waiting for something: two resend periods pass and nothing more is sent.
    await asyncio.sleep(2 * 3 * gateway.heartbeat_ms / 1000)
    assert len(gateway.reports) == sent


@pytest.mark.asyncio
async def test_a_silent_gateway_is_left_after_two_intervals(rig: Rig) -> None:
    primary, a = await rig.gateway("gw-a")
    backup, _ = await rig.gateway("gw-b")
    rig.rank()
    agent = rig.agent((a,))
    rig.start(agent)
    await wait_for(lambda: ready(DEVICE in primary.sessions), TIMEOUT_S, "a session with the primary")
    primary.mute = True  # its answers go nowhere: the gateway hangs
    await wait_for(lambda: ready(DEVICE in backup.sessions), TIMEOUT_S, "the backup")
    assert agent.runner.stats.failovers == 1
    assert agent.runner.stats.failover_intervals[0] >= 2


@pytest.mark.asyncio
async def test_a_redirect_goes_to_the_named_gateway(rig: Rig) -> None:
    first, a = await rig.gateway("gw-a")
    second, b = await rig.gateway("gw-b")
    agent = rig.agent((a,))
    rig.start(agent)
    await wait_for(lambda: ready(DEVICE in first.sessions), TIMEOUT_S, "a session")
    first.send(DEVICE, pb.GatewayMessage(redirect=pb.Redirect(
        gateway=pb.GatewayAddress(gateway_id="gw-b", grpc_address=b), reason="draining")))
    await wait_for(lambda: ready(DEVICE in second.sessions), TIMEOUT_S, "the redirect")
    stats = agent.runner.stats
    assert (stats.redirects, stats.failovers, stats.gateway_id) == (1, 0, "gw-b")


@pytest.mark.asyncio
@pytest.mark.parametrize("attack", ["envelope", "payload"])
async def test_a_tampered_release_is_refused_and_the_device_stays(rig: Rig, attack: str) -> None:
    fake, address = await rig.gateway("gw-a")
    agent = rig.agent((address,))
    rig.start(agent)
    await wait_for(lambda: ready(DEVICE in fake.sessions), TIMEOUT_S, "a session")
    o = offer(PUB, 2, PAYLOAD, urls=(rig.payloads.url(cid_of(PAYLOAD)),))
    if attack == "envelope":
        raw = bytearray(o.envelope)
        raw[-5] ^= 1
        o = replace(o, envelope=bytes(raw))
    else:
        rig.payloads.tamper = True
    fake.send(DEVICE, offer_pb(o))
    await wait_for(lambda: ready(bool(fake.events(DEVICE))), TIMEOUT_S, "a report")
    (event,) = fake.events(DEVICE)
    detail = json.loads(event.detail)
    assert event.kind == "refused" and event.release_id == f"{COMPONENT}@2"
    assert detail["step"] == ("verify" if attack == "envelope" else "fetch")
    assert detail["code"] != "OK"
    assert running(agent) == FACTORY
    slot_b = rig.tmp / DEVICE / "slots" / "b" / COMPONENT
    assert not slot_b.exists()


@pytest.mark.asyncio
@pytest.mark.parametrize(("expected", "reports", "after"), [
    (f"{COMPONENT}@2", ["installed"], f"{COMPONENT}@2"),
    (f"{COMPONENT}@9", ["install_failed", "fell_back"], FACTORY),
])
async def test_the_health_check_command_decides_and_a_failure_falls_back(
        rig: Rig, expected: str, reports: list[str], after: str) -> None:
    fake, address = await rig.gateway("gw-a")
    check = CommandHealthCheck(
        f'sh -c \'test -s "$FLEETSUIT_SLOT_PATH" && test "$FLEETSUIT_RELEASE_ID" = {expected}\'', 5_000)
    agent = rig.agent((address,), health=check)
    rig.start(agent)
    await wait_for(lambda: ready(DEVICE in fake.sessions), TIMEOUT_S, "a session")
    fake.send(DEVICE, offer_pb(offer(PUB, 2, PAYLOAD, urls=(rig.payloads.url(cid_of(PAYLOAD)),))))
    await wait_for(lambda: ready(len(fake.events(DEVICE)) >= len(reports)), TIMEOUT_S, "the reports")
    assert [e.kind for e in fake.events(DEVICE)] == reports
    assert running(agent) == after


@pytest.mark.asyncio
async def test_a_rejected_device_stops_and_a_pending_one_retries(rig: Rig) -> None:
    fake, address = await rig.gateway("gw-a", refuse={DEVICE: "DEVICE_REJECTED", "dev-2": "DEVICE_PENDING"})
    rejected = rig.agent((address,))
    assert await asyncio.wait_for(rig.start(rejected), TIMEOUT_S) == "DEVICE_REJECTED"
    fake.keys["dev-2"] = device_auth.public_pem(device_key("dev-2"))
    pending = rig.agent((address,), device_id="dev-2")
    rig.start(pending)
    await wait_for(lambda: ready(pending.runner.stats.refusals.get("DEVICE_PENDING", 0) >= 2),
                   TIMEOUT_S, "two pending refusals")
    del fake.refuse["dev-2"]  # an operator accepted it
    await wait_for(lambda: ready("dev-2" in fake.sessions), TIMEOUT_S, "the accepted device's session")


@pytest.mark.asyncio
async def test_a_bad_signature_is_refused_by_the_gateway(rig: Rig) -> None:
    fake, address = await rig.gateway("gw-a")
    fake.keys[DEVICE] = device_auth.public_pem(device_key("someone else"))
    agent = rig.agent((address,))
    rig.start(agent)
    await wait_for(lambda: ready(bool(agent.runner.stats.refusals.get("BAD_SIGNATURE"))), TIMEOUT_S,
                   "a BAD_SIGNATURE refusal")
    assert DEVICE not in fake.sessions


@pytest.mark.asyncio
async def test_reports_survive_a_restart_of_the_agent(rig: Rig) -> None:
    fake, address = await rig.gateway("gw-a", auto_ack=False)
    agent = rig.agent((address,))
    task = rig.start(agent)
    await wait_for(lambda: ready(DEVICE in fake.sessions), TIMEOUT_S, "a session")
    fake.send(DEVICE, offer_pb(offer(Publisher.new(5), 2, PAYLOAD)))
    await wait_for(lambda: ready(bool(fake.reports)), TIMEOUT_S, "the report")
    rig.tasks[-1][1].set()
    await asyncio.wait_for(task, TIMEOUT_S)
    fake.auto_ack = True
    again = rig.agent((address,))  # a new process: the state file
    rig.start(again)
    await wait_for(lambda: ready(len(fake.reports) >= 2), TIMEOUT_S, "the report resent")
    assert fake.reports[0][1] == fake.reports[1][1]
    await wait_for(lambda: ready(not again.procedure.state.unacked), TIMEOUT_S, "the ack")
