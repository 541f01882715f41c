"""Device reports into the ledger: one entry per report, keyed by the
device and its report seq; acknowledged only when committed (or already
applied), never when the outcome is open; a refusal is acked with its code.
The sink alone, then over a real session (harness of test_sessions.py)."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry

from fleetsuit.ledger_client import StreamBroken, SubmitFailed
from fleetsuit.v1 import consensus_pb2 as cpb
from fleetsuit.v1 import gateway_pb2 as pb
from services.gateway import convert
from services.gateway.metrics import GatewayMetrics
from services.gateway.model import (
    DeviceChange,
    DeviceEventsWrite,
    EnrolmentRequestWrite,
    ReportEvent,
)
from services.gateway.ports import MemoryLedger
from services.gateway.reports import ReportAnswer, ReportSink
from tests.gateway.harness import T0, Device, link, running
from tests.support.wait import ready, wait_for

READ_S = 10.0

EVENTS = (ReportEvent("installed", "app", "app@2", 2, 1_000, b'{"ok":true}'),)


def sink(ledger: MemoryLedger) -> tuple[ReportSink, CollectorRegistry]:
    registry = CollectorRegistry()
    return ReportSink(ledger, GatewayMetrics(registry), "g1"), registry


def count(registry: CollectorRegistry, result: str) -> float:
    return registry.get_sample_value("fleetsuit_gateway_reports_total", {"result": result}) or 0.0


@pytest.mark.asyncio
async def test_a_committed_report_is_acked_and_a_resend_is_a_duplicate() -> None:
    ledger = MemoryLedger()
    reports, registry = sink(ledger)
    assert await reports.submit("d1", 1, EVENTS) == ReportAnswer(1)
    assert await reports.submit("d1", 1, EVENTS) == ReportAnswer(1)
    assert ledger.submitted == [DeviceEventsWrite("d1", 1, "g1", EVENTS)]
    assert count(registry, "committed") == 1 and count(registry, "duplicate") == 1
    assert registry.get_sample_value("fleetsuit_gateway_report_commit_seconds_count") == 2


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "error",
    [
        SubmitFailed("OUTCOME_UNKNOWN", "may still commit", definite=False),
        SubmitFailed("NO_LEADER", "election under way"),
        SubmitFailed("OVERLOADED", "too many"),
        StreamBroken("the stream ended"),
    ],
)
async def test_an_open_outcome_gets_no_ack(error: Exception) -> None:
    ledger = MemoryLedger(fail_next=[error])
    reports, registry = sink(ledger)
    assert await reports.submit("d1", 4, EVENTS) is None
    assert count(registry, "retry") == 1
    assert await reports.submit("d1", 4, EVENTS) == ReportAnswer(4)  # the resend commits


@pytest.mark.asyncio
async def test_a_key_already_used_through_another_gateway_counts_as_committed() -> None:
    """The same report committed via g2 differs only in the gateway id."""
    ledger = MemoryLedger(fail_next=[SubmitFailed("IDEMPOTENCY_KEY_REUSED", "other bytes")])
    reports, registry = sink(ledger)
    assert await reports.submit("d1", 9, EVENTS) == ReportAnswer(9)
    assert count(registry, "duplicate") == 1


@pytest.mark.asyncio
async def test_a_refused_report_is_acked_with_its_code() -> None:
    ledger = MemoryLedger(fail_next=[SubmitFailed("DEVICE_NOT_ACCEPTED", "revoked")])
    reports, registry = sink(ledger)
    assert await reports.submit("d1", 2, EVENTS) == ReportAnswer(
        2, "DEVICE_NOT_ACCEPTED", "revoked"
    )
    assert count(registry, "refused") == 1


def test_a_report_is_one_entry_keyed_by_the_device_and_its_seq() -> None:
    write = DeviceEventsWrite("d1", 5, "g1", EVENTS * 2)
    entry = convert.write_to_pb(write)
    assert (entry.client_id, entry.request_id) == ("device/d1", 5)
    assert [e.device_id for e in entry.device_events.events] == ["d1", "d1"]
    event = entry.device_events.events[0]
    assert (event.kind, event.component, event.release_id, event.sequence_number) == (
        "installed", "app", "app@2", 2,
    )  # fmt: skip
    assert event.gateway_id == "g1" and event.detail == b'{"ok":true}'
    # The same write is the same bytes: a resend through this gateway is a duplicate.
    assert entry.SerializeToString(deterministic=True) == convert.write_to_pb(
        write
    ).SerializeToString(deterministic=True)


def test_an_enrolment_request_is_a_request_entry() -> None:
    entry = convert.write_to_pb(EnrolmentRequestWrite("d9", "class-a", b"PEM", "g1"))
    assert entry.device_enrollment.action == "request"
    assert (entry.device_enrollment.device_id, entry.device_enrollment.device_class) == (
        "d9", "class-a",
    )  # fmt: skip
    assert entry.device_enrollment.public_key_pem == b"PEM"


def test_a_block_names_the_devices_and_whether_releases_changed() -> None:
    entries = [
        cpb.LedgerEntry(device_enrollment=cpb.DeviceEnrollment(device_id="d1", action="revoke")),
        cpb.LedgerEntry(device_events=cpb.DeviceEvents(events=[
            cpb.DeviceEvent(device_id="d2", kind="version")])),
        cpb.LedgerEntry(app=cpb.AppEntry(payload=b"x")),
    ]  # fmt: skip
    block = cpb.Block(height=7, entries=[e.SerializeToString() for e in entries])
    news = convert.block_news_from_pb(block)
    assert news.height == 7 and not news.releases_changed and not news.outcomes
    assert news.devices == (DeviceChange("d1", "revoke"), DeviceChange("d2", "events"))
    failed = cpb.LedgerEntry(device_events=cpb.DeviceEvents(events=[
        cpb.DeviceEvent(device_id="d3", kind="install_failed")]))  # fmt: skip
    revoked = cpb.LedgerEntry(release_revoked=cpb.ReleaseRevoked(release_id="app@2"))
    news = convert.block_news_from_pb(cpb.Block(
        height=8, entries=[failed.SerializeToString(), revoked.SerializeToString()]))  # fmt: skip
    assert news.releases_changed and news.outcomes


# ---------------------------------------------------------------- reports


def report(seq: int) -> pb.Report:
    return pb.Report(seq=seq, events=[pb.ReportEvent(
        kind="installed", component="app", release_id="app@2", sequence_number=2, at_unix_ms=T0)])  # fmt: skip


@pytest.mark.asyncio
async def test_a_report_is_acked_only_once_committed_and_a_resend_as_a_duplicate() -> None:
    device = Device("d-rep")
    ledger = MemoryLedger(devices={device.device_id: device.enrolment()})
    async with running(ledger) as gw, link(gw) as stream:
        await stream.welcome(device)
        gw.ledger.hold = asyncio.Event()
        await stream.send(report=report(1))
        await wait_for(lambda: ready(len(gw.ledger.attempts) == 1), READ_S, "the submission")
        await stream.send(heartbeat=pb.Heartbeat(time_unix_ms=1))
        assert (await stream.read()).WhichOneof("kind") == "heartbeat"  # no ack while it waits
        gw.ledger.hold.set()
        ack = await stream.read_kind("report_ack")
        assert ack.seq == 1 and ack.error_code == ""
        [write] = gw.ledger.submitted
        assert isinstance(write, DeviceEventsWrite) and (write.device_id, write.seq) == ("d-rep", 1)
        await stream.send(report=report(1))  # resent: applied once, acked again
        assert (await stream.read_kind("report_ack")).seq == 1
        assert len(gw.ledger.submitted) == 1
        assert gw.metric("fleetsuit_gateway_reports_total", {"result": "duplicate"}) == 1


@pytest.mark.asyncio
async def test_a_report_whose_outcome_is_unknown_is_not_acked_and_the_resend_is() -> None:
    device = Device("d-unknown-outcome")
    ledger = MemoryLedger(devices={device.device_id: device.enrolment()})
    async with running(ledger) as gw, link(gw) as stream:
        await stream.welcome(device)
        gw.ledger.fail_next = [SubmitFailed("OUTCOME_UNKNOWN", "no answer", definite=False),
                               SubmitFailed("NO_LEADER", "election")]  # fmt: skip
        for _ in range(2):
            await stream.send(report=report(7))
            await stream.send(heartbeat=pb.Heartbeat(time_unix_ms=1))
            assert (await stream.read()).WhichOneof("kind") == "heartbeat"
        await stream.send(report=report(7))
        ack = await stream.read_kind("report_ack")
        assert (ack.seq, ack.error_code) == (7, "")
        assert gw.metric("fleetsuit_gateway_reports_total", {"result": "retry"}) == 2


@pytest.mark.asyncio
async def test_a_report_refused_in_session_is_acked_with_its_code() -> None:
    device = Device("d-refused")
    ledger = MemoryLedger(devices={device.device_id: device.enrolment()})
    async with running(ledger) as gw, link(gw) as stream:
        await stream.welcome(device)
        gw.ledger.fail_next = [SubmitFailed("INVALID_EVENT", "unknown kind")]
        await stream.send(report=report(3))
        ack = await stream.read_kind("report_ack")
        assert (ack.seq, ack.error_code) == (3, "INVALID_EVENT")
