"""The Devices API over a real grpc.aio server (127.0.0.1:0) of a one-voter
consensus node wired as server.py does: enrolment and report entries
submitted through the Ledger API, refusals answered FAILED_PRECONDITION
with their code, and the reads (ListDevices with its state filter and
paging, GetDevice, DeviceSummary; linearizable or stale_ok), the
``fleetsuit_devices`` gauge, and the service in the health and reflection
names."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from fleetsuit import rpc
from fleetsuit.device_auth import new_device_key, public_pem
from fleetsuit.v1 import consensus_pb2 as pb
from fleetsuit.v1 import consensus_pb2_grpc as pb_grpc
from services.consensus.metrics import ConsensusMetrics
from services.consensus.runtime import ConsensusNode
from services.consensus.server import SERVICE_NAMES
from tests.support.releases import Publisher, publish
from tests.support.wait import ready, wait_for

from .one_voter import start_one_voter

FIRMWARE = b"firmware " * 200
KEY = public_pem(new_device_key())
BOUND_S = 10.0


@dataclass
class OneNode:
    """A running one-voter node: its address, stubs and metrics."""

    address: str
    node: ConsensusNode
    ledger: pb_grpc.LedgerStub
    devices: pb_grpc.DevicesStub
    releases: pb_grpc.ReleasesStub
    metrics: ConsensusMetrics

    async def submit(self, entry: pb.LedgerEntry) -> pb.SubmitResponse:
        answer: pb.SubmitResponse = await self.ledger.Submit(
            pb.SubmitRequest(entry=entry, timeout_ms=5_000), timeout=BOUND_S)
        return answer

    async def refused(self, entry: pb.LedgerEntry) -> tuple[grpc.StatusCode, str, str]:
        """(status, fleetsuit-error-code, fleetsuit-outcome) of a refused submission."""
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await self.submit(entry)
        trailers = dict(info.value.trailing_metadata() or ())
        return info.value.code(), str(trailers.get(rpc.ERROR_CODE_KEY)), str(trailers.get("fleetsuit-outcome"))


@asynccontextmanager
async def one_node(tmp_path: Path, publisher: Publisher | None = None) -> AsyncIterator[OneNode]:
    """A one-voter consensus node (no manifest or dht: device entries need
    neither) with ``publisher``'s key as its trust anchor, in the ledger
    before it yields; everything stopped when the block ends."""
    async with AsyncExitStack() as stack:
        tmp_path.mkdir(parents=True, exist_ok=True)
        args = ["--node-id", "n1", "--listen", "127.0.0.1:0", "--data", str(tmp_path), "--cluster-id", "devices"]
        if publisher is not None:
            anchor = tmp_path / "ci.pub.pem"
            anchor.write_bytes(publisher.pem)
            args += ["--trust-anchor", str(anchor)]
        started = await start_one_voter(stack, tmp_path, args, "devices")
        node, metrics, channel, port = started.node, started.metrics, started.channel, started.port
        if publisher is not None:
            await wait_for(lambda: ready(bool(node.machine.releases.anchors())), BOUND_S, "the trust anchors")
        yield OneNode(f"127.0.0.1:{port}", node, pb_grpc.LedgerStub(channel), pb_grpc.DevicesStub(channel),
                      pb_grpc.ReleasesStub(channel), metrics)


def enrol(device_id: str, action: str, request_id: int, *, group: str = "", key: bytes = KEY) -> pb.LedgerEntry:
    return pb.LedgerEntry(client_id=f"device-admin/{device_id}", request_id=request_id,
                          device_enrollment=pb.DeviceEnrollment(device_id=device_id, action=action,
                                                                device_class="board", group=group,
                                                                public_key_pem=key))


def report(device_id: str, seq: int, *events: pb.DeviceEvent) -> pb.LedgerEntry:
    return pb.LedgerEntry(client_id=f"device/{device_id}", request_id=seq,
                          device_events=pb.DeviceEvents(events=list(events)))


def event(device_id: str, kind: str, release_id: str, sequence: int = 0) -> pb.DeviceEvent:
    return pb.DeviceEvent(device_id=device_id, kind=kind, release_id=release_id, component="fw",
                          sequence_number=sequence, at_unix_ms=1_000, gateway_id="g1")


@pytest.mark.asyncio
async def test_enrolments_are_read_back_filtered_and_paged(tmp_path: Path) -> None:
    async with one_node(tmp_path) as n:
        for i in range(5):
            await n.submit(enrol(f"d{i}", "enroll", 1, group="canary" if i < 2 else ""))
        await n.submit(enrol("p1", "request", 1))
        await n.submit(enrol("p2", "request", 1))
        await n.submit(enrol("p2", "reject", 2))
        listed = await n.devices.ListDevices(pb.ListDevicesRequest(), timeout=BOUND_S)
        assert [d.device_id for d in listed.devices] == ["d0", "d1", "d2", "d3", "d4", "p1", "p2"]
        assert listed.applied_index == n.node.machine.applied_index()
        pending = await n.devices.ListDevices(pb.ListDevicesRequest(state="pending"), timeout=BOUND_S)
        assert [d.device_id for d in pending.devices] == ["p1"]
        pages, after = [], ""
        for _ in range(10):  # bounded: 7 devices, 3 a page
            page = await n.devices.ListDevices(pb.ListDevicesRequest(limit=3, after=after), timeout=BOUND_S)
            pages.append([d.device_id for d in page.devices])
            if len(page.devices) < 3:
                break
            after = page.devices[-1].device_id
        assert pages == [["d0", "d1", "d2"], ["d3", "d4", "p1"], ["p2"]]
        device = await n.devices.GetDevice(pb.GetDeviceRequest(device_id="d1", stale_ok=True), timeout=BOUND_S)
        assert (device.state, device.device_class, device.group, device.public_key_pem) == (
            "accepted", "board", "canary", KEY)
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await n.devices.GetDevice(pb.GetDeviceRequest(device_id="nobody"), timeout=BOUND_S)
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
        assert dict(missing.value.trailing_metadata() or ())[rpc.ERROR_CODE_KEY] == "DEVICE_NOT_FOUND"
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await n.devices.ListDevices(pb.ListDevicesRequest(state="asleep"), timeout=BOUND_S)
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        gauge = n.metrics.registry.get_sample_value
        assert [gauge("fleetsuit_devices", {"state": s}) for s in ("pending", "accepted", "rejected", "revoked")] == [
            1.0, 5.0, 1.0, 0.0]


@pytest.mark.asyncio
async def test_a_refused_device_entry_is_failed_precondition_with_its_code_and_definite(tmp_path: Path) -> None:
    async with one_node(tmp_path) as n:
        first = enrol("d1", "enroll", 1)
        await n.submit(first)
        assert (await n.submit(first)).duplicate  # a retry of the same key: the first answer
        assert await n.refused(enrol("d1", "enroll", 2)) == (
            grpc.StatusCode.FAILED_PRECONDITION, "DEVICE_EXISTS", "definite")
        assert await n.refused(enrol("d1", "accept", 3)) == (
            grpc.StatusCode.FAILED_PRECONDITION, "DEVICE_STATE", "definite")
        assert (await n.refused(enrol("bad id", "enroll", 1)))[1] == "INVALID_DEVICE"
        assert (await n.refused(report("ghost", 1, event("ghost", "version", ""))))[1] == "DEVICE_UNKNOWN"
        assert (await n.refused(report("d1", 1, event("d1", "rebooted", ""))))[1] == "INVALID_EVENT"


@pytest.mark.asyncio
async def test_the_summary_counts_states_versions_and_outcomes_and_the_halt_shows(tmp_path: Path) -> None:
    ci = Publisher.new(1)
    async with one_node(tmp_path, ci) as n:
        entry = pb.LedgerEntry.FromString(publish(ci, "fw", 1, FIRMWARE))
        entry.release_published.rollout.CopyFrom(pb.RolloutPolicy(halt_failure_percent=50, halt_min_devices=4,
                                                                   groups=["canary"]))
        await n.submit(entry)
        for i in range(4):
            await n.submit(enrol(f"d{i}", "enroll", 1))
            await n.submit(report(f"d{i}", 1, event(f"d{i}", "version", "")))
        await n.submit(enrol("p", "request", 1))
        await n.submit(report("d0", 2, event("d0", "installed", "fw@1", 1)))
        await n.submit(report("d1", 2, event("d1", "installed", "fw@1", 1)))
        await n.submit(report("d2", 2, event("d2", "install_failed", "fw@1")))
        summary = await n.devices.DeviceSummary(pb.DeviceSummaryRequest(), timeout=BOUND_S)
        assert dict(summary.devices_by_state) == {"accepted": 4, "pending": 1}
        assert dict(summary.devices_by_version) == {"fw@1": 2, "fw@factory": 2}
        assert [(o.release_id, o.installed, o.failed) for o in summary.outcomes] == [("fw@1", 2, 1)]
        release = await n.releases.GetRelease(pb.GetReleaseRequest(release_id="fw@1"), timeout=BOUND_S)
        assert (release.state, list(release.rollout.groups), release.rollout.halt_failure_percent) == (
            "active", ["canary"], 50)
        await n.submit(report("d3", 2, event("d3", "install_failed", "fw@1")))
        release = await n.releases.GetRelease(pb.GetReleaseRequest(release_id="fw@1"), timeout=BOUND_S)
        assert (release.state, release.state_reason) == (
            "halted", "automatic halt: 2 of 4 devices failed (50% >= 50%)")


def test_the_devices_service_is_in_the_health_and_reflection_names() -> None:
    assert "fleetsuit.v1.Devices" in SERVICE_NAMES
