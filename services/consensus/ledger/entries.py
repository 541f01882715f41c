"""The ledger's typed values (frozen, slotted; protobuf stays in
``codec.py``): what the ledger machine and certification read of an entry,
and a node's signature over a block."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from .keys import RequestKey


@dataclass(frozen=True, slots=True)
class MemberKey:
    """A node's block-signing key as a MembershipChanged entry records it,
    with its proof of possession (the key's signature over ``key_message``)."""

    node_id: str
    public_key: bytes
    key_proof: bytes


@dataclass(frozen=True, slots=True)
class RolloutPolicy:
    """When and to whom a release goes out (the gateways apply it; the
    ledger applies the automatic halt, ``devices.py``)."""

    start_at_unix_ms: int = 0
    end_at_unix_ms: int = 0  # 0: no end
    experimental: bool = False
    stages: tuple[int, ...] = ()  # cumulative percentages, ascending, ending at 100
    stage_interval_ms: int = 0  # stage k opens at start + k * interval (0: all at the start)
    groups: tuple[str, ...] = ()  # device groups targeted (empty: every group)
    halt_failure_percent: int = 0  # 0: never halted automatically
    halt_min_devices: int = 0  # outcomes needed before the halt may trigger


@dataclass(frozen=True, slots=True)
class Publish:
    """A ReleasePublished entry."""

    release_id: str
    envelope: bytes
    component: str
    sequence_number: int
    payload_cid: str
    payload_size: int
    device_classes: tuple[str, ...]
    vendor_domain: str
    rollout: RolloutPolicy


@dataclass(frozen=True, slots=True)
class Revoke:
    release_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class RolloutAction:
    release_id: str
    action: str  # pause, resume, halt
    reason: str


@dataclass(frozen=True, slots=True)
class Anchor:
    """A trust anchor: a publisher key allowed to sign releases, for the
    components and device classes named (empty: any)."""

    key_id: str
    public_key_pem: bytes
    components: tuple[str, ...] = ()
    device_classes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class AnchorSet:
    anchors: tuple[Anchor, ...]
    root_signature: bytes = b""


@dataclass(frozen=True, slots=True)
class Release:
    """A release as the ledger holds it: what was published, where it sits
    in the chain, and its rollout state."""

    release_id: str
    component: str
    device_classes: tuple[str, ...]
    vendor_domain: str
    sequence_number: int
    payload_cid: str
    payload_size: int
    envelope: bytes
    rollout: RolloutPolicy
    state: str
    state_reason: str
    index: int
    block_height: int
    position: int
    signer_key_id: str


@dataclass(frozen=True, slots=True)
class Refusal:
    """An entry the ledger recorded but refused when applying it."""

    index: int
    block_height: int
    position: int
    kind: str
    release_id: str
    code: str
    message: str


ReleaseEntry = Publish | Revoke | RolloutAction | AnchorSet


@dataclass(frozen=True, slots=True)
class Enrollment:
    """A DeviceEnrollment entry: an operator's (enroll, accept, reject,
    revoke) or a gateway's for a device that registered unknown (request)."""

    device_id: str
    action: str  # enroll, request, accept, reject, revoke
    device_class: str = ""
    group: str = ""
    public_key_pem: bytes = b""
    reason: str = ""


@dataclass(frozen=True, slots=True)
class DeviceEvent:
    """One thing a device reported through its gateway. For installed,
    fell_back, switched_back and version, (component, release_id,
    sequence_number) is what the device runs after it; for install_failed
    and refused, the release that failed or was refused."""

    device_id: str
    kind: str
    release_id: str = ""
    at_unix_ms: int = 0
    detail: bytes = b""
    component: str = ""
    sequence_number: int = 0
    gateway_id: str = ""


@dataclass(frozen=True, slots=True)
class DeviceEvents:
    """A DeviceEvents entry: one device's report (its gateway submits one
    entry per report)."""

    events: tuple[DeviceEvent, ...]


DeviceEntry = Enrollment | DeviceEvents
LedgerBody = ReleaseEntry | DeviceEntry


@dataclass(frozen=True, slots=True)
class InstalledVersion:
    """What a device last reported running for a component ("" release:
    its factory image)."""

    component: str
    release_id: str
    sequence_number: int


@dataclass(frozen=True, slots=True)
class Device:
    """A device as the ledger holds it: its enrolment, and what it last
    reported (``index``: the Raft index of its last change)."""

    device_id: str
    state: str  # pending, accepted, rejected, revoked
    device_class: str
    group: str
    public_key_pem: bytes
    state_reason: str = ""
    installed: tuple[InstalledVersion, ...] = ()  # sorted by component
    last_event: str = ""
    last_event_at_unix_ms: int = 0
    last_gateway_id: str = ""
    index: int = 0


@dataclass(frozen=True, slots=True)
class ReleaseOutcomes:
    """How many devices' last outcome for a release is a success, a failure."""

    release_id: str
    installed: int = 0
    failed: int = 0


class EntryView(NamedTuple):
    """What the ledger machine needs of one ledger entry: its idempotency
    key (None: not idempotent), its kind (``app``, ``release_published``,
    ``membership_changed``, ...; None for an entry of no known kind) and the
    member keys it records. (A named tuple: one is made for every entry
    every node applies, and a frozen dataclass is several times dearer to
    make.)"""

    key: RequestKey | None
    kind: str | None
    members: tuple[MemberKey, ...] = ()
    body: LedgerBody | None = None  # the release and device kinds' content


class Applied(NamedTuple):
    """The answer for one ledger entry, handed to whoever submitted it and
    stored in the request table (a named tuple: one is made per
    submission). ``position``: the entry's place in its block; ``digest``:
    ``keys.entry_digest`` of the applied entry; ``outcome``: "" when the
    entry took effect, else the code it was refused with (a release refusal
    recorded in the block, or IDEMPOTENCY_KEY_REUSED for an entry left out
    because its key was used by other content), and ``message`` why."""

    key: RequestKey | None
    index: int  # type: ignore[assignment]  # the field shadows tuple.index, on purpose
    block_height: int
    duplicate: bool
    position: int = 0
    digest: bytes = b""
    outcome: str = ""
    message: str = ""
    # The applied entry's bytes, for this process only (never stored): the
    # node that took the submission tells its own entry from another with
    # the same key by comparing bytes, without hashing them.
    entry: bytes = b""


@dataclass(frozen=True, slots=True)
class BlockSignature:
    """One node's signature over the hash of the block at ``height``."""

    height: int
    hash: bytes
    node_id: str
    signature: bytes
