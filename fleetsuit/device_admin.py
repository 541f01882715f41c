"""The operator's side of device enrolment, typed and synchronous:
``DeviceAdmin`` enrolls devices (preauthorized, as Mender and hawkBit do),
accepts or rejects the pending ones (devices that registered unknown with a
gateway), revokes any, and reads the ledger's device state (the Devices
API: enrolments, last reported versions, outcomes per release).

It rides on a ``FleetClient`` (its channels, failover and idempotent
writes): each write is a DeviceEnrollment entry under its own key
(``device-admin/<device_id>`` and a fresh request id, reused by that
call's retries only), so a retry after an unknown outcome is applied at
most once. A re-run of an enrolment that already stands (same class, group
and key) answers ``duplicate=True`` rather than DEVICE_EXISTS.

What it does not do: decide anything (the ledger applies the enrolment
rules, ``services/consensus/ledger/devices.py``), talk to gateways or
devices.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import cast

import grpc

from fleetsuit.client import FleetClient
from fleetsuit.client_errors import Refused
from fleetsuit.device_auth import load_public_key
from fleetsuit.v1 import consensus_pb2 as pb
from fleetsuit.v1 import consensus_pb2_grpc as pb_grpc

DEVICE_STATES = ("pending", "accepted", "rejected", "revoked")
_DEVICE_ID = re.compile(r"[A-Za-z0-9._:@-]{1,128}")
MAX_NAME = 128
PAGE_SIZE = 1000  # devices per ListDevices call when listing them all


def check_device_id(device_id: str) -> str:
    """``device_id`` when the ledger accepts it (1..128 of [A-Za-z0-9._:@-]), else ValueError."""
    if not _DEVICE_ID.fullmatch(device_id):
        raise ValueError(f"a device id is 1..128 characters of A-Z a-z 0-9 . _ : @ -, not {device_id[:140]!r}")
    return device_id


def enrollment_client_id(device_id: str) -> str:
    """The client id of the operator's writes about a device."""
    return f"device-admin/{device_id}"


# ---------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class InstalledVersion:
    """What a device last reported running for a component (release_id ""
    for its factory image)."""

    component: str
    release_id: str
    sequence_number: int


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """A device as the ledger holds it."""

    device_id: str
    state: str  # one of DEVICE_STATES
    device_class: str
    group: str
    public_key_pem: bytes
    state_reason: str
    installed: tuple[InstalledVersion, ...]
    last_event: str
    last_event_at_unix_ms: int
    last_gateway_id: str
    index: int  # Raft index of its last change

    @classmethod
    def from_pb(cls, msg: pb.Device) -> DeviceInfo:
        return cls(
            device_id=msg.device_id, state=msg.state, device_class=msg.device_class, group=msg.group,
            public_key_pem=msg.public_key_pem, state_reason=msg.state_reason,
            installed=tuple(InstalledVersion(v.component, v.release_id, v.sequence_number) for v in msg.installed),
            last_event=msg.last_event, last_event_at_unix_ms=msg.last_event_at_unix_ms,
            last_gateway_id=msg.last_gateway_id, index=msg.index,
        )


@dataclass(frozen=True, slots=True)
class ReleaseOutcome:
    """Devices whose last outcome for a release is a success, a failure."""

    release_id: str
    installed: int
    failed: int


@dataclass(frozen=True, slots=True)
class DeviceSummary:
    """Devices by state; accepted devices by installed version
    (``<component>@<release_id or factory>``); outcomes per release."""

    devices_by_state: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    devices_by_version: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    outcomes: tuple[ReleaseOutcome, ...] = ()
    applied_index: int = 0

    @classmethod
    def from_pb(cls, msg: pb.DeviceSummaryResponse) -> DeviceSummary:
        return cls(
            MappingProxyType(dict(sorted(msg.devices_by_state.items()))),
            MappingProxyType(dict(sorted(msg.devices_by_version.items()))),
            tuple(ReleaseOutcome(o.release_id, o.installed, o.failed) for o in msg.outcomes),
            msg.applied_index,
        )


@dataclass(frozen=True, slots=True)
class DeviceWrite:
    """Where an enrolment action was committed. ``duplicate``: it stood
    already (a re-run; ``index`` is then the device's last change and the
    block and position are 0)."""

    device_id: str
    action: str  # enroll, accept, reject, revoke
    index: int
    block_height: int
    position: int
    duplicate: bool
    client_id: str
    request_id: int


# ---------------------------------------------------------------- the client


class DeviceAdmin:
    """Enrolment writes and device reads through ``client`` (which the
    caller owns and closes)."""

    def __init__(self, client: FleetClient) -> None:
        self._client = client

    # ------------------------------------------------------------ writes

    def enroll(self, device_id: str, device_class: str, public_key_pem: bytes, group: str = "") -> DeviceWrite:
        """Enroll a device, accepted at once (a pending one is accepted with
        this key, class and group). ValueError for arguments the ledger
        would refuse, before anything is sent; Refused DEVICE_EXISTS for a
        device enrolled otherwise, or rejected or revoked."""
        check_device_id(device_id)
        if not device_class or len(device_class) > MAX_NAME:
            raise ValueError("a device class is 1..128 characters")
        if len(group) > MAX_NAME:
            raise ValueError("a group name is at most 128 characters")
        load_public_key(public_key_pem)  # DeviceKeyError is a ValueError
        try:
            return self._write(device_id, "enroll", device_class=device_class, group=group,
                               public_key_pem=public_key_pem)
        except Refused as exc:
            if exc.code != "DEVICE_EXISTS":
                raise
            device = self.get_device(device_id)
            if (device.state, device.device_class, device.group, device.public_key_pem) != (
                    "accepted", device_class, group, public_key_pem):
                raise
            return DeviceWrite(device_id, "enroll", device.index, 0, 0, True, enrollment_client_id(device_id), 0)

    def accept(self, device_id: str, group: str = "", reason: str = "") -> DeviceWrite:
        """Accept a pending device (into ``group`` when given)."""
        if len(group) > MAX_NAME:
            raise ValueError("a group name is at most 128 characters")
        return self._write(check_device_id(device_id), "accept", group=group, reason=reason)

    def reject(self, device_id: str, reason: str = "") -> DeviceWrite:
        """Reject a pending device: it is refused from then on."""
        return self._write(check_device_id(device_id), "reject", reason=reason)

    def revoke(self, device_id: str, reason: str = "") -> DeviceWrite:
        """Revoke a device (any state but revoked): gateways refuse it from then on."""
        return self._write(check_device_id(device_id), "revoke", reason=reason)

    def _write(
        self, device_id: str, action: str, *, device_class: str = "", group: str = "",
        public_key_pem: bytes = b"", reason: str = "",
    ) -> DeviceWrite:
        enrollment = pb.DeviceEnrollment(device_id=device_id, action=action, device_class=device_class,
                                         group=group, public_key_pem=public_key_pem, reason=reason)
        entry = pb.LedgerEntry(client_id=enrollment_client_id(device_id), request_id=self._client.request_id(),
                               device_enrollment=enrollment)
        answer = self._client.submit(entry, f"{action} of device {device_id}")
        return DeviceWrite(device_id, action, answer.index, answer.block_height, answer.position, answer.duplicate,
                           entry.client_id, entry.request_id)

    # ------------------------------------------------------------ reads

    def list_devices(self, state: str = "", *, stale_ok: bool = False) -> list[DeviceInfo]:
        """Every device (in ``state`` when given), by id, read a page at a time."""
        if state and state not in DEVICE_STATES:
            raise ValueError(f"state is one of {', '.join(DEVICE_STATES)}, not {state!r}")
        out: list[DeviceInfo] = []
        after = ""
        while True:
            page = self._page(pb.ListDevicesRequest(state=state, stale_ok=stale_ok, limit=PAGE_SIZE, after=after))
            out.extend(DeviceInfo.from_pb(d) for d in page.devices)
            if len(page.devices) < PAGE_SIZE:
                return out
            after = page.devices[-1].device_id

    def _page(self, request: pb.ListDevicesRequest) -> pb.ListDevicesResponse:
        return cast(pb.ListDevicesResponse, self._client.read(
            lambda channel, timeout: _stub(channel).ListDevices(request, timeout=timeout)))

    def pending(self, *, stale_ok: bool = False) -> list[DeviceInfo]:
        """The devices waiting for an operator's accept or reject."""
        return self.list_devices("pending", stale_ok=stale_ok)

    def get_device(self, device_id: str, *, stale_ok: bool = False) -> DeviceInfo:
        """One device; NotFound (DEVICE_NOT_FOUND) when the ledger has none by that id."""
        request = pb.GetDeviceRequest(device_id=device_id, stale_ok=stale_ok)
        return DeviceInfo.from_pb(cast(pb.Device, self._client.read(
            lambda channel, timeout: _stub(channel).GetDevice(request, timeout=timeout))))

    def summary(self, *, stale_ok: bool = False) -> DeviceSummary:
        request = pb.DeviceSummaryRequest(stale_ok=stale_ok)
        return DeviceSummary.from_pb(cast(pb.DeviceSummaryResponse, self._client.read(
            lambda channel, timeout: _stub(channel).DeviceSummary(request, timeout=timeout))))


def _stub(channel: grpc.Channel) -> pb_grpc.DevicesStub:
    return pb_grpc.DevicesStub(channel)
