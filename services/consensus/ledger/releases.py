"""The release state: typed tables every node derives, deterministically,
from the release entries it applies (sans-I/O: the ledger machine calls it
with the entry, where it sits in the chain, and the applied state; nothing
here reads a clock, the network or the disk directly).

Tables (``LedgerStore.table_get/table_scan``, records encoded by
``codec.py``):

    release/<release_id>       the release: what was published, where, its state
    sequence/<component>       the highest sequence number published for it
    anchor/<key_id>            the trust anchors (publisher keys, scoped)
    refusal/<u64 index>:<pos>  entries recorded in a block but refused on apply

The checks on apply are the deterministic part of a release's validation,
so a leader that proposes an entry without its own checks cannot make it a
release: the envelope's COSE signature against the ledger's anchors (scoped
to the component and device class), the manifest saying what the entry
says (component, sequence number, device class, payload digest and size),
the sequence number above the component's current one, no second release
with the same id. A refused entry stays in its block (the log ordered it)
and is recorded with its code and reason; it never becomes a release.

Release states: ``active`` -> ``paused`` -> ``active`` (pause, resume);
``active``/``paused`` -> ``halted`` (halt, final; also the automatic halt
the device state applies when a release's failures cross its policy's
threshold, ``halt``); any but ``revoked`` -> ``revoked`` (revoke, final).
``ended`` is not stored: a reader reports an active release whose end time
has passed as ended (``effective_state``).

``Tables`` (the pending writes of a batch, visible to its later entries)
is shared with the device state (``devices.py``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import replace

from suit.auth import TrustAnchor
from suit.device import AnyUri, DeviceContext, ImageInfo, class_id, vendor_id
from suit.errors import SuitError
from suit.keys import load_public_pem, public_der
from suit.processor import process

from ..errors import (
    AnchorsRefused,
    DigestMismatch,
    DuplicateRelease,
    InvalidRelease,
    InvalidTransition,
    NoTrustAnchors,
    ReleaseRefused,
    Revoked,
    StaleSequence,
    UnknownRelease,
    UntrustedKey,
)
from .codec import (
    anchor_from_bytes,
    anchor_to_bytes,
    refusal_from_bytes,
    refusal_to_bytes,
    release_from_bytes,
    release_to_bytes,
)
from .entries import (
    Anchor,
    AnchorSet,
    Publish,
    Refusal,
    Release,
    ReleaseEntry,
    Revoke,
    RolloutAction,
)
from .tables import Tables

ACTIVE, PAUSED, HALTED, REVOKED, ENDED = "active", "paused", "halted", "revoked", "ended"
STATES = (ACTIVE, PAUSED, HALTED, REVOKED, ENDED)

T_RELEASE, T_SEQUENCE, T_ANCHOR, T_REFUSAL = "release", "sequence", "anchor", "refusal"

DEFAULT_VENDOR_DOMAIN = "fleetsuit.example"
DEFAULT_DEVICE_CLASS = "default"
CID_PREFIX = "sha256:"
MAX_NAME = 128  # characters in a component, device class, release id, key id or group
MAX_GROUPS = 256  # device groups a rollout may name
MAX_REASON = 1024  # characters of a state reason kept

# What the SUIT processor's codes mean for a release.
_SUIT_REFUSALS: dict[str, type[ReleaseRefused]] = {
    "SIGNATURE_INVALID": UntrustedKey,
    "UNTRUSTED_SIGNER": UntrustedKey,
    "NO_AUTHENTICATION": UntrustedKey,
    "UNSUPPORTED_ALGORITHM": UntrustedKey,
    "ROLLBACK": StaleSequence,
    "IMAGE_DIGEST_MISMATCH": DigestMismatch,
    "IMAGE_SIZE_MISMATCH": DigestMismatch,
}

# Rollout actions: the states each applies in, and the state it leads to.
_TRANSITIONS: dict[str, tuple[frozenset[str], str]] = {
    "pause": (frozenset({ACTIVE}), PAUSED),
    "resume": (frozenset({PAUSED}), ACTIVE),
    "halt": (frozenset({ACTIVE, PAUSED}), HALTED),
}


def default_release_id(component: str, sequence_number: int) -> str:
    return f"{component}@{sequence_number}"


def refusal_for_suit(code: str, message: str) -> ReleaseRefused:
    """The release refusal for a SUIT processing error code."""
    return _SUIT_REFUSALS.get(code, InvalidRelease)(f"{code}: {message}")


def key_id_of(public_key_pem: bytes) -> str:
    """A trust anchor's default id: the first 16 hex digits of the SHA-256
    of its SubjectPublicKeyInfo."""
    return hashlib.sha256(public_der(load_public_pem(public_key_pem))).hexdigest()[:16]


def component_id(component: str) -> tuple[bytes, ...]:
    """A release's component as a SUIT component identifier: one part, the
    UTF-8 bytes of its name."""
    return (component.encode(),)


def suit_anchors(anchors: Sequence[Anchor], vendor_domain: str) -> list[tuple[TrustAnchor, Anchor]]:
    """The ledger's anchors as the SUIT library's, scoped by component and by
    the class ids of the named device classes under ``vendor_domain``.
    Anchors whose key does not load are left out (the bootstrap refuses them)."""
    out = []
    for anchor in anchors:
        try:
            key = load_public_pem(anchor.public_key_pem)
        except (SuitError, ValueError):
            continue
        out.append((TrustAnchor(
            key,
            anchor.key_id.encode(),
            frozenset(class_id(vendor_domain, c) for c in anchor.device_classes) if anchor.device_classes else None,
            frozenset(component_id(c) for c in anchor.components) if anchor.components else None,
        ), anchor))
    return out


def check_fields(publish: Publish) -> None:
    """What an entry must say before its envelope is looked at."""
    if not publish.component or len(publish.component) > MAX_NAME:
        raise InvalidRelease("a release needs a component name (at most 128 characters)")
    if publish.sequence_number <= 0:
        raise InvalidRelease("the sequence number must be at least 1")
    if not publish.device_classes or any(not c or len(c) > MAX_NAME for c in publish.device_classes):
        raise InvalidRelease("a release needs at least one device class name")
    if not publish.vendor_domain:
        raise InvalidRelease("a release needs a vendor domain")
    if len(publish.release_id) > MAX_NAME:
        raise InvalidRelease("the release id is longer than 128 characters")
    digest = payload_digest(publish.payload_cid)
    if digest is None:
        raise InvalidRelease(f"payload_cid {publish.payload_cid!r} is not sha256:<64 hex digits>")
    if publish.payload_size <= 0:
        raise InvalidRelease("the payload size must be at least 1 byte")
    policy = publish.rollout
    if policy.end_at_unix_ms and policy.end_at_unix_ms <= policy.start_at_unix_ms:
        raise InvalidRelease("the rollout ends before it starts")
    if policy.experimental and not policy.end_at_unix_ms:
        raise InvalidRelease("an experimental release needs an end time")
    stages = policy.stages
    if stages and (list(stages) != sorted(set(stages)) or stages[-1] != 100 or stages[0] <= 0):
        raise InvalidRelease("rollout stages must be ascending percentages ending at 100")
    if len(policy.groups) > MAX_GROUPS or any(not g or len(g) > MAX_NAME for g in policy.groups):
        raise InvalidRelease(f"rollout groups are 1..{MAX_GROUPS} names of 1..128 characters")
    if not 0 <= policy.halt_failure_percent <= 100:
        raise InvalidRelease("the automatic halt's failure percentage must be between 0 and 100")


def payload_digest(cid: str) -> bytes | None:
    if not cid.startswith(CID_PREFIX) or len(cid) != len(CID_PREFIX) + 64:
        return None
    try:
        return bytes.fromhex(cid[len(CID_PREFIX) :])
    except ValueError:
        return None


def check_envelope(publish: Publish, anchors: Sequence[Anchor], current_sequence: int) -> Anchor:
    """Authenticate the envelope against the anchors for every device class
    of the release and check that the manifest says what the entry says.
    Returns the anchor that signed it; raises a ReleaseRefused."""
    if not anchors:
        raise NoTrustAnchors("the ledger holds no trust anchors; no release can be checked")
    scoped = suit_anchors(anchors, publish.vendor_domain)
    digest = payload_digest(publish.payload_cid)
    assert digest is not None  # check_fields ran first
    component = component_id(publish.component)
    context_base = DeviceContext(
        vendor_id=vendor_id(publish.vendor_domain),
        class_id=b"",
        installed_sequence={component: current_sequence} if current_sequence else {},
        fetchable=AnyUri(ImageInfo(digest, publish.payload_size)),
    )
    signer: Anchor | None = None
    for device_class in publish.device_classes:
        context = replace(context_base, class_id=class_id(publish.vendor_domain, device_class))
        try:
            outcome = process(publish.envelope, [s for s, _ in scoped], context)
        except SuitError as exc:
            raise refusal_for_suit(str(exc.code), str(exc)) from None
        if outcome.sequence_number != publish.sequence_number:
            raise InvalidRelease(
                f"the manifest's sequence number is {outcome.sequence_number}, the entry says "
                f"{publish.sequence_number}"
            )
        if tuple(outcome.components) != (component,):
            raise InvalidRelease(f"the manifest is not for component {publish.component!r} alone")
        signer = next((a for s, a in scoped if s is outcome.signer or s == outcome.signer), None)
        if signer is None:
            raise UntrustedKey("the signing key is none of the ledger's trust anchors")
    assert signer is not None
    return signer


class ReleaseState(Tables):
    """The release tables of one node (``Tables``: the pending writes of the
    entries being applied)."""

    # ------------------------------------------------------------ reads

    def release(self, release_id: str) -> Release | None:
        raw = self._get(T_RELEASE, release_id)
        return None if raw is None else release_from_bytes(raw)

    def releases(self) -> list[Release]:
        return [release_from_bytes(raw) for _, raw in self._scan(T_RELEASE)]

    def sequence(self, component: str) -> int:
        raw = self._get(T_SEQUENCE, component)
        return 0 if raw is None else int(raw)

    def sequences(self) -> dict[str, int]:
        return {component: int(raw) for component, raw in self._scan(T_SEQUENCE)}

    def anchors(self) -> list[Anchor]:
        return [anchor_from_bytes(raw) for _, raw in self._scan(T_ANCHOR)]

    def refusals(self) -> list[Refusal]:
        return [refusal_from_bytes(raw) for _, raw in self._scan(T_REFUSAL)]

    def current(self, component: str, device_class: str, now_unix_ms: int) -> Release | None:
        """The newest release of a component (for a device class; "" any)
        that is active or paused at ``now_unix_ms``: what a device of that
        class should run."""
        best: Release | None = None
        for release in self.releases():
            if release.component != component or effective_state(release, now_unix_ms) not in (ACTIVE, PAUSED):
                continue
            if device_class and device_class not in release.device_classes:
                continue
            if best is None or release.sequence_number > best.sequence_number:
                best = release
        return best

    def digest(self) -> str:
        """A fingerprint of every table (tests compare nodes with it)."""
        return self._digest((T_RELEASE, T_SEQUENCE, T_ANCHOR, T_REFUSAL))

    # ------------------------------------------------------------ apply

    def check_publish(self, publish: Publish) -> tuple[Publish, Anchor]:
        """The deterministic checks of a release (on apply, and before
        proposal): the entry with its id filled in, and the anchor that
        signed it; or a ReleaseRefused."""
        check_fields(publish)
        if not publish.release_id:
            publish = replace(publish, release_id=default_release_id(publish.component, publish.sequence_number))
        existing = self.release(publish.release_id)
        if existing is not None:
            if existing.state == REVOKED:
                raise Revoked(f"release {publish.release_id} was revoked: {existing.state_reason or 'no reason given'}")
            raise DuplicateRelease(f"release {publish.release_id} exists (block {existing.block_height})")
        current = self.sequence(publish.component)
        if publish.sequence_number <= current:
            raise StaleSequence(
                f"sequence number {publish.sequence_number} is not greater than {current}, the current one "
                f"of component {publish.component!r}"
            )
        return publish, check_envelope(publish, self.anchors(), current)

    def apply(self, body: ReleaseEntry, index: int, height: int, position: int, kind: str) -> tuple[str, str]:
        """Apply one release entry at (index, height, position): ("", "") when
        it took effect, else its refusal (code, message), recorded."""
        try:
            if isinstance(body, Publish):
                self._publish(body, index, height, position)
            elif isinstance(body, Revoke):
                self._revoke(body)
            elif isinstance(body, RolloutAction):
                self._rollout(body)
            else:
                self._anchors(body)
        except ReleaseRefused as exc:
            return self._refuse(body, index, height, position, kind, exc.code, str(exc))
        except Exception as exc:
            # A bug, or an input the SUIT library chokes on: every node fails
            # the same way on the same entry, so the entry is refused, never
            # a crash (a committed entry that stops every node that applies
            # it would stop the cluster for good). Only the exception's type
            # goes into the record: its text may differ between nodes.
            return self._refuse(body, index, height, position, kind, InvalidRelease.code,
                                f"the entry could not be checked ({type(exc).__name__})")
        return "", ""

    def _refuse(
        self, body: ReleaseEntry, index: int, height: int, position: int, kind: str, code: str, message: str
    ) -> tuple[str, str]:
        self.record_refusal(Refusal(index, height, position, kind, getattr(body, "release_id", ""), code, message))
        return code, message

    def record_refusal(self, refusal: Refusal) -> None:
        """Record an entry refused on apply (the device state records its
        refusals here too, naming the device in ``release_id``)."""
        self._pending[(T_REFUSAL, f"{refusal.index:020d}:{refusal.position:06d}")] = refusal_to_bytes(refusal)

    def halt(self, release_id: str, reason: str) -> bool:
        """Halt an active or paused release (the automatic halt); False when
        there is no such release or it is in another state."""
        release = self.release(release_id)
        if release is None or release.state not in _TRANSITIONS["halt"][0]:
            return False
        self._put(replace(release, state=HALTED, state_reason=reason[:MAX_REASON]))
        return True

    def _publish(self, publish: Publish, index: int, height: int, position: int) -> None:
        publish, signer = self.check_publish(publish)
        release = Release(
            publish.release_id, publish.component, publish.device_classes, publish.vendor_domain,
            publish.sequence_number, publish.payload_cid, publish.payload_size, publish.envelope,
            publish.rollout, ACTIVE, "", index, height, position, signer.key_id,
        )
        self._pending[(T_RELEASE, release.release_id)] = release_to_bytes(release)
        self._pending[(T_SEQUENCE, publish.component)] = str(publish.sequence_number).encode()

    def _existing(self, release_id: str) -> Release:
        release = self.release(release_id)
        if release is None:
            raise UnknownRelease(f"no release {release_id!r} in the ledger")
        return release

    def _revoke(self, revoke: Revoke) -> None:
        release = self._existing(revoke.release_id)
        if release.state == REVOKED:
            raise Revoked(f"release {release.release_id} is already revoked")
        self._put(replace(release, state=REVOKED, state_reason=revoke.reason[:MAX_REASON]))

    def _rollout(self, action: RolloutAction) -> None:
        release = self._existing(action.release_id)
        if release.state == REVOKED:
            raise Revoked(f"release {release.release_id} is revoked")
        allowed = _TRANSITIONS.get(action.action)
        if allowed is None:
            raise InvalidTransition(f"unknown rollout action {action.action!r} (pause, resume, halt)")
        states, target = allowed
        if release.state not in states:
            raise InvalidTransition(f"cannot {action.action} release {release.release_id}: it is {release.state}")
        self._put(replace(release, state=target, state_reason=action.reason[:MAX_REASON]))

    def _anchors(self, anchor_set: AnchorSet) -> None:
        if self.anchors():
            raise AnchorsRefused(
                "the ledger's trust anchors are set; changing them needs the root-signed rotation"
            )
        if not anchor_set.anchors:
            raise AnchorsRefused("an empty set of trust anchors")
        seen: set[str] = set()
        for anchor in anchor_set.anchors:
            try:
                load_public_pem(anchor.public_key_pem)
            except (SuitError, ValueError) as exc:
                raise AnchorsRefused(f"trust anchor {anchor.key_id!r}: {exc}") from None
            if not anchor.key_id or len(anchor.key_id) > MAX_NAME or anchor.key_id in seen:
                raise AnchorsRefused(f"trust anchor ids must be unique and non-empty ({anchor.key_id!r})")
            seen.add(anchor.key_id)
        for anchor in anchor_set.anchors:
            self._pending[(T_ANCHOR, anchor.key_id)] = anchor_to_bytes(anchor)

    def _put(self, release: Release) -> None:
        self._pending[(T_RELEASE, release.release_id)] = release_to_bytes(release)


def effective_state(release: Release, now_unix_ms: int) -> str:
    """The state a reader reports: an active or paused release past its
    end time has ended."""
    end = release.rollout.end_at_unix_ms
    if release.state in (ACTIVE, PAUSED) and end and now_unix_ms >= end:
        return ENDED
    return release.state
