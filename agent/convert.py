"""The protobuf edge of the agent: gateway.proto messages to and from the
domain types of ``model.py``. Nothing else in the agent builds or reads a
protobuf message field by field."""

from __future__ import annotations

from fleetsuit.v1 import gateway_pb2 as pb

from .model import Hold, Installed, Offer, Report, SwitchBack


def offer_from_pb(m: pb.Offer) -> Offer:
    return Offer(
        release_id=m.release_id, component=m.component, sequence_number=m.sequence_number,
        envelope=m.envelope, payload_cid=m.payload_cid, payload_size=m.payload_size,
        switch_at_unix_ms=m.switch_at_unix_ms, payload_urls=tuple(m.payload_urls), reason=m.reason,
    )


def switch_back_from_pb(m: pb.SwitchBack) -> SwitchBack:
    return SwitchBack(m.component, m.release_id, m.switch_at_unix_ms, m.reason)


def hold_from_pb(m: pb.Hold) -> Hold:
    return Hold(m.component, m.reason)


def installed_to_pb(installed: Installed) -> pb.InstalledComponent:
    return pb.InstalledComponent(
        component=installed.component, release_id=installed.release_id,
        sequence_number=installed.sequence_number,
        known_good_release_id=installed.known_good_release_id,
        known_good_sequence_number=installed.known_good_sequence_number,
    )


def report_to_pb(report: Report) -> pb.Report:
    return pb.Report(seq=report.seq, events=[
        pb.ReportEvent(kind=str(e.kind), component=e.component, release_id=e.release_id,
                       sequence_number=e.sequence_number, at_unix_ms=e.at_unix_ms,
                       detail=e.detail.encode())
        for e in report.events
    ])
