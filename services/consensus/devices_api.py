"""The public Devices API: reads of the device state every node derives
from the ledger (``ledger/devices.py``): enrolments, what each device last
reported, and outcomes per release. Linearizable by default, as the
Releases API (``releases_api.py``): a read waits for a ReadIndex barrier;
``stale_ok`` answers at once from this node's applied state. Writes
(DeviceEnrollment, DeviceEvents) are ledger entries, submitted through the
Ledger API.

Also binds the ``fleetsuit_devices{state}``, ``fleetsuit_devices_by_version{version}``
and ``fleetsuit_release_outcomes{release, outcome}`` gauges, counted from the
tables when scraped."""

from __future__ import annotations

from collections.abc import Callable

import grpc

from fleetsuit.v1 import consensus_pb2 as pb
from fleetsuit.v1 import consensus_pb2_grpc as pb_grpc

from . import api_reads
from .config import ConsensusConfig
from .errors import DeviceNotFound, InvalidEntry
from .ledger.codec import device_to_pb, outcomes_to_pb
from .ledger.devices import DEVICE_STATES
from .metrics import ConsensusMetrics
from .runtime import ConsensusNode


class DevicesServicer(pb_grpc.DevicesServicer):
    def __init__(
        self, node: ConsensusNode, config: ConsensusConfig, metrics: ConsensusMetrics | None = None
    ) -> None:
        self._node = node
        self._config = config
        # (applied index, devices by state, accepted devices by version)
        self._counted: tuple[int, dict[str, int], dict[str, int]] = (-1, {}, {})
        if metrics is not None:
            for name in DEVICE_STATES:
                metrics.devices.labels(name).set_function(self._count_state(name))
            metrics.devices_by_version.bind(
                lambda: {(version,): float(n) for version, n in self._summary()[2].items()})
            metrics.release_outcomes.bind(self._outcomes)

    def _count_state(self, name: str) -> Callable[[], float]:
        return lambda: float(self._summary()[1].get(name, 0))

    def _summary(self) -> tuple[int, dict[str, int], dict[str, int]]:
        """Devices by state and by version, counted once per applied index
        (a scrape reads every state's gauge; the table is scanned once for them)."""
        applied = self._node.machine.applied_index()
        if self._counted[0] != applied:
            self._counted = (applied, *self._node.machine.devices.summary())
        return self._counted

    def _outcomes(self) -> dict[tuple[str, ...], float]:
        return {(o.release_id, outcome): float(n) for o in self._node.machine.devices.all_outcomes()
                for outcome, n in (("installed", o.installed), ("failed", o.failed))}

    async def _barrier(self, stale_ok: bool, context: grpc.aio.ServicerContext) -> None:
        await api_reads.barrier(self._node, self._config, stale_ok, context)

    async def ListDevices(  # noqa: N802
        self, request: pb.ListDevicesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListDevicesResponse:
        if request.state and request.state not in DEVICE_STATES:
            raise InvalidEntry(f"unknown state {request.state!r} (one of {', '.join(DEVICE_STATES)})")
        await self._barrier(request.stale_ok, context)
        devices = self._node.machine.devices.devices(request.state, request.after, request.limit)
        return pb.ListDevicesResponse(
            devices=[device_to_pb(d) for d in devices], applied_index=self._node.machine.applied_index()
        )

    async def GetDevice(  # noqa: N802
        self, request: pb.GetDeviceRequest, context: grpc.aio.ServicerContext
    ) -> pb.Device:
        await self._barrier(request.stale_ok, context)
        device = self._node.machine.devices.device(request.device_id)
        if device is None:
            raise DeviceNotFound(f"no device {request.device_id!r} in the ledger")
        return device_to_pb(device)

    async def DeviceSummary(  # noqa: N802
        self, request: pb.DeviceSummaryRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeviceSummaryResponse:
        await self._barrier(request.stale_ok, context)
        devices = self._node.machine.devices
        by_state, by_version = devices.summary()
        return pb.DeviceSummaryResponse(
            devices_by_state=by_state, devices_by_version=by_version,
            outcomes=[outcomes_to_pb(o) for o in devices.all_outcomes()],
            applied_index=self._node.machine.applied_index(),
        )
