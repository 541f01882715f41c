"""The gateway's data: what it knows of a device, of the other gateways,
of the ledger (releases, what a block changed) and what it writes to the
ledger. Frozen, slotted, no I/O and no protobuf (``convert.py`` translates),
so every other module of the gateway, the ports included, can share them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from . import rollout

# ---------------------------------------------------------------- devices

ACCEPTED = "accepted"
PENDING = "pending"
REJECTED = "rejected"
REVOKED = "revoked"


@dataclass(frozen=True, slots=True)
class Enrolment:
    """A device as the ledger's device table holds it."""

    device_id: str
    state: str  # pending, accepted, rejected, revoked
    device_class: str = ""
    group: str = ""
    public_key_pem: bytes = b""
    # What the ledger last recorded it runs: (component, release id, sequence).
    installed: tuple[tuple[str, str, int], ...] = ()


# ---------------------------------------------------------------- gateways


@dataclass(frozen=True, slots=True)
class GatewayAddress:
    gateway_id: str
    grpc_address: str  # HOST:PORT of Session
    http_address: str  # HOST:PORT of the payload downloads
    # When the gateway process started (unix ms; 0: not known): a gateway
    # seen again with another value has restarted.
    started_unix_ms: int = 0


# ---------------------------------------------------------------- the ledger, read


@dataclass(frozen=True, slots=True)
class ReleaseRecord:
    view: rollout.ReleaseView
    envelope: bytes = b""


@dataclass(frozen=True, slots=True)
class ReleaseSnapshot:
    releases: tuple[ReleaseRecord, ...]
    applied_index: int = 0


@dataclass(frozen=True, slots=True)
class DeviceChange:
    device_id: str
    action: str  # an enrolment's action (enroll, request, accept, reject, revoke) or "events"


@dataclass(frozen=True, slots=True)
class BlockNews:
    """What one block means to a gateway."""

    height: int
    releases_changed: bool = False
    devices: tuple[DeviceChange, ...] = ()
    # Install outcomes were reported: the ledger may have halted a release
    # automatically (no rollout entry says so), so the view is read again,
    # at most once a second (ledger_view.SOFT_REFRESH_S).
    outcomes: bool = False


Releases = Mapping[str, ReleaseRecord]


# ---------------------------------------------------------------- the ledger, written


def client_id_of(device_id: str) -> str:
    return f"device/{device_id}"


def versions_client_id_of(device_id: str) -> str:
    """The key space of the versions a gateway records for a device at
    registration (request id: the gateway's clock in microseconds), apart
    from the device's own report numbers."""
    return f"device-versions/{device_id}"


@dataclass(frozen=True, slots=True)
class ReportEvent:
    kind: str  # installed, install_failed, fell_back, switched_back, refused, version
    component: str = ""
    release_id: str = ""
    sequence_number: int = 0
    at_unix_ms: int = 0
    detail: bytes = b""


@dataclass(frozen=True, slots=True)
class DeviceEventsWrite:
    """One device Report, as one ledger entry."""

    device_id: str
    seq: int
    gateway_id: str
    events: tuple[ReportEvent, ...]
    # The entry's client id: the device's reports use client_id_of(device);
    # what a gateway records on its own (versions) uses another space.
    client_id: str = ""


@dataclass(frozen=True, slots=True)
class EnrolmentRequestWrite:
    """An unknown device that proved its key asks to be enrolled (pending)."""

    device_id: str
    device_class: str
    public_key_pem: bytes
    gateway_id: str


LedgerWrite = DeviceEventsWrite | EnrolmentRequestWrite


@dataclass(frozen=True, slots=True)
class Committed:
    block_height: int
    duplicate: bool = False
