"""The consensus service's errors: one base, meaningful subclasses, each
with a stable code. The table that maps them to gRPC statuses is at the
protobuf edge (``convert.ERRORS``); nothing here imports gRPC."""

from __future__ import annotations

from fleetsuit.errors import ServiceError


class ConsensusError(ServiceError):
    """Base of every error the consensus service raises on purpose.

    ``definite``: whether the outcome of the call is known. Every error is
    definite (nothing of the request happened, or what happened is what the
    error says) except ``OutcomeUnknown``: a submission that may have entered
    a log and may still commit. The answer carries it in the trailing
    metadata (``fleetsuit-outcome``: ``definite`` or ``unknown``)."""

    code = "CONSENSUS_ERROR"
    definite = True

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        return ((OUTCOME_KEY, "definite" if self.definite else "unknown"),)


OUTCOME_KEY = "fleetsuit-outcome"


class StorageError(ConsensusError):
    """The data directory cannot be used; the node must stop, nothing is written."""

    code = "STORAGE_ERROR"


class StorageFull(StorageError):
    code = "STORAGE_FULL"


class StorageCorrupt(StorageError):
    code = "STORAGE_CORRUPT"


class WrongDataDirectory(StorageError):
    """The directory belongs to another node or cluster."""

    code = "WRONG_DATA_DIRECTORY"


class NoLeader(ConsensusError):
    """No leader was known before the deadline and the entry never left this
    node: it entered no log and never will (definite)."""

    code = "NO_LEADER"


class OutcomeUnknown(ConsensusError):
    """The entry was proposed (or forwarded to a leader) but its application
    was not seen before the deadline: it may still commit. Resubmit with the
    same idempotency key: the answer is then its fate, applied at most once."""

    code = "OUTCOME_UNKNOWN"
    definite = False


class IdempotencyKeyReused(ConsensusError):
    """The submission's (client_id, request_id) was already used for an entry
    with different content; nothing of this one was applied."""

    code = "IDEMPOTENCY_KEY_REUSED"


class InvalidEntry(ConsensusError):
    code = "INVALID_ENTRY"


class BlockNotFound(ConsensusError):
    code = "BLOCK_NOT_FOUND"


class Overloaded(ConsensusError):
    """Too many submissions are waiting for commit on this node; retry later."""

    code = "OVERLOADED"


class ShuttingDown(ConsensusError):
    code = "SHUTTING_DOWN"


class SnapshotRejected(ConsensusError):
    """A snapshot chunk or a received snapshot that is refused (bad offset,
    size, format or checksum); the sender starts over."""

    code = "SNAPSHOT_REJECTED"


class NotLeader(ConsensusError):
    """Only the leader takes this request."""

    code = "NOT_LEADER"

    def __init__(self, message: str, leader_hint: str = "") -> None:
        super().__init__(message)
        self.leader_hint = leader_hint


class MembershipRefused(ConsensusError):
    """A membership change that does not apply, or one while another is pending."""

    code = "MEMBERSHIP_REFUSED"


class ReadTimeout(ConsensusError):
    code = "READ_TIMEOUT"


class ChangePending(ConsensusError):
    """Another membership change (or the leader's first commit) is pending; retry."""

    code = "CHANGE_PENDING"


class WrongCluster(ConsensusError):
    """A peer that names another cluster."""

    code = "WRONG_CLUSTER"


class BadPeerMessage(ConsensusError):
    """A peer message that cannot be read or is not what the call carries."""

    code = "BAD_MESSAGE"


class NoSnapshots(ConsensusError):
    """A snapshot sent to a node that keeps none."""

    code = "NO_SNAPSHOTS"


class CheckUnavailable(ConsensusError):
    """The node's manifest or dht service, which check a release before it is
    proposed, cannot be reached; nothing was proposed (retry)."""

    code = "CHECK_UNAVAILABLE"


class ReleaseNotFound(ConsensusError):
    code = "RELEASE_NOT_FOUND"


class DeviceNotFound(ConsensusError):
    code = "DEVICE_NOT_FOUND"


# ---------------------------------------------------------------- refusals
# A release entry refused by the check before proposal, or recorded as
# refused by every node when applied: nothing of it takes effect. The codes
# are stored in the ledger's refusal table; ``refusal(code, message)``
# rebuilds the typed error from them.


class ReleaseRefused(ConsensusError):
    """Base of the release refusals (definite: the entry never takes effect)."""

    code = "RELEASE_REFUSED"


class UntrustedKey(ReleaseRefused):
    """Not signed by a trust anchor allowed for the component and device class."""

    code = "UNTRUSTED_KEY"


class StaleSequence(ReleaseRefused):
    """The sequence number is not greater than the component's current one."""

    code = "STALE_SEQUENCE"


class PayloadMissing(ReleaseRefused):
    """The payload is not in the dht (checked before proposal only)."""

    code = "PAYLOAD_MISSING"


class DigestMismatch(ReleaseRefused):
    """The payload's digest or size differs from what the manifest says."""

    code = "DIGEST_MISMATCH"


class Revoked(ReleaseRefused):
    """The release (or its sequence number for that component) was revoked."""

    code = "REVOKED"


class DuplicateRelease(ReleaseRefused):
    """A release with this id exists already (with other content)."""

    code = "DUPLICATE_RELEASE"


class InvalidRelease(ReleaseRefused):
    """The envelope does not decode, or says something else than the entry
    (component, sequence number, device class, payload)."""

    code = "INVALID_RELEASE"


class UnknownRelease(ReleaseRefused):
    """A revocation or rollout action names a release the ledger does not have."""

    code = "UNKNOWN_RELEASE"


class InvalidTransition(ReleaseRefused):
    """A rollout action that does not apply in the release's state (resume a
    halted release, pause a revoked one, ...)."""

    code = "INVALID_TRANSITION"


class NoTrustAnchors(ReleaseRefused):
    """The ledger holds no trust anchors yet (the cluster was started without
    any): no release can be checked."""

    code = "NO_TRUST_ANCHORS"


class AnchorsRefused(ReleaseRefused):
    """A trust-anchor entry that is not the cluster's bootstrap (changing the
    anchors needs the root-signed rotation of the security issue)."""

    code = "ANCHORS_REFUSED"


# Device entries (``ledger/devices.py``) refused on apply: a sibling family
# under the same base, so they share the release refusals' handling (the
# refusal table, FAILED_PRECONDITION, a definite outcome).


class DeviceRefused(ReleaseRefused):
    """Base of the device refusals (DeviceEnrollment, DeviceEvents)."""

    code = "DEVICE_REFUSED"


class InvalidDevice(DeviceRefused):
    """An enrolment that names no valid device id, class, key or action."""

    code = "INVALID_DEVICE"


class DeviceExists(DeviceRefused):
    """An enrol or a registration request for a device id the ledger has
    (enrolling a pending device accepts it instead)."""

    code = "DEVICE_EXISTS"


class DeviceUnknown(DeviceRefused):
    """An action or a report for a device id the ledger does not have."""

    code = "DEVICE_UNKNOWN"


class WrongDeviceState(DeviceRefused):
    """An action that does not apply in the device's state (accept or reject
    a device that is not pending, revoke a revoked one)."""

    code = "DEVICE_STATE"


class DeviceNotAccepted(DeviceRefused):
    """A report from a device that is pending, rejected or revoked."""

    code = "DEVICE_NOT_ACCEPTED"


class InvalidEvent(DeviceRefused):
    """A report that is malformed: an unknown kind, events of several
    devices, too many events or too much detail, a missing field."""

    code = "INVALID_EVENT"


REFUSALS: dict[str, type[ReleaseRefused]] = {
    cls.code: cls
    for cls in (
        UntrustedKey, StaleSequence, PayloadMissing, DigestMismatch, Revoked, DuplicateRelease,
        InvalidRelease, UnknownRelease, InvalidTransition, NoTrustAnchors, AnchorsRefused,
    )
}
DEVICE_REFUSALS: dict[str, type[ReleaseRefused]] = {
    cls.code: cls
    for cls in (InvalidDevice, DeviceExists, DeviceUnknown, WrongDeviceState, DeviceNotAccepted, InvalidEvent)
}
_ALL_REFUSALS = {**REFUSALS, **DEVICE_REFUSALS}


def refusal(code: str, message: str) -> ReleaseRefused:
    """The typed refusal for a stored code (ReleaseRefused for an unknown one)."""
    error = _ALL_REFUSALS.get(code, ReleaseRefused)(message)
    if error.code != code:
        error.code = code
    return error
