"""The fleet simulator against fake gateways: 200 devices register (keys
from the seed, as the enrolment CSV says), get an offer with a coordinated
switch time, and all finish on the release, none switching early though
their clocks are off by up to 30 s; faults are chosen by a stable hash."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from pathlib import Path

import pytest

from agent.enrol import fleet_public_pems, write_enrolment
from agent.simulator import Simulator, SimulatorConfig, fraction_of, write_summary
from agent.verify import load_trust_anchors
from fleetsuit.v1 import gateway_pb2 as pb
from tests.support.wait import ready, wait_for

from .fakes import (
    COMPONENT,
    DeviceSession,
    FakeGateway,
    PayloadServer,
    Publisher,
    cid_of,
    now_ms,
    offer,
    offer_pb,
    start_gateway,
)

PUB = Publisher.new(1)
PAYLOAD = b"fleet release " * 2000
RELEASE = f"{COMPONENT}@2"


def test_the_enrolment_csv_names_the_seeded_keys(tmp_path: Path) -> None:
    path = write_enrolment(tmp_path / "fleet.csv", 3, seed="s", device_class="cam", group="beta")
    rows = list(csv.DictReader(io.StringIO(path.read_text())))
    assert [r["device_id"] for r in rows] == ["sim-00000", "sim-00001", "sim-00002"]
    assert {(r["device_class"], r["group"]) for r in rows} == {("cam", "beta")}
    pems = fleet_public_pems(3, "s")
    assert all((tmp_path / r["public_key_file"]).read_bytes() == pems[r["device_id"]] for r in rows)
    assert fleet_public_pems(3, "other") != pems


def test_faults_are_chosen_by_a_stable_hash() -> None:
    chosen = [d for d in (f"sim-{i:05d}" for i in range(1_000)) if fraction_of("s", "fail", d) < 0.1]
    assert 70 <= len(chosen) <= 130
    assert chosen == [d for d in (f"sim-{i:05d}" for i in range(1_000)) if fraction_of("s", "fail", d) < 0.1]


@pytest.mark.asyncio
async def test_two_hundred_devices_all_finish_on_the_release(tmp_path: Path) -> None:
    count = 200
    payloads = PayloadServer({cid_of(PAYLOAD): PAYLOAD})
    await payloads.start()
    switch_at = now_ms() + 3_000
    the_offer = offer(PUB, 2, PAYLOAD, switch_at=switch_at, urls=(payloads.url(cid_of(PAYLOAD)),))

    def on_register(session: DeviceSession) -> None:
        if all(i.release_id != RELEASE for i in session.installed):
            session.out.put_nowait(offer_pb(the_offer))

    keys = fleet_public_pems(count, "test-seed")
    fakes = [FakeGateway(g, keys, heartbeat_ms=1_000, on_register=on_register) for g in ("gw-a", "gw-b")]
    servers = [await start_gateway(f) for f in fakes]
    ranked = [pb.GatewayAddress(gateway_id=f.gateway_id, grpc_address=a) for f, (_, a) in zip(fakes, servers, strict=True)]
    for f in fakes:
        f.ranked = ranked
    config = SimulatorConfig(
        count=count, gateways=tuple(a for _, a in servers), seed="test-seed", no_install=True,
        clock_skew_ms=30_000, duration_s=60, until_release=RELEASE, summary_interval_s=1,
        start_spread_ms=500,
    )
    out = io.StringIO()
    try:
        summary = await Simulator(config, anchors=load_trust_anchors([PUB.public_pem]), out=out).run()
    finally:
        for server, _ in servers:
            await server.stop(0)
        await payloads.stop()
    assert summary["reached"], summary["versions"]
    assert summary["versions"] == {COMPONENT: {RELEASE: count}}
    assert summary["reports"]["installed"] == count and summary["unacked_reports"] == 0
    assert summary["first_switch_at_unix_ms"] >= switch_at  # nobody switched before the start
    assert len(summary["switches"]) == count
    skews = [d["clock_skew_ms"] for d in summary["per_device"].values()]
    assert max(skews) > 15_000 and min(skews) < -15_000
    assert "final" in out.getvalue()
    write_summary(summary, tmp_path / "summary.json")
    assert json.loads((tmp_path / "summary.json").read_text())["devices"] == count


@pytest.mark.asyncio
async def test_failing_and_dropping_devices(tmp_path: Path) -> None:
    count = 40
    payloads = PayloadServer({cid_of(PAYLOAD): PAYLOAD})
    await payloads.start()
    the_offer = offer(PUB, 2, PAYLOAD, urls=(payloads.url(cid_of(PAYLOAD)),))

    def on_register(session: DeviceSession) -> None:
        if all(i.release_id != RELEASE and i.known_good_release_id != RELEASE for i in session.installed):
            session.out.put_nowait(offer_pb(the_offer))

    fake = FakeGateway("gw-a", fleet_public_pems(count, "s2"), heartbeat_ms=300, on_register=on_register)
    server, address = await start_gateway(fake)
    config = SimulatorConfig(
        count=count, gateways=(address,), seed="s2", no_install=False, data_dir=tmp_path,
        fail_fraction=0.25, drop_fraction=0.25, drop_after_s=0.5, come_back_after_s=0.3,
        duration_s=30, summary_interval_s=1, start_spread_ms=100,
    )
    sim = Simulator(config, anchors=load_trust_anchors([PUB.public_pem]), out=io.StringIO())
    stop = asyncio.Event()
    task = asyncio.create_task(sim.run(stop))
    try:
        def settled() -> bool:
            s = sim.summary() if sim.devices else None
            return bool(s and s["reports"]["installed"] + s["reports"]["fell_back"] == count
                        and fake.welcomes >= count + sum(d.drops for d in sim.devices))
        await wait_for(lambda: ready(settled()), 30, "every device installed or fell back, drops back")
    finally:
        stop.set()
        summary = await asyncio.wait_for(task, 15)
        await server.stop(0)
        await payloads.stop()
    failing = {d.agent.device_id for d in sim.devices if d.fails}
    assert 0 < len(failing) < count
    for device_id, d in summary["per_device"].items():
        assert d["installed"][COMPONENT] == ("factory" if device_id in failing else RELEASE)
    assert summary["reports"]["fell_back"] == len(failing)
    assert summary["failovers"] == 0  # a drop is not a failover
    assert (tmp_path / "sim-00000" / "state.json").exists()


@pytest.mark.asyncio
async def test_killing_the_primary_moves_every_device_to_its_backup(tmp_path: Path) -> None:
    count = 30
    keys = fleet_public_pems(count, "s3")
    fakes = [FakeGateway(g, keys, heartbeat_ms=500) for g in ("gw-a", "gw-b")]
    servers = [await start_gateway(f) for f in fakes]
    ranked = [pb.GatewayAddress(gateway_id=f.gateway_id, grpc_address=a)
              for f, (_, a) in zip(fakes, servers, strict=True)]
    for f in fakes:
        f.ranked = ranked
    config = SimulatorConfig(count=count, gateways=(servers[0][1],), seed="s3", duration_s=30,
                             summary_interval_s=1, start_spread_ms=100)
    sim = Simulator(config, anchors=load_trust_anchors([PUB.public_pem]), out=io.StringIO())
    stop = asyncio.Event()
    task = asyncio.create_task(sim.run(stop))
    try:
        await wait_for(lambda: ready(len(fakes[0].sessions) == count), 20, "every device at the primary")
        await servers[0][0].stop(0)
        await wait_for(lambda: ready(len(fakes[1].sessions) == count), 20, "every device at the backup")
        await wait_for(lambda: ready(sim.summary()["failovers"] == count), 20, "the failovers counted")
    finally:
        stop.set()
        summary = await asyncio.wait_for(task, 15)
        for server, _ in servers:
            await server.stop(0)
    assert len(summary["failover_intervals"]) == count
    assert {d["gateway_id"] for d in summary["per_device"].values()} == {"gw-b"}
    assert all(s.register.previous_gateway_id == "gw-a" for s in fakes[1].sessions.values())


def test_the_cli_writes_the_enrolment_csv(tmp_path: Path) -> None:
    import argparse

    from agent import cli
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    args = parser.parse_args(["simulate", "--count", "2", "--enroll-csv", str(tmp_path / "f.csv"),
                              "--enroll-only", "--class", "cam"])
    assert args.func(args) == 0
    assert (tmp_path / "f.csv").read_text().splitlines()[1].startswith("sim-00000,cam,keys/")
