"""A StatefulSet on loopback: "pods" are consensus processes started from
``launcher.statefulset.pod_plan`` alone (the pod's name, the spec, the
ports), with ``127.0.0.1:{ordinal_port}`` standing in for the headless
Service's per-pod names.

- First start: ordinals 0-2 (the bootstrap members) form a cluster.
- Scale up: ordinal 3 joins as a learner (``request_membership``), is
  promoted to voter once caught up, and keeps up with the leader.
- Scale down: ``fleetsuit cluster remove --node-id fleetsuit-3``, then the
  pod goes; three voters remain and appends still commit.
- Rescheduling: ordinal 1 killed and started again with the same plan, on
  its old data and then on a wiped volume; it rejoins and catches up.

Every process is stopped by pid."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from fleetsuit.grpcutil import insecure_channel
from fleetsuit.v1 import consensus_pb2 as pb
from fleetsuit.v1 import consensus_pb2_grpc as pb_grpc
from launcher.cluster import join_command, spawn
from launcher.layout import NODE_PORT_SPAN
from launcher.main import main
from launcher.statefulset import PodPlan, StatefulSetSpec, pod_plan, request_membership
from tests.support.ports import free_base_port
from tests.support.procs import kill, stop_processes
from tests.support.wait import wait_for

pytestmark = pytest.mark.slow

CLUSTER_ID = "fs-statefulset"
SPEC = StatefulSetSpec(service="fleetsuit", bootstrap_replicas=3, address_template="127.0.0.1:{ordinal_port}")
MAX_PODS = 5
DEADLINE_S = 60.0


class Pods:
    """The StatefulSet's pods, one consensus process each; every process
    ever started is stopped by pid at close()."""

    def __init__(self, root: Path) -> None:
        self.root = root
        base = free_base_port(NODE_PORT_SPAN * MAX_PODS)
        self.ports = {"consensus": base + 1, "dht": base + 2}
        self.running: dict[int, subprocess.Popen[bytes]] = {}
        self._all: list[subprocess.Popen[bytes]] = []

    def plan(self, ordinal: int) -> PodPlan:
        return pod_plan(f"fleetsuit-{ordinal}", SPEC, self.ports)

    def data(self, ordinal: int) -> Path:
        return self.root / f"fleetsuit-{ordinal}"  # the pod's volume

    def start(self, ordinal: int) -> PodPlan:
        """The pod's consensus container, from its plan."""
        plan = self.plan(ordinal)
        data = self.data(ordinal)
        data.mkdir(exist_ok=True)
        if plan.join:
            cmd = join_command(plan.pod, plan.address, data, plan.peers, CLUSTER_ID)
        else:
            peers = ",".join(f"{node_id}={address}" for node_id, address in plan.consensus_peers.items())
            cmd = [sys.executable, "-m", "services.consensus", "--node-id", plan.pod, "--listen", plan.address,
                   "--metrics-port", "0", "--data", str(data), "--peers", peers, "--cluster-id", CLUSTER_ID]
        proc = spawn(cmd, self.root / f"{plan.pod}.log")  # beside the volume: a wipe keeps it
        self.running[ordinal] = proc
        self._all.append(proc)
        return plan

    def kill(self, ordinal: int) -> None:
        kill(self.running.pop(ordinal))

    def stop(self, ordinal: int) -> int | None:
        proc = self.running.pop(ordinal)
        stop_processes([proc])
        return proc.returncode

    def close(self) -> None:
        stop_processes(self._all)


@pytest.fixture
def pods(tmp_path: Path) -> Iterator[Pods]:
    p = Pods(tmp_path)
    try:
        for ordinal in range(SPEC.bootstrap_replicas):
            p.start(ordinal)
        yield p
    finally:
        p.close()


class Ledgers:
    """A Ledger stub per pod (by its plan's address); channels closed at close()."""

    def __init__(self, pods: Pods) -> None:
        self.pods = pods
        self.channels: dict[str, grpc.aio.Channel] = {}
        self.stubs: dict[str, pb_grpc.LedgerStub] = {}

    def add(self, ordinal: int) -> None:
        plan = self.pods.plan(ordinal)
        self.channels[plan.pod] = insecure_channel(plan.address)
        self.stubs[plan.pod] = pb_grpc.LedgerStub(self.channels[plan.pod])

    async def statuses(self, among: list[str] | None = None) -> dict[str, pb.StatusResponse]:
        out = {}
        for pod in among or list(self.stubs):
            with contextlib.suppress(grpc.RpcError):
                out[pod] = await self.stubs[pod].Status(pb.StatusRequest(), timeout=1.0)
        return out

    async def leader(self) -> str | None:
        """The one leader every answering pod agrees on."""
        statuses = await self.statuses()
        leaders = {s.node_id for s in statuses.values() if s.role == "leader"}
        if len(leaders) != 1:
            return None
        leader = leaders.pop()
        return leader if all(s.leader_id == leader for s in statuses.values()) else None

    async def members(self) -> dict[str, pb.Member] | None:
        leader = await self.leader()
        if leader is None:
            return None
        status = await self.stubs[leader].Status(pb.StatusRequest(consistent=True), timeout=5)
        return {m.node_id: m for m in status.members}

    async def append(self, client_id: str, count: int) -> int:
        """``count`` entries committed (each retried with its key until it
        is); the index of the last."""
        index = 0
        for request_id in range(1, count + 1):
            async def once(request_id: int = request_id) -> int | None:
                leader = await self.leader()
                if leader is None:
                    return None
                entry = pb.LedgerEntry(client_id=client_id, request_id=request_id,
                                       app=pb.AppEntry(payload=b"entry %d" % request_id))
                response = await self.stubs[leader].Submit(pb.SubmitRequest(entry=entry), timeout=5)
                return int(response.index)

            index = await wait_for(once, DEADLINE_S, f"{client_id} entry {request_id} committed")
        return index

    async def caught_up(self, pods: list[str], index: int) -> None:
        """Wait until every pod named has committed ``index``."""
        async def probe() -> bool | None:
            statuses = await self.statuses(pods)
            done = len(statuses) == len(pods) and all(s.commit_index >= index for s in statuses.values())
            return True if done else None

        await wait_for(probe, DEADLINE_S, f"{', '.join(pods)} committing index {index}")

    async def close(self) -> None:
        for channel in self.channels.values():
            await channel.close()


async def _voters(ledgers: Ledgers) -> list[str] | None:
    members = await ledgers.members()
    return None if members is None else sorted(n for n, m in members.items() if m.voter)


@pytest.mark.asyncio
async def test_first_start_scale_up_and_scale_down(pods: Pods) -> None:
    ledgers = Ledgers(pods)
    try:
        for ordinal in range(3):
            ledgers.add(ordinal)
        bootstrap = [f"fleetsuit-{i}" for i in range(3)]
        assert await wait_for(lambda: _voters(ledgers), DEADLINE_S, "the bootstrap cluster") == bootstrap
        await ledgers.append("before-scale-up", 20)

        # Scale up: ordinal 3 is not in the first configuration; it asks to
        # be added (before or after its process starts: until the learner
        # answers, the leader only retries).
        plan = pods.plan(3)
        assert plan.join
        await asyncio.to_thread(request_membership, plan, plan.address, DEADLINE_S)
        members = await wait_for(ledgers.members, DEADLINE_S, "the membership with fleetsuit-3")
        assert not members["fleetsuit-3"].voter and members["fleetsuit-3"].address == plan.address
        pods.start(3)
        ledgers.add(3)

        async def promoted() -> list[str] | None:
            voters = await _voters(ledgers)
            return voters if voters is not None and "fleetsuit-3" in voters else None

        assert await wait_for(promoted, DEADLINE_S, "fleetsuit-3 promoted to voter") == [*bootstrap, "fleetsuit-3"]
        index = await ledgers.append("after-scale-up", 30)
        await ledgers.caught_up(["fleetsuit-3"], index)
        # A restarted pod asks again: already a member, nothing changes.
        await asyncio.to_thread(request_membership, plan, plan.address, DEADLINE_S)
        assert await _voters(ledgers) == [*bootstrap, "fleetsuit-3"]

        # Scale down: the documented procedure, then the pod goes.
        endpoint = pods.plan(0).address
        code = await asyncio.to_thread(
            main, ["cluster", "remove", "--endpoint", endpoint, "--node-id", "fleetsuit-3", "--json"]
        )
        assert code == 0
        pods.stop(3)
        del ledgers.stubs["fleetsuit-3"]

        async def three_voters() -> list[str] | None:
            members = await ledgers.members()
            return sorted(members) if members is not None and "fleetsuit-3" not in members else None

        assert await wait_for(three_voters, DEADLINE_S, "fleetsuit-3 removed") == bootstrap
        index = await ledgers.append("after-scale-down", 20)
        await ledgers.caught_up(bootstrap, index)
    finally:
        await ledgers.close()


@pytest.mark.asyncio
async def test_a_rescheduled_pod_rejoins_on_its_volume_and_on_a_new_one(pods: Pods) -> None:
    ledgers = Ledgers(pods)
    try:
        for ordinal in range(3):
            ledgers.add(ordinal)
        bootstrap = [f"fleetsuit-{i}" for i in range(3)]
        await ledgers.append("first", 20)

        async def key_of_1() -> bytes | None:
            members = await ledgers.members()
            key = members["fleetsuit-1"].public_key if members and "fleetsuit-1" in members else b""
            return bytes(key) or None

        old_key = await wait_for(key_of_1, DEADLINE_S, "fleetsuit-1's key in the ledger")

        # Rescheduled with its volume: the same plan, the same data.
        pods.kill(1)
        await ledgers.append("while-1-is-moved", 20)
        pods.start(1)
        index = await ledgers.append("with-1-back", 10)
        await ledgers.caught_up(bootstrap, index)
        assert await key_of_1() == old_key

        # Rescheduled onto a new, empty volume: it has itself removed and
        # added again (services/consensus/synchronizer.py) and catches up.
        pods.kill(1)
        shutil.rmtree(pods.data(1))
        await ledgers.append("while-1-is-wiped", 20)
        pods.start(1)

        async def back_with_a_new_key() -> bool | None:
            members = await ledgers.members()
            m = (members or {}).get("fleetsuit-1")
            return True if m is not None and m.voter and m.public_key and m.public_key != old_key else None

        await wait_for(back_with_a_new_key, DEADLINE_S, "fleetsuit-1 a voter again, with a new key")
        index = await ledgers.append("with-1-rejoined", 10)
        await ledgers.caught_up(bootstrap, index)
        assert await _voters(ledgers) == bootstrap
        assert "rejoining" in (pods.root / "fleetsuit-1.log").read_text()
    finally:
        await ledgers.close()
