"""Devices updated through the gateways, on real processes (issue: edge
gateways, the device agent and the fleet simulator): a 3-node cluster (four
processes a node) started with a CI publisher's trust anchor, 1,000 devices
enrolled in the ledger, and the fleet simulator (``agent.simulator``: real
agents, real gRPC sessions and HTTP downloads, in this test's process)
updating them as releases are pushed with ``FleetClient``.

Shown here: the gateway serving about a third of the fleet is killed and
every one of its devices re-registers with its backup within 3 heartbeat
intervals while no report is lost (every outcome is in the ledger); a 10%
stage admits 10% ± 2% of the fleet, exactly the devices the rule names, the
same after a gateway restart, and none of them switches before the start
time although their clocks are off by up to ±30 s; an experimental release's
devices switch back to the known-good release after its end time; a release
whose health check fails on devices sends them back to their known-good
version and halts itself at its threshold before its next stage; a payload
tampered with in every gateway's cache is refused by the devices, which stay
on their version and report why.

Each test runs its own component (the devices' decisions per component do
not interfere) and its own simulated fleet."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import statistics
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.enrol import device_id_of
from agent.simulator import Simulator, SimulatorConfig
from fleetsuit.client import FleetClient
from fleetsuit.device_admin import DeviceAdmin
from services.gateway import rollout
from tests.support.cli import CLI, run_cli
from tests.support.cluster import LocalCluster
from tests.support.fleet import (
    Publisher,
    connected,
    enrol,
    gateway_flags,
    gateways_serving,
    running,
)
from tests.support.wait import ready, wait_for, wait_until

pytestmark = pytest.mark.slow

DEVICES = 1000
HEARTBEAT_MS = 2000
SEED = "gateways-it"
PREFIX = "it-"
NODES = ("n1", "n2", "n3")


# ---------------------------------------------------------------- fixtures


class Fleet:
    def __init__(self, cluster: LocalCluster, ci_key: bytes, anchor: Path) -> None:
        self.cluster = cluster
        self.ci_key = ci_key
        self.anchor = anchor
        self.client = FleetClient(cluster.endpoint("n1"))
        self.admin = DeviceAdmin(self.client)

    def gateways(self) -> tuple[str, ...]:
        return tuple(self.cluster.endpoint(n, "gateway") for n in NODES)

    def simulator(self, count: int, component: str, **options: Any) -> Simulator:
        options.setdefault("duration_s", 240.0)
        options.setdefault("start_spread_ms", 2000)
        config = SimulatorConfig(
            count=count, gateways=self.gateways(), trust_anchor_paths=(self.anchor,), seed=SEED,
            id_prefix=PREFIX, components=(component,), no_install=True, summary_interval_s=10.0, **options,
        )
        return Simulator(config)

    async def push(self, component: str, sequence: int, **rollout_options: Any) -> str:
        payload = f"{component} {sequence} ".encode() * 4096
        result = await asyncio.to_thread(
            self.client.push_release, payload, component=component, sequence=sequence, key_pem=self.ci_key,
            **rollout_options,
        )
        return str(result.release_id)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    root = tmp_path_factory.mktemp("gateways")
    publisher = Publisher.create(root)
    cluster = LocalCluster(3, root / "data", trust_anchors=[publisher.anchor],
                           extra_args={"gateway": gateway_flags(HEARTBEAT_MS)})
    fleet = Fleet(cluster, publisher.key_pem, publisher.anchor)
    try:
        wait_until(lambda: gateways_serving(cluster, NODES), 60, "every gateway answering Info")
        wait_until(lambda: fleet.client.status().leader_id, 60, "a leader")
        enrol(fleet.client, DEVICES, SEED, PREFIX)
        yield fleet
    finally:
        fleet.client.close()
        cluster.close()


async def run_until(sim: Simulator, cond: Any, timeout_s: float, what: str) -> asyncio.Task[dict[str, Any]]:
    """Start ``sim`` and wait until ``cond(sim)``; the running task."""
    stop = asyncio.Event()
    task = asyncio.create_task(sim.run(stop))
    sim.stop_event = stop  # type: ignore[attr-defined]
    await wait_for(lambda: ready(task.done() or (len(sim.devices) == sim.config.count and cond(sim))),
                   timeout_s, what, interval_s=0.2)
    assert not task.done(), f"the simulator ended early: {task.result() if not task.exception() else task.exception()}"
    return task


async def finish(sim: Simulator, task: asyncio.Task[dict[str, Any]]) -> dict[str, Any]:
    sim.stop_event.set()  # type: ignore[attr-defined]
    return await asyncio.wait_for(task, 60)


# ---------------------------------------------------------------- failover


@pytest.mark.asyncio
async def test_the_devices_of_a_killed_gateway_reregister_with_their_backup_and_no_report_is_lost(
    fleet: Fleet,
) -> None:
    sim = fleet.simulator(DEVICES, "firmware")
    task = await run_until(sim, lambda s: connected(s) == DEVICES, 120, "1,000 sessions")
    release = await fleet.push("firmware", 1, start_at=time.time() + 4)
    # Kill n1's gateway while the devices switch and report.
    await wait_for(lambda: ready(sum(r == release for r in running(sim, "firmware").values()) >= 50),
                   60, "the first switches")
    on_n1 = {d.agent.device_id for d in sim.devices if d.agent.runner.stats.gateway_id == "n1"}
    before = {d.agent.device_id: d.agent.runner.stats.failovers for d in sim.devices}
    fleet.cluster.kill("n1", "gateway")
    await wait_for(lambda: ready(all(sim.devices[i].agent.runner.stats.connected for i in range(DEVICES))
                                 and all(d.agent.runner.stats.failovers > before[d.agent.device_id]
                                         for d in sim.devices if d.agent.device_id in on_n1)),
                   60, "every device of n1 in session elsewhere")
    await wait_for(lambda: ready(all(r == release for r in running(sim, "firmware").values())
                                 and sim._unacked() == 0), 120, "every device on the release, every report acked")
    summary = await finish(sim, task)

    assert 250 <= len(on_n1) <= 420, f"n1 served {len(on_n1)} of {DEVICES}"
    intervals = [d.agent.runner.stats.failover_intervals[-1] for d in sim.devices if d.agent.device_id in on_n1]
    cuts = statistics.quantiles(intervals, n=100)
    print(f"\nfailover of {len(on_n1)} devices, in heartbeat intervals ({HEARTBEAT_MS} ms): "
          f"min {min(intervals):.2f} p50 {cuts[49]:.2f} p90 {cuts[89]:.2f} p99 {cuts[98]:.2f} max {max(intervals):.2f}")
    assert max(intervals) <= 3.0
    assert all(d.agent.runner.stats.gateway_id != "n1" for d in sim.devices)
    assert summary["unacked_reports"] == 0 and summary["reports"]["refused"] == 0
    # No report lost: every device's install is in the ledger.
    ledger = await asyncio.to_thread(fleet.admin.summary)
    outcome = next(o for o in ledger.outcomes if o.release_id == release)
    assert (outcome.installed, outcome.failed) == (DEVICES, 0)
    assert ledger.devices_by_version.get(release) == DEVICES
    fleet.cluster.restart("n1", "gateway")
    wait_until(lambda: gateways_serving(fleet.cluster, NODES), 60, "n1's gateway back")


@pytest.mark.asyncio
async def test_a_paused_gateway_is_left_when_its_heartbeats_stop_and_its_devices_come_back_to_it(
    fleet: Fleet,
) -> None:
    """SIGSTOP keeps the connections open, so only the silence tells: each
    device of the paused gateway re-registers with its backup within 3
    heartbeat intervals. Once the gateway runs again, the devices whose
    primary it is are redirected back to it, and no other device moves."""
    count = 300
    sim = fleet.simulator(count, "pause")
    task = await run_until(sim, lambda s: connected(s) == count, 120, "300 sessions")
    on_n3 = {d.agent.device_id for d in sim.devices if d.agent.runner.stats.gateway_id == "n3"}
    elsewhere = {d.agent.device_id: d.agent.runner.stats.gateway_id for d in sim.devices
                 if d.agent.device_id not in on_n3}
    pid = fleet.cluster.node("n3")["pids"]["gateway"]
    os.kill(pid, signal.SIGSTOP)
    try:
        await wait_for(lambda: ready(all(d.agent.runner.stats.connected and d.agent.runner.stats.gateway_id != "n3"
                                         for d in sim.devices)), 60, "every device of n3 in session elsewhere")
    finally:
        os.kill(pid, signal.SIGCONT)
    intervals = [d.agent.runner.stats.failover_intervals[-1] for d in sim.devices if d.agent.device_id in on_n3]
    print(f"\nfailover of {len(on_n3)} devices from a paused gateway, in heartbeat intervals: "
          f"min {min(intervals):.2f} max {max(intervals):.2f}")
    assert on_n3 and max(intervals) <= 3.0
    await wait_for(lambda: ready(all(d.agent.runner.stats.connected and d.agent.runner.stats.gateway_id == "n3"
                                     for d in sim.devices if d.agent.device_id in on_n3)),
                   60, "the devices of n3 redirected back to it")
    await finish(sim, task)
    moved = {d: g for d, g in elsewhere.items()
             if next(x for x in sim.devices if x.agent.device_id == d).agent.runner.stats.gateway_id != g}
    assert not moved, f"devices of other gateways moved: {list(moved)[:5]}"
    assert all(next(x for x in sim.devices if x.agent.device_id == d).agent.runner.stats.redirects >= 1
               for d in on_n3)


# ---------------------------------------------------------------- staged rollout and coordinated start


@pytest.mark.asyncio
async def test_a_ten_percent_stage_admits_the_same_devices_everywhere_and_none_switches_before_the_start(
    fleet: Fleet,
) -> None:
    sim = fleet.simulator(DEVICES, "radio", clock_skew_ms=30_000)
    task = await run_until(sim, lambda s: connected(s) == DEVICES, 120, "1,000 sessions")
    start_s = time.time() + 8
    release = await fleet.push("radio", 1, start_at=start_s, stages=(10, 100), stage_interval_s=3600)
    policy = rollout.Policy(start_at_unix_ms=round(start_s * 1000), stages=(10, 100), stage_interval_ms=3_600_000)
    admitted = {device_id_of(PREFIX, i) for i in range(DEVICES)
                if rollout.device_stage(policy, device_id_of(PREFIX, i), release) == 0}
    assert 80 <= len(admitted) <= 120
    await wait_for(lambda: ready({d for d, r in running(sim, "radio").items() if r == release} == admitted),
                   90, "the admitted devices on the release")
    # A gateway restarts; its devices fail over and come back: the same set.
    fleet.cluster.kill("n2", "gateway")
    fleet.cluster.restart("n2", "gateway")
    wait_until(lambda: gateways_serving(fleet.cluster, NODES), 60, "n2's gateway back")
    await wait_for(lambda: ready(connected(sim) == DEVICES), 60, "every device in session again")
    await asyncio.sleep(2 * HEARTBEAT_MS / 1000)  # two heartbeat rounds for any wrong offer to show
    summary = await finish(sim, task)
    assert {d for d, r in running(sim, "radio").items() if r == release} == admitted
    switches = [s for s in summary["switches"] if s["release_id"] == release and not s["back"]]
    assert {s["device_id"] for s in switches} == admitted
    early = [s for s in switches if s["at_unix_ms"] < round(start_s * 1000)]
    assert not early, f"{len(early)} devices switched before the start: {early[:3]}"
    skews = [summary["per_device"][s["device_id"]]["clock_skew_ms"] for s in switches]
    assert min(skews) < -20_000 and max(skews) > 20_000  # clocks well off, both ways
    # The ledger knows what every device runs, those that never installed
    # anything included (their gateway recorded it at registration).
    expected = {release: len(admitted), "radio@factory": DEVICES - len(admitted)}

    async def by_version() -> bool | None:
        counts = (await asyncio.to_thread(fleet.admin.summary)).devices_by_version
        return await ready({k: counts.get(k) for k in expected} == expected)

    await wait_for(by_version, 30, f"the ledger's devices by version {expected}", interval_s=0.5)


# ---------------------------------------------------------------- experimental releases


@pytest.mark.asyncio
async def test_devices_on_an_experimental_release_switch_back_after_its_end_time(fleet: Fleet) -> None:
    count = 300
    stable = await fleet.push("modem", 1)
    sim = fleet.simulator(count, "modem")
    task = await run_until(sim, lambda s: all(r == stable for r in running(s, "modem").values()), 120,
                           "every device on the stable release")
    start_s = time.time() + 4
    end_s = start_s + 10
    experiment = await fleet.push("modem", 2, start_at=start_s, end_at=end_s, experimental=True)
    await wait_for(lambda: ready(all(r == experiment for r in running(sim, "modem").values())), 60,
                   "every device on the experimental release")
    await wait_for(lambda: ready(all(r == stable for r in running(sim, "modem").values())), 60,
                   "every device back on the stable release")
    summary = await finish(sim, task)
    back = [s for s in summary["switches"] if s["back"] and s["release_id"] == stable]
    assert len({s["device_id"] for s in back}) == count
    assert min(s["at_unix_ms"] for s in back) >= round(end_s * 1000)


# ---------------------------------------------------------------- failing health checks


@pytest.mark.asyncio
async def test_a_release_failing_its_health_check_sends_devices_back_and_halts_at_its_threshold(
    fleet: Fleet,
) -> None:
    sim = fleet.simulator(DEVICES, "bootloader", fail_fraction=0.3)
    task = await run_until(sim, lambda s: connected(s) == DEVICES, 120, "1,000 sessions")
    start_s = time.time() + 4
    release = await fleet.push("bootloader", 1, start_at=start_s, stages=(10, 100), stage_interval_s=20,
                               halt_failure_percent=20, halt_min_devices=20)
    policy = rollout.Policy(start_at_unix_ms=round(start_s * 1000), stages=(10, 100), stage_interval_ms=20_000)
    first_stage = {device_id_of(PREFIX, i) for i in range(DEVICES)
                   if rollout.device_stage(policy, device_id_of(PREFIX, i), release) == 0}

    def halted() -> bool:
        return fleet.client.get_release(release).state == "halted"

    await wait_for(lambda: asyncio.to_thread(lambda: True if halted() else None), 60, "the automatic halt")
    info = await asyncio.to_thread(fleet.client.get_release, release)
    assert info.state_reason.startswith("automatic halt")
    # Past the second stage's opening: nobody outside the first stage got it.
    await wait_for(lambda: ready(time.time() > start_s + 25 and sim._unacked() == 0), 60, "past stage 2")
    summary = await finish(sim, task)
    per_device = summary["per_device"]
    on_release = {d for d, r in running(sim, "bootloader").items() if r == release}
    assert on_release <= first_stage and on_release
    failing = {d for d in first_stage if per_device[d]["fails_health"]}
    assert failing and all(running(sim, "bootloader")[d] == rollout.FACTORY for d in failing)
    assert summary["reports"]["fell_back"] >= len(failing) and summary["reports"]["refused"] == 0
    ledger = await asyncio.to_thread(fleet.admin.summary)
    outcome = next(o for o in ledger.outcomes if o.release_id == release)
    assert outcome.failed * 100 >= 20 * (outcome.installed + outcome.failed) and outcome.failed >= 1


# ---------------------------------------------------------------- a tampered payload


@pytest.mark.asyncio
async def test_a_payload_tampered_with_in_the_gateways_caches_is_refused_and_the_devices_stay(
    fleet: Fleet,
) -> None:
    count = 60
    start_s = time.time() + 15  # the gateways prefetch it now; offers go out 3 s before the start
    release = await fleet.push("app", 1, start_at=start_s)
    info = await asyncio.to_thread(fleet.client.get_release, release)
    digest = info.payload_cid.split(":", 1)[1]
    caches = [Path(fleet.cluster.node(n)["data_dir"]) / "cache" / digest for n in NODES]
    wait_until(lambda: all(p.exists() for p in caches), 10, "the payload prefetched by every gateway")
    for path in caches:  # a compromised gateway (or disk) on every node
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    sim = fleet.simulator(count, "app")
    task = await run_until(sim, lambda s: s.summary()["reports"]["refused"] >= count, 120,
                           "every device refusing the payload")
    summary = await finish(sim, task)
    assert all(r == rollout.FACTORY for r in running(sim, "app").values())
    assert summary["reports"]["installed"] == 0 and summary["unacked_reports"] == 0
    device = await asyncio.to_thread(fleet.admin.get_device, device_id_of(PREFIX, 0))
    assert device.last_event == "refused"


# ---------------------------------------------------------------- one real device, through the command line


@pytest.mark.asyncio
async def test_a_device_enrolled_and_run_with_the_command_line_installs_into_its_slot(
    fleet: Fleet, tmp_path: Path
) -> None:
    """``fleetsuit device keygen``, ``device enroll`` and ``device run`` as an
    operator and a device run them: the agent installs the release into its
    inactive slot on disk, runs its health-check command, switches, and stops
    cleanly on SIGTERM."""
    key = tmp_path / "board-7.pem"
    endpoint = fleet.cluster.endpoint("n2")
    assert run_cli("device", "keygen", "--out", str(key)).returncode == 0
    enrolled = run_cli("device", "enroll", "--id", "board-7", "--class", "default",
                       "--key", str(key.with_name("board-7.pub.pem")), "--endpoint", endpoint)
    assert enrolled.returncode == 0, enrolled.stderr
    checked = tmp_path / "health-checked"
    check = tmp_path / "health.sh"
    check.write_text(f'#!/bin/sh\necho "$FLEETSUIT_RELEASE_ID" >> {checked}\ntest -s "$FLEETSUIT_SLOT_PATH"\n')
    check.chmod(0o755)
    data = tmp_path / "device"
    agent = subprocess.Popen(
        [*CLI, "device", "run", "--id", "board-7", "--key", str(key), "--trust-anchor", str(fleet.anchor),
         "--gateway", fleet.cluster.endpoint("n3", "gateway"), "--data", str(data), "--component", "board",
         "--health-check", str(check)],
        stdout=subprocess.DEVNULL, stderr=open(tmp_path / "agent.log", "wb"))  # noqa: SIM115
    try:
        release = await fleet.push("board", 1)
        payload = b"board 1 " * 4096

        def state() -> dict[str, Any] | None:
            doc = json.loads((data / "state.json").read_text())
            [board] = doc["components"]
            slot = board[board["active"]]
            return board if slot and slot["release_id"] == release and board["known_good"] == board["active"] \
                else None

        board = await asyncio.to_thread(wait_until, state, 60, "the device on the release, known good")
        assert (data / "slots" / board["active"] / "board").read_bytes() == payload
        assert checked.read_text().split() == [release]
    finally:
        agent.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(agent.wait, 30)
    assert code == 0, (tmp_path / "agent.log").read_text()[-2000:]
    device = await asyncio.to_thread(fleet.admin.get_device, "board-7")
    assert [(v.component, v.release_id) for v in device.installed] == [("board", release)]


# ---------------------------------------------------------------- a node whose consensus died


@pytest.mark.asyncio
async def test_the_devices_of_a_gateway_cut_off_from_its_ledger_move_on_and_still_get_new_releases(
    fleet: Fleet,
) -> None:
    """n1's consensus process is killed while its gateway lives: that gateway
    could tell its devices of no new release, so after ``--ledger-lost-ms``
    it sends them to their next gateway; a release pushed meanwhile reaches
    every device. Once n1's consensus is back, its devices return to it."""
    count = 300
    sim = fleet.simulator(count, "cutoff")
    task = await run_until(sim, lambda s: connected(s) == count, 120, "300 sessions")
    on_n1 = {d.agent.device_id for d in sim.devices if d.agent.runner.stats.gateway_id == "n1"}
    fleet.cluster.kill("n1", "consensus")
    try:
        await wait_for(lambda: ready(all(d.agent.runner.stats.connected and d.agent.runner.stats.gateway_id != "n1"
                                         for d in sim.devices)), 60, "every device of n1 handed over")
        release = await fleet.push("cutoff", 1)
        await wait_for(lambda: ready(all(r == release for r in running(sim, "cutoff").values())
                                     and sim._unacked() == 0), 60, "every device on the release")
    finally:
        fleet.cluster.restart("n1", "consensus")
    await wait_for(lambda: ready(all(d.agent.runner.stats.connected and d.agent.runner.stats.gateway_id == "n1"
                                     for d in sim.devices if d.agent.device_id in on_n1)),
                   90, "n1's devices back on n1")
    await finish(sim, task)
    assert on_n1
