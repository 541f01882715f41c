"""A whole node killed in the middle of a rollout (issue 13 §5): a 3-node
cluster of real processes (four a node), 200 devices enrolled and run by
the fleet simulator (real agents, gRPC sessions to the gateways, HTTP
downloads), and a release pushed with ``FleetClient`` whose staged rollout
(20%, then 100%) is under way when every process of the node holding the
Raft leader, whose gateway serves devices too, is SIGKILLed by pid.

Shown here: the devices of the killed gateway re-register with their
backups, every device still ends on the release, every report is
acknowledged and recorded in the ledger (200 installs, no failure, 200
devices on the release in the device table), the rollout completes (every
stage open, the release still ``active``, the ledger's own name for a
release that is neither paused, halted, revoked nor ended); and the killed
node, restarted with its very same four commands, catches up: the same
commit index and block hash as the others, the release and the same device
table in its own ledger."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import pytest

from agent.enrol import device_id_of
from agent.simulator import Simulator, SimulatorConfig
from fleetsuit.client import FleetClient, StatusInfo
from fleetsuit.device_admin import DeviceAdmin, DeviceInfo, DeviceSummary
from fleetsuit.v1 import consensus_pb2 as pb
from fleetsuit.v1 import consensus_pb2_grpc as pb_grpc
from launcher.layout import SERVICES
from services.gateway import rollout
from tests.support.cluster import LocalCluster
from tests.support.fleet import (
    FleetRun,
    Publisher,
    connected,
    enrol,
    failovers,
    gateway_flags,
    gateways_serving,
    running,
    unacked,
)
from tests.support.wait import ready, wait_for, wait_until

pytestmark = pytest.mark.slow

DEVICES = 200
HEARTBEAT_MS = 2000
SEED = "node-kill-it"
PREFIX = "nk-"
NODES = ("n1", "n2", "n3")
COMPONENT = "firmware"
STAGES = (20, 100)
STAGE_INTERVAL_S = 30.0  # long enough for the kill to fall between the two stages
START_AHEAD_S = 8.0  # the push, and the gateways' prefetch, before the start


@dataclass(frozen=True)
class Setup:
    cluster: LocalCluster
    publisher: Publisher


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    publisher = Publisher.create(tmp_path)
    cluster = LocalCluster(3, tmp_path / "data", trust_anchors=[publisher.anchor],
                           extra_args={"gateway": gateway_flags(HEARTBEAT_MS)})
    try:
        wait_until(lambda: gateways_serving(cluster, NODES), 90, "every gateway answering Info")
        with FleetClient(cluster.endpoint("n1")) as client:
            wait_until(lambda: client.status().leader_id, 90, "a leader")
            enrol(client, DEVICES, SEED, PREFIX)
        yield Setup(cluster, publisher)
    finally:
        cluster.close()


def node_client(cluster: LocalCluster, node: str) -> FleetClient:
    """A client of one node only: it learns no other member (only writes do),
    so its reads are that node's answers."""
    return FleetClient(cluster.endpoint(node), timeout_s=5.0, retry_deadline_s=5.0)


def block_hash(client: FleetClient, height: int) -> bytes:
    """The hash of the block at ``height`` in the client's node's own ledger."""
    block = client.read(lambda channel, timeout: pb_grpc.LedgerStub(channel).GetBlock(
        pb.GetBlockRequest(height=height), timeout=timeout))
    return bytes(cast(pb.Block, block).hash)


def sigkill_node(cluster: LocalCluster, node: str) -> list[int]:
    """SIGKILL every process of ``node`` by pid, all four before waiting for
    any (the node dies at once, as a machine does); the pids."""
    pids = [int(cluster.node(node)["pids"][spec.name]) for spec in SERVICES]
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    return pids


def reap_node(cluster: LocalCluster, node: str) -> None:
    """Wait (bounded) until every process of ``node`` is gone, and reap it."""
    for spec in SERVICES:
        cluster.kill(node, spec.name)  # SIGKILLed already: this waits for the exit


def restart_node(cluster: LocalCluster, node: str) -> None:
    for spec in SERVICES:
        cluster.restart(node, spec.name)


def caught_up(clients: dict[str, FleetClient]) -> tuple[int, int, bytes] | None:
    """(commit index, block height, hash of that block) when every node
    has committed and applied the same and holds the same block there."""
    statuses: dict[str, StatusInfo] = {node: c.status() for node, c in clients.items()}
    if len({(s.commit_index, s.applied_index, s.block_height) for s in statuses.values()}) != 1:
        return None
    status = next(iter(statuses.values()))
    if status.commit_index != status.applied_index or status.block_height == 0:
        return None
    hashes = {block_hash(c, status.block_height) for c in clients.values()}
    return (status.commit_index, status.block_height, hashes.pop()) if len(hashes) == 1 else None


def device_table(client: FleetClient) -> list[DeviceInfo]:
    return DeviceAdmin(client).list_devices(stale_ok=True)


def outcome_of(summary: DeviceSummary, release: str) -> tuple[int, int]:
    outcome = next((o for o in summary.outcomes if o.release_id == release), None)
    return (0, 0) if outcome is None else (outcome.installed, outcome.failed)


@pytest.mark.asyncio
async def test_a_whole_node_killed_mid_rollout_every_device_ends_on_the_release_and_the_node_catches_up(
    setup: Setup,
) -> None:
    cluster, publisher = setup.cluster, setup.publisher
    began = time.monotonic()
    phases: dict[str, float] = {}
    sim = Simulator(SimulatorConfig(
        count=DEVICES, gateways=tuple(cluster.endpoint(n, "gateway") for n in NODES),
        trust_anchor_paths=(publisher.anchor,), seed=SEED, id_prefix=PREFIX, components=(COMPONENT,),
        no_install=True, duration_s=600.0, start_spread_ms=2000, summary_interval_s=10.0,
    ))
    fleet = FleetRun(sim)
    clients: dict[str, FleetClient] = {}
    try:
        await fleet.start(lambda s: connected(s) == DEVICES, 120, f"{DEVICES} sessions")
        phases["sessions"] = time.monotonic() - began

        # ------------------------------------------------ the release, staged
        start_s = time.time() + START_AHEAD_S
        with FleetClient(cluster.endpoint("n1")) as pusher:
            pushed = await asyncio.to_thread(
                pusher.push_release, f"{COMPONENT} 1 ".encode() * 4096, component=COMPONENT, sequence=1,
                key_pem=publisher.key_pem, start_at=start_s, stages=STAGES, stage_interval_s=STAGE_INTERVAL_S)
        release = pushed.release_id
        policy = rollout.Policy(start_at_unix_ms=round(start_s * 1000), stages=STAGES,
                                stage_interval_ms=round(STAGE_INTERVAL_S * 1000))
        first_stage = {device_id_of(PREFIX, i) for i in range(DEVICES)
                       if rollout.device_stage(policy, device_id_of(PREFIX, i), release) == 0}
        assert 0 < len(first_stage) < DEVICES

        def switched() -> set[str]:
            return {d for d, r in running(sim, COMPONENT).items() if r == release}

        # The node to kill: the Raft leader's (its gateway serves about a third
        # of the fleet). Its term tells, after the kill, that the survivors
        # had to elect a new leader, i.e. that it was still the leader then.
        with node_client(cluster, "n1") as probe:
            before_kill = await asyncio.to_thread(probe.status)
        leader = before_kill.leader_id
        assert leader in NODES, f"no leader known before the kill: {leader!r}"
        with node_client(cluster, leader) as probe:
            before_kill = await asyncio.to_thread(probe.status)
        assert before_kill.role == "leader", f"{leader} is {before_kill.role}, not the leader"

        # ------------------------------------------------ the whole leader's node, killed
        # At the first switch of the first stage, polled often, so that the
        # switching devices' reports are on their way while the node dies.
        await wait_for(lambda: ready(any(r == release for r in running(sim, COMPONENT).values())),
                       120, "the first device on the release", interval_s=0.01)
        pids = sigkill_node(cluster, leader)  # no await before it: the fleet is where the poll saw it
        at_kill = switched()
        unacked_at_kill = unacked(sim)
        on_victim = {d.agent.device_id for d in sim.devices
                     if d.agent.runner.stats.connected and d.agent.runner.stats.gateway_id == leader}
        before = failovers(sim)
        phases["kill"] = time.monotonic() - began
        await asyncio.to_thread(reap_node, cluster, leader)
        fleet.alive()
        survivors = tuple(n for n in NODES if n != leader)
        print(f"\nkilled {leader} (Raft leader, term {before_kill.term}, commit index {before_kill.commit_index}; "
              f"pids {pids}) with {len(at_kill)}/{DEVICES} devices on {release}, {unacked_at_kill} reports "
              f"unacknowledged and {len(on_victim)} devices in session with its gateway")
        # Some but not all: the second stage had not opened when the node died.
        assert at_kill and len(at_kill) < DEVICES and at_kill <= first_stage
        assert on_victim, f"the leader's gateway {leader} served no device"

        clients = {n: node_client(cluster, n) for n in survivors}

        async def new_leader() -> str | None:
            """The survivors' leader once both name the same one, elected after the kill."""
            seen = {(s.leader_id, s.term) for s in [await asyncio.to_thread(c.status) for c in clients.values()]}
            if len(seen) != 1:
                return None
            elected, term = seen.pop()
            return elected if elected in survivors and term > before_kill.term else None

        elected = await wait_for(new_leader, 90, "a leader among the survivors", interval_s=0.2)
        await wait_for(lambda: ready(all(
            d.agent.runner.stats.connected and d.agent.runner.stats.gateway_id in survivors
            and (d.agent.device_id not in on_victim or d.agent.runner.stats.failovers > before[d.agent.device_id])
            for d in sim.devices)), 90, f"every device of {leader} in session with a survivor", interval_s=0.2)
        phases["failover"] = time.monotonic() - began
        moved = sum(1 for d in on_victim if failovers(sim)[d] > before[d])
        print(f"new leader {elected}; {moved} devices of {leader} failed over to "
              f"{list(survivors)}")

        # ------------------------------------------------ the rollout goes on to its end
        await wait_for(lambda: ready(fleet.alive() and len(switched()) == DEVICES
                                     and unacked(sim) == 0),
                       STAGE_INTERVAL_S + 150, "every device on the release, every report acknowledged",
                       interval_s=0.5)
        phases["all on release"] = time.monotonic() - began
        admin = DeviceAdmin(clients[elected])

        async def ledger_done() -> DeviceSummary | None:
            summary = await asyncio.to_thread(admin.summary)
            return summary if outcome_of(summary, release) == (DEVICES, 0) else None

        ledger = await wait_for(ledger_done, 60, f"{DEVICES} installs of {release} in the ledger", interval_s=0.5)
        summary = await fleet.finish()
        phases["fleet stopped"] = time.monotonic() - began

        assert summary["versions"] == {COMPONENT: {release: DEVICES}}
        assert summary["unacked_reports"] == 0
        assert summary["reports"]["installed"] >= DEVICES
        for kind in ("install_failed", "fell_back", "switched_back", "refused"):
            assert summary["reports"].get(kind, 0) == 0, summary["reports"]
        forward = {s["device_id"] for s in summary["switches"] if s["release_id"] == release and not s["back"]}
        assert len(forward) == DEVICES and not [s for s in summary["switches"] if s["back"]]
        assert ledger.devices_by_version.get(release) == DEVICES, ledger.devices_by_version
        table = await asyncio.to_thread(device_table, clients[elected])
        assert len(table) == DEVICES
        off = [d.device_id for d in table if (COMPONENT, release) not in
               {(v.component, v.release_id) for v in d.installed}]
        assert not off, f"{len(off)} devices not on {release} in the ledger: {off[:5]}"
        info = await asyncio.to_thread(clients[elected].get_release, release)
        assert info.state == rollout.ACTIVE, (info.state, info.state_reason)
        assert rollout.open_percent(policy, round(time.time() * 1000)) == 100  # every stage open

        # ------------------------------------------------ the node back, with its same four commands
        await asyncio.to_thread(restart_node, cluster, leader)
        clients[leader] = node_client(cluster, leader)
        await asyncio.to_thread(wait_until, lambda: gateways_serving(cluster, NODES), 120,
                                f"{leader}'s gateway back")
        commit, height, digest = await asyncio.to_thread(
            wait_until, lambda: caught_up(clients), 120, f"{leader} at the others' commit index and block",
            0.5)
        phases["caught up"] = time.monotonic() - began
        print(f"{leader} caught up: commit index {commit}, block {height} {digest.hex()[:16]}")
        assert commit > before_kill.commit_index  # it had entries to learn: the installs after its death
        releases = await asyncio.to_thread(clients[leader].list_releases, COMPONENT, "", True)
        assert [(r.release_id, r.state) for r in releases] == [(release, rollout.ACTIVE)]
        tables = {n: await asyncio.to_thread(device_table, c) for n, c in clients.items()}
        assert tables[leader] == tables[elected] and len(tables[leader]) == DEVICES
        restarted = await asyncio.to_thread(DeviceAdmin(clients[leader]).summary, stale_ok=True)
        assert restarted.devices_by_version == ledger.devices_by_version
        assert outcome_of(restarted, release) == (DEVICES, 0)
    finally:
        await fleet.abort()
        for client in clients.values():
            client.close()
        print("phases (s since the test began): "
              + ", ".join(f"{name} {at:.1f}" for name, at in phases.items()))
