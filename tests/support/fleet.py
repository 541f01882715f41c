"""A simulated fleet against a ``LocalCluster``, for end-to-end tests: the
gateway flags of short heartbeats, a CI publisher's key and trust anchor,
the fleet enrolled in the ledger, the fleet simulator (``agent.simulator``,
in the test's event loop) started and stopped, and what the devices run.

Nothing here asserts what a test is about; it sets up, observes and stops.
Every wait has a deadline (``tests.support.wait``)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from agent.enrol import fleet_public_pems
from agent.simulator import Simulator
from fleetsuit.client import FleetClient
from fleetsuit.device_admin import DeviceAdmin
from fleetsuit.v1 import gateway_pb2, gateway_pb2_grpc
from suit.keys import KeyAlgorithm, generate, private_pem, public_pem

from .cluster import LocalCluster
from .wait import ready, wait_for

STOP_TIMEOUT_S = 60.0


def gateway_flags(heartbeat_ms: int) -> list[str]:
    """Gateway settings that make failover and offers quick: heartbeats every
    ``heartbeat_ms``, offers 3 s ahead of a switch, the ledger deemed lost
    after 3 s, the gateway directory refreshed every second."""
    return ["--heartbeat-interval-ms", str(heartbeat_ms), "--offer-lead-ms", "3000",
            "--ledger-lost-ms", "3000", "--directory-refresh-ms", "1000"]


@dataclass(frozen=True)
class Publisher:
    """A CI publisher: its private key (PEM, signs releases) and the file of
    its public key (the cluster's and the devices' trust anchor)."""

    key_pem: bytes
    anchor: Path

    @classmethod
    def create(cls, directory: Path) -> Publisher:
        key = generate(KeyAlgorithm.ED25519)
        anchor = directory / "ci.pub.pem"
        anchor.write_bytes(public_pem(key.public_key()))
        return cls(private_pem(key), anchor)


def gateways_serving(cluster: LocalCluster, nodes: Sequence[str]) -> bool:
    """True when the gateway of every node of ``nodes`` answers Info (raises otherwise)."""
    for node in nodes:
        with grpc.insecure_channel(cluster.endpoint(node, "gateway")) as channel:
            gateway_pb2_grpc.GatewayStub(channel).Info(gateway_pb2.GatewayInfoRequest(), timeout=2)
    return True


def enrol(client: FleetClient, count: int, seed: str, prefix: str) -> None:
    """Enrol the simulator's ``count`` devices (class ``default``)."""
    admin = DeviceAdmin(client)
    for device_id, pem in fleet_public_pems(count, seed, prefix).items():
        admin.enroll(device_id, "default", pem)


def connected(sim: Simulator) -> int:
    """Devices in session with a gateway now."""
    return sum(1 for d in sim.devices if d.agent.runner.stats.connected)


def failovers(sim: Simulator) -> dict[str, int]:
    """device id -> re-registrations after a broken session so far."""
    return {d.agent.device_id: d.agent.runner.stats.failovers for d in sim.devices}


def running(sim: Simulator, component: str) -> dict[str, str]:
    """device id -> the release it runs for ``component`` ("" when none)."""
    return {d.agent.device_id: next((i.release_id for i in d.agent.installed() if i.component == component), "")
            for d in sim.devices}


def unacked(sim: Simulator) -> int:
    """Reports the devices sent and no gateway acknowledged yet."""
    return int(sim.summary()["unacked_reports"])


class FleetRun:
    """A simulator running as a task of the current event loop."""

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim
        self._stop = asyncio.Event()
        self._task: asyncio.Task[dict[str, Any]] | None = None

    async def start(self, cond: Callable[[Simulator], bool], timeout_s: float, what: str) -> None:
        """Start the fleet and wait until every device exists and ``cond(sim)``."""
        self._task = asyncio.create_task(self.sim.run(self._stop))
        task = self._task
        await wait_for(lambda: ready(task.done() or (len(self.sim.devices) == self.sim.config.count
                                                     and cond(self.sim))),
                       timeout_s, what, interval_s=0.2)
        self.alive()

    def alive(self) -> bool:
        """True while the simulator runs; AssertionError when it ended on its
        own (its duration, an error)."""
        task = self._task
        assert task is not None, "the fleet was not started"
        if task.done():
            outcome = task.exception() or task.result()
            raise AssertionError(f"the simulator ended early: {outcome!r}")
        return True

    async def finish(self) -> dict[str, Any]:
        """Stop the fleet (bounded); its final summary."""
        assert self._task is not None, "the fleet was not started"
        self._stop.set()
        return await asyncio.wait_for(self._task, STOP_TIMEOUT_S)

    async def abort(self) -> None:
        """Stop the fleet if it still runs, whatever its outcome (for ``finally``)."""
        if self._task is None or self._task.done():
            return
        self._stop.set()
        try:
            await asyncio.wait_for(asyncio.shield(self._task), STOP_TIMEOUT_S)
        except Exception:  # the test is failing already; what matters here is that the fleet stops
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
