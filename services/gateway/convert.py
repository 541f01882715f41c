"""The gateway's protobuf edge: the session's messages and the ledger's
messages to and from the gateway's domain types, and the table that maps
the gateway's errors to gRPC statuses. Nothing else in the service builds
or reads generated messages (``ports`` calls these for the ledger).

Release states come through as the ledger reports them; "ended" is the
reported form of an active or paused release past its end time, which
``rollout`` treats alike (it computes the end from the time). A release
whose policy the rules cannot apply is left out of the view (and logged):
one bad policy must not stop decisions for every other release.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import grpc

from fleetsuit.rpc import ErrorTable
from fleetsuit.v1 import consensus_pb2 as cpb
from fleetsuit.v1 import gateway_pb2 as pb

from . import rollout
from .errors import (
    BadSignature,
    DeviceRefused,
    Draining,
    GatewayError,
    HeartbeatMissed,
    LedgerUnavailable,
    ProtocolError,
    SessionReplaced,
)
from .model import (
    BlockNews,
    DeviceChange,
    DeviceEventsWrite,
    Enrolment,
    EnrolmentRequestWrite,
    GatewayAddress,
    LedgerWrite,
    ReleaseRecord,
    ReleaseSnapshot,
    ReportEvent,
    client_id_of,
)

log = logging.getLogger(__name__)

# Looked up along the error's MRO (fleetsuit.rpc.status_of).
ERRORS: ErrorTable = {
    GatewayError: grpc.StatusCode.INVALID_ARGUMENT,
    ProtocolError: grpc.StatusCode.INVALID_ARGUMENT,
    # Unknown, pending, rejected or revoked: the code says which.
    DeviceRefused: grpc.StatusCode.PERMISSION_DENIED,
    BadSignature: grpc.StatusCode.UNAUTHENTICATED,
    HeartbeatMissed: grpc.StatusCode.DEADLINE_EXCEEDED,
    SessionReplaced: grpc.StatusCode.ABORTED,
    LedgerUnavailable: grpc.StatusCode.UNAVAILABLE,
    Draining: grpc.StatusCode.UNAVAILABLE,
    # A device view the rules cannot decide on (a component reported twice).
    rollout.RolloutError: grpc.StatusCode.INVALID_ARGUMENT,
}

# Ledger entries after which the release view is read again.
RELEASE_KINDS = frozenset({"release_published", "release_revoked", "rollout_changed"})
# Events that count as an outcome: the ledger may halt a release on them.
OUTCOME_KINDS = frozenset({"installed", "install_failed", "fell_back"})


# ---------------------------------------------------------------- ledger reads


def policy_from_pb(msg: cpb.RolloutPolicy) -> rollout.Policy:
    return rollout.Policy(
        start_at_unix_ms=msg.start_at_unix_ms,
        end_at_unix_ms=msg.end_at_unix_ms,
        experimental=msg.experimental,
        stages=tuple(msg.stages) or (100,),
        stage_interval_ms=msg.stage_interval_ms,
        groups=tuple(msg.groups),
    )


def release_from_pb(msg: cpb.Release) -> ReleaseRecord:
    """Raises rollout.InvalidPolicy for a policy the rules cannot apply."""
    return ReleaseRecord(
        view=rollout.ReleaseView(
            release_id=msg.release_id,
            component=msg.component,
            device_classes=tuple(msg.device_classes),
            sequence_number=msg.sequence_number,
            state=msg.state,
            policy=policy_from_pb(msg.rollout),
            payload_cid=msg.payload_cid,
            payload_size=msg.payload_size,
            vendor_domain=msg.vendor_domain,
        ),
        envelope=bytes(msg.envelope),
    )


def snapshot_from_pb(releases: Iterable[cpb.Release], applied_index: int) -> ReleaseSnapshot:
    records = []
    for msg in releases:
        try:
            records.append(release_from_pb(msg))
        except rollout.RolloutError as exc:
            log.warning("release %s left out of the view: %s", msg.release_id, exc)
    return ReleaseSnapshot(tuple(records), applied_index)


def enrolment_from_pb(msg: cpb.Device) -> Enrolment:
    return Enrolment(
        device_id=msg.device_id,
        state=msg.state,
        device_class=msg.device_class,
        group=msg.group,
        public_key_pem=bytes(msg.public_key_pem),
        installed=tuple((i.component, i.release_id, i.sequence_number) for i in msg.installed),
    )


def block_news_from_pb(block: cpb.Block) -> BlockNews:
    releases_changed = False
    outcomes = False
    devices: dict[str, DeviceChange] = {}
    for raw in block.entries:
        entry = cpb.LedgerEntry()
        try:
            entry.ParseFromString(raw)
        except Exception:  # noqa: BLE001 (protobuf's DecodeError): not ours to judge
            continue
        kind = entry.WhichOneof("kind")
        if kind in RELEASE_KINDS:
            releases_changed = True
        elif kind == "device_enrollment":
            e = entry.device_enrollment
            devices[e.device_id] = DeviceChange(e.device_id, e.action)
        elif kind == "device_events":
            for event in entry.device_events.events:
                devices.setdefault(event.device_id, DeviceChange(event.device_id, "events"))
                outcomes = outcomes or event.kind in OUTCOME_KINDS
    return BlockNews(
        height=block.height,
        releases_changed=releases_changed,
        devices=tuple(devices.values()),
        outcomes=outcomes,
    )


# ---------------------------------------------------------------- ledger writes


def write_to_pb(write: LedgerWrite) -> cpb.LedgerEntry:
    """The entry of a write. An events entry's key is the device's report
    (``device/<id>``, seq) and its bytes depend on the write alone, so a
    resend through this gateway is the same entry (applied once)."""
    if isinstance(write, DeviceEventsWrite):
        return cpb.LedgerEntry(
            client_id=write.client_id or client_id_of(write.device_id),
            request_id=write.seq,
            device_events=cpb.DeviceEvents(
                events=[
                    cpb.DeviceEvent(
                        device_id=write.device_id,
                        kind=e.kind,
                        release_id=e.release_id,
                        at_unix_ms=e.at_unix_ms,
                        detail=e.detail,
                        component=e.component,
                        sequence_number=e.sequence_number,
                        gateway_id=write.gateway_id,
                    )
                    for e in write.events
                ]
            ),
        )
    assert isinstance(write, EnrolmentRequestWrite)
    return cpb.LedgerEntry(
        device_enrollment=cpb.DeviceEnrollment(
            device_id=write.device_id,
            action="request",
            device_class=write.device_class,
            public_key_pem=write.public_key_pem,
            reason=f"registered unknown at gateway {write.gateway_id}",
        )
    )


# ---------------------------------------------------------------- the session


def installed_from_pb(items: Iterable[pb.InstalledComponent]) -> tuple[rollout.Installed, ...]:
    return tuple(
        rollout.Installed(
            component=i.component,
            release_id=i.release_id,
            sequence_number=i.sequence_number,
            known_good_release_id=i.known_good_release_id,
            known_good_sequence_number=i.known_good_sequence_number,
        )
        for i in items
    )


def events_from_pb(report: pb.Report) -> tuple[ReportEvent, ...]:
    return tuple(
        ReportEvent(
            kind=e.kind,
            component=e.component,
            release_id=e.release_id,
            sequence_number=e.sequence_number,
            at_unix_ms=e.at_unix_ms,
            detail=bytes(e.detail),
        )
        for e in report.events
    )


def address_to_pb(address: GatewayAddress) -> pb.GatewayAddress:
    return pb.GatewayAddress(
        gateway_id=address.gateway_id,
        grpc_address=address.grpc_address,
        http_address=address.http_address,
        started_unix_ms=address.started_unix_ms,
    )


def address_from_pb(msg: pb.GatewayAddress) -> GatewayAddress:
    return GatewayAddress(msg.gateway_id, msg.grpc_address, msg.http_address, msg.started_unix_ms)


def challenge(nonce: bytes, gateway_id: str, now_unix_ms: int) -> pb.GatewayMessage:
    return pb.GatewayMessage(
        challenge=pb.Challenge(nonce=nonce, gateway_id=gateway_id, gateway_time_unix_ms=now_unix_ms)
    )


def welcome(
    gateway_id: str, heartbeat_interval_ms: int, gateways: Iterable[GatewayAddress], now_unix_ms: int
) -> pb.GatewayMessage:
    return pb.GatewayMessage(
        welcome=pb.Welcome(
            gateway_id=gateway_id,
            heartbeat_interval_ms=heartbeat_interval_ms,
            gateways=[address_to_pb(g) for g in gateways],
            gateway_time_unix_ms=now_unix_ms,
        )
    )


def heartbeat(now_unix_ms: int, echo_unix_ms: int) -> pb.GatewayMessage:
    return pb.GatewayMessage(
        heartbeat=pb.Heartbeat(time_unix_ms=now_unix_ms, echo_time_unix_ms=echo_unix_ms)
    )


def report_ack(seq: int, error_code: str = "", error_message: str = "") -> pb.GatewayMessage:
    return pb.GatewayMessage(
        report_ack=pb.ReportAck(seq=seq, error_code=error_code, error_message=error_message)
    )


def offer(
    decision: rollout.Decision, release: ReleaseRecord, payload_urls: Iterable[str]
) -> pb.GatewayMessage:
    view = release.view
    return pb.GatewayMessage(
        offer=pb.Offer(
            release_id=view.release_id,
            component=view.component,
            sequence_number=view.sequence_number,
            envelope=release.envelope,
            payload_cid=view.payload_cid,
            payload_size=view.payload_size,
            switch_at_unix_ms=decision.switch_at_unix_ms,
            payload_urls=list(payload_urls),
            reason=decision.reason,
        )
    )


def switch_back(decision: rollout.Decision) -> pb.GatewayMessage:
    return pb.GatewayMessage(
        switch_back=pb.SwitchBack(
            component=decision.component,
            release_id=decision.release_id,
            switch_at_unix_ms=decision.switch_at_unix_ms,
            reason=decision.reason,
        )
    )


def hold(decision: rollout.Decision) -> pb.GatewayMessage:
    return pb.GatewayMessage(hold=pb.Hold(component=decision.component, reason=decision.reason))


def redirect(address: GatewayAddress, reason: str) -> pb.GatewayMessage:
    return pb.GatewayMessage(redirect=pb.Redirect(gateway=address_to_pb(address), reason=reason))


def info_to_pb(
    me: GatewayAddress,
    node_id: str,
    sessions: int,
    live: Iterable[GatewayAddress],
    devices_by_version: dict[str, int],
    cache_bytes: int,
    cache_entries: int,
    ledger_height: int,
) -> pb.GatewayInfo:
    return pb.GatewayInfo(
        self=address_to_pb(me),
        node_id=node_id,
        sessions=sessions,
        live_gateways=[address_to_pb(g) for g in live],
        devices_by_version=devices_by_version,
        cache_bytes=cache_bytes,
        cache_entries=cache_entries,
        ledger_height=ledger_height,
    )
