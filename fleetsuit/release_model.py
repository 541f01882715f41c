"""The release model a client sees: frozen dataclasses for releases, their
rollout policy, refusals, trust anchors and node status; the rules of a
rollout policy; the idempotency keys of release writes; and the protobuf
edge that translates the Releases and Ledger answers into these types.

Pure data and pure functions: no gRPC calls, no clock, no randomness (a
caller that needs a fresh request id passes it in). The calls themselves
are ``fleetsuit.client``'s.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from fleetsuit.v1 import consensus_pb2 as pb

DEFAULT_DEVICE_CLASS = "default"
DEFAULT_VENDOR_DOMAIN = "fleetsuit.example"
CID_PREFIX = "sha256:"
_CID = re.compile(r"sha256:[0-9a-f]{64}")
MAX_UINT64 = 2**64 - 1
MAX_UINT32 = 2**32 - 1
MAX_NAME = 128  # characters in a group name (as the ledger's other names)
MAX_GROUPS = 256  # groups one rollout may target

STATES = ("active", "paused", "halted", "revoked", "ended")
ROLLOUT_ACTIONS = ("pause", "resume", "halt")


# ---------------------------------------------------------------- keys


def release_id_of(component: str, sequence: int) -> str:
    """The id the ledger gives a release when none is named: ``component@sequence``."""
    return f"{component}@{sequence}"


def release_key(component: str, sequence: int) -> tuple[str, int]:
    """The idempotency key of a push: one per (component, sequence), so a
    re-run of the same push (a CI job retried) gets the first answer."""
    return f"release/{component}", sequence


def rollout_client_id(release_id: str) -> str:
    """The client id of a rollout action (pause, resume, halt) on a release;
    each call draws its own request id, reused only by its retries."""
    return f"rollout/{release_id}"


def revoke_client_id(release_id: str) -> str:
    return f"revoke/{release_id}"


def check_content_id(cid: str) -> str:
    """``cid`` when it is a dht content id (``sha256:`` and 64 lowercase hex
    digits, the payload's SHA-256), else ValueError."""
    if not _CID.fullmatch(cid):
        raise ValueError(f"payload cid must be sha256:<64 lowercase hex digits>, not {cid[:80]!r}")
    return cid


def check_release_names(component: str, sequence: int, device_class: str, vendor_domain: str) -> None:
    """ValueError naming the first bad field of a push."""
    if not component:
        raise ValueError("component must not be empty")
    if not 1 <= sequence <= MAX_UINT64:
        # The sequence is also the push's request id, and 0 is no request id.
        raise ValueError(f"sequence must be between 1 and 2**64-1, not {sequence}")
    if not device_class:
        raise ValueError("device_class must not be empty")
    if not vendor_domain:
        raise ValueError("vendor_domain must not be empty")


# ---------------------------------------------------------------- rollout


def stage_opens_at(start_at_unix_ms: int, stage_interval_ms: int, stage: int) -> int:
    """Stage k (from 0) of a rollout opens at start + k * stage interval
    (consensus.proto RolloutPolicy): the one rule the gateways admit devices
    by and the views report."""
    return start_at_unix_ms + stage * stage_interval_ms


def stages_open(stage_count: int, start_at_unix_ms: int, stage_interval_ms: int, now_unix_ms: int) -> int:
    """How many of a rollout's ``stage_count`` stages are open at ``now``."""
    return sum(1 for k in range(stage_count)
               if stage_opens_at(start_at_unix_ms, stage_interval_ms, k) <= now_unix_ms)


@dataclass(frozen=True, slots=True)
class RolloutPolicy:
    """When and to how much of the fleet a release goes out. Times are unix
    milliseconds, 0 meaning "at once" (start) or "no end" (end); ``stages``
    are cumulative percentages of the fleet, ascending and ending at 100
    (empty: everyone at once), stage k opening at start + k *
    ``stage_interval_ms``. An experimental release needs an end: the devices
    switch back then. ``groups``: the device groups it targets (empty:
    every group). The ledger halts the release once at least
    ``halt_min_devices`` devices reported an outcome and
    ``halt_failure_percent`` of them failed (0: never)."""

    start_at_unix_ms: int = 0
    end_at_unix_ms: int = 0
    experimental: bool = False
    stages: tuple[int, ...] = ()
    stage_interval_ms: int = 0
    groups: tuple[str, ...] = ()
    halt_failure_percent: int = 0
    halt_min_devices: int = 0

    def validate(self) -> RolloutPolicy:
        """Self, or ValueError naming the bad field."""
        for name, value in (("start_at", self.start_at_unix_ms), ("end_at", self.end_at_unix_ms)):
            if not 0 <= value <= MAX_UINT64:
                raise ValueError(f"{name} must be a unix time in milliseconds, not {value}")
        if self.experimental and not self.end_at_unix_ms:
            raise ValueError("end_at: an experimental release needs an end time")
        if self.end_at_unix_ms and self.end_at_unix_ms <= self.start_at_unix_ms:
            raise ValueError("end_at must be after start_at")
        if self.stages:
            if any(not 1 <= s <= 100 for s in self.stages):
                raise ValueError(f"stages are percentages from 1 to 100, not {list(self.stages)}")
            if any(b <= a for a, b in zip(self.stages, self.stages[1:], strict=False)):
                raise ValueError(f"stages must be strictly ascending, not {list(self.stages)}")
            if self.stages[-1] != 100:
                raise ValueError(f"stages must end at 100, not {self.stages[-1]}")
        if not 0 <= self.stage_interval_ms <= MAX_UINT64:
            raise ValueError(f"stage_interval must not be negative, not {self.stage_interval_ms} ms")
        if self.stage_interval_ms and not self.start_at_unix_ms:
            # Stage k opens at start + k * interval: without a start every
            # stage would have opened long ago (and a start stamped here would
            # make a re-run of the same push a different release).
            raise ValueError("start_at: stages opening at an interval need a start time")
        if len(self.groups) > MAX_GROUPS or any(not g or len(g) > MAX_NAME for g in self.groups):
            raise ValueError(f"groups are at most {MAX_GROUPS} names of 1..{MAX_NAME} characters")
        if not 0 <= self.halt_failure_percent <= 100:
            raise ValueError(f"halt_failure_percent is from 0 to 100, not {self.halt_failure_percent}")
        if not 0 <= self.halt_min_devices <= MAX_UINT32:
            raise ValueError(f"halt_min_devices must be from 0 to 2**32-1, not {self.halt_min_devices}")
        return self

    def to_pb(self) -> pb.RolloutPolicy:
        return pb.RolloutPolicy(
            start_at_unix_ms=self.start_at_unix_ms, end_at_unix_ms=self.end_at_unix_ms,
            experimental=self.experimental, stages=list(self.stages), stage_interval_ms=self.stage_interval_ms,
            groups=list(self.groups), halt_failure_percent=self.halt_failure_percent,
            halt_min_devices=self.halt_min_devices,
        )

    @classmethod
    def from_pb(cls, msg: pb.RolloutPolicy) -> RolloutPolicy:
        return cls(msg.start_at_unix_ms, msg.end_at_unix_ms, msg.experimental, tuple(msg.stages),
                   msg.stage_interval_ms, tuple(msg.groups), msg.halt_failure_percent, msg.halt_min_devices)


# ---------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class ReleaseInfo:
    """A release as the ledger's state holds it."""

    release_id: str
    component: str
    sequence_number: int
    device_classes: tuple[str, ...]
    vendor_domain: str
    payload_cid: str
    payload_size: int
    rollout: RolloutPolicy
    state: str  # one of STATES
    state_reason: str
    index: int  # Raft index of the entry that published it
    block_height: int
    position: int  # in that block (for a proof)
    signer_key_id: str
    envelope: bytes | None = None  # only when asked for

    @classmethod
    def from_pb(cls, msg: pb.Release) -> ReleaseInfo:
        return cls(
            release_id=msg.release_id, component=msg.component, sequence_number=msg.sequence_number,
            device_classes=tuple(msg.device_classes), vendor_domain=msg.vendor_domain,
            payload_cid=msg.payload_cid, payload_size=msg.payload_size,
            rollout=RolloutPolicy.from_pb(msg.rollout), state=msg.state, state_reason=msg.state_reason,
            index=msg.index, block_height=msg.block_height, position=msg.position,
            signer_key_id=msg.signer_key_id, envelope=msg.envelope or None,
        )

    def publishes(self, entry: pb.ReleasePublished) -> bool:
        """Whether this release is what ``entry`` publishes (its envelope
        aside: a P-256 signature differs on every run)."""
        return (
            self.component == entry.component
            and self.sequence_number == entry.sequence_number
            and self.payload_cid == entry.payload_cid
            and self.payload_size == entry.payload_size
            and self.device_classes == tuple(entry.device_classes)
            and self.vendor_domain == entry.vendor_domain
            and self.rollout == RolloutPolicy.from_pb(entry.rollout)
        )


@dataclass(frozen=True, slots=True)
class PushResult:
    """Where a release was published: its id and the ledger position of its
    entry. ``duplicate``: it was published earlier (a re-run of the push)."""

    release_id: str
    index: int
    block_height: int
    position: int
    duplicate: bool
    payload_cid: str
    payload_size: int
    uploaded: bool  # the payload was sent to the dht by this push


@dataclass(frozen=True, slots=True)
class WriteResult:
    """Where a revocation or a rollout action was committed."""

    release_id: str
    index: int
    block_height: int
    position: int
    duplicate: bool
    client_id: str
    request_id: int


@dataclass(frozen=True, slots=True)
class RefusalInfo:
    """An entry the ledger recorded and refused when it applied it."""

    index: int
    block_height: int
    position: int
    kind: str
    release_id: str
    code: str
    message: str

    @classmethod
    def from_pb(cls, msg: pb.Refusal) -> RefusalInfo:
        return cls(msg.index, msg.block_height, msg.position, msg.kind, msg.release_id, msg.code, msg.message)


@dataclass(frozen=True, slots=True)
class TrustAnchorInfo:
    key_id: str
    public_key_pem: bytes
    components: tuple[str, ...]
    device_classes: tuple[str, ...]

    @classmethod
    def from_pb(cls, msg: pb.TrustAnchor) -> TrustAnchorInfo:
        return cls(msg.key_id, msg.public_key_pem, tuple(msg.components), tuple(msg.device_classes))


@dataclass(frozen=True, slots=True)
class MemberInfo:
    node_id: str
    address: str  # host:port of its consensus service
    voter: bool


@dataclass(frozen=True, slots=True)
class StatusInfo:
    """One node's view: its role, the ledger's heights, the members and the
    node's services (``consensus``, ``dht``, ``manifest``, ``gateway`` ->
    host:port)."""

    node_id: str
    role: str
    term: int
    leader_id: str
    commit_index: int
    applied_index: int
    block_height: int
    certified_height: int
    cluster_id: str
    members: tuple[MemberInfo, ...]
    services: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    @classmethod
    def from_pb(cls, msg: pb.StatusResponse) -> StatusInfo:
        return cls(
            node_id=msg.node_id, role=msg.role, term=msg.term, leader_id=msg.leader_id,
            commit_index=msg.commit_index, applied_index=msg.applied_index,
            block_height=msg.block_height, certified_height=msg.certified_height,
            cluster_id=msg.cluster_id,
            members=tuple(MemberInfo(m.node_id, m.address, m.voter) for m in msg.members),
            services=MappingProxyType(dict(msg.services)),
        )
