"""End-to-end verification of an offered envelope on the device, against its
own preinstalled trust anchors, with the SUIT library (sans-I/O: bytes and
keys in, a ``VerifiedRelease`` or a ``Refused`` out).

A gateway, or the node behind it, may be compromised: nothing in an Offer
but the envelope is trusted, and the envelope only once a trust anchor of
the device verifies it. The checks (draft-ietf-suit-manifest-37):
authentication before parsing (§6.2, §8.3), anti-rollback against the
highest sequence the device ever accepted for the component (§8.4.2), the
vendor and class ids of this device (§8.4.8.2: vendor id = UUID5(DNS,
vendor domain), class id = UUID5(vendor id, class name)), the component id
(one part, the UTF-8 bytes of the name), and the payload: the offer's
content id and size are run through the manifest's install sequence as
the fetched image, so an offer whose claims disagree with the signed
digest and size is refused (IMAGE_DIGEST_MISMATCH / IMAGE_SIZE_MISMATCH).
The payload's bytes are checked against that digest when they are
downloaded (``download.py``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from suit.auth import TrustAnchor
from suit.device import AnyUri, DeviceContext, ImageInfo, class_id, vendor_id
from suit.errors import ErrorCode, SuitError
from suit.keys import load_public_pem
from suit.processor import process

from .errors import Reason, Refused
from .model import Offer, VerifiedRelease

DEFAULT_VENDOR_DOMAIN = "fleetsuit.example"
DEFAULT_DEVICE_CLASS = "default"
_CID = re.compile(r"sha256:([0-9a-f]{64})")

_REASONS: dict[ErrorCode, Reason] = {
    ErrorCode.NO_AUTHENTICATION: Reason.UNTRUSTED,
    ErrorCode.DIGEST_MISMATCH: Reason.UNTRUSTED,
    ErrorCode.UNSUPPORTED_DIGEST_ALGORITHM: Reason.UNTRUSTED,
    ErrorCode.UNSUPPORTED_ALGORITHM: Reason.UNTRUSTED,
    ErrorCode.SIGNATURE_INVALID: Reason.UNTRUSTED,
    ErrorCode.UNTRUSTED_SIGNER: Reason.UNTRUSTED,
    ErrorCode.ROLLBACK: Reason.ROLLBACK,
    ErrorCode.VENDOR_MISMATCH: Reason.WRONG_DEVICE,
    ErrorCode.CLASS_MISMATCH: Reason.WRONG_DEVICE,
    ErrorCode.DEVICE_MISMATCH: Reason.WRONG_DEVICE,
    ErrorCode.COMPONENT_MISMATCH: Reason.WRONG_DEVICE,
    ErrorCode.IMAGE_DIGEST_MISMATCH: Reason.MISMATCH,
    ErrorCode.IMAGE_SIZE_MISMATCH: Reason.MISMATCH,
    ErrorCode.PAYLOAD_UNAVAILABLE: Reason.MISMATCH,
}
OFFER_MISMATCH = "OFFER_MISMATCH"  # the offer's own fields disagree with the manifest


def component_id(component: str) -> tuple[bytes, ...]:
    """A component as a SUIT component identifier: one part, its UTF-8 name."""
    return (component.encode(),)


def load_trust_anchors(pems: Iterable[bytes]) -> tuple[TrustAnchor, ...]:
    """The device's preinstalled trust anchors (PEM public keys, unscoped:
    the device's own class and components are checked by the manifest)."""
    anchors = tuple(TrustAnchor(load_public_pem(pem)) for pem in pems)
    if not anchors:
        raise ValueError("a device needs at least one trust anchor")
    return anchors


@dataclass(frozen=True, slots=True)
class DeviceProfile:
    """What a device knows about itself for verification."""

    anchors: tuple[TrustAnchor, ...]
    vendor_domain: str = DEFAULT_VENDOR_DOMAIN
    device_class: str = DEFAULT_DEVICE_CLASS
    device_id: str = ""

    @property
    def ids(self) -> tuple[bytes, bytes]:
        return vendor_id(self.vendor_domain), class_id(self.vendor_domain, self.device_class)


def refusal_for(error: SuitError) -> Refused:
    return Refused(_REASONS.get(error.code, Reason.MALFORMED), str(error.code), error.message)


def verify_offer(
    offer: Offer, profile: DeviceProfile, installed_sequence: int | None,
) -> VerifiedRelease:
    """The verified release of ``offer``, or ``Refused`` with the reason and
    the SUIT code. ``installed_sequence`` is the highest sequence the device
    ever accepted for the component (None: no rollback floor)."""
    match = _CID.fullmatch(offer.payload_cid)
    if match is None or offer.payload_size < 0:
        raise Refused(Reason.MISMATCH, OFFER_MISMATCH, f"payload cid {offer.payload_cid[:80]!r} is not a sha256 content id")
    claimed = ImageInfo(bytes.fromhex(match.group(1)), offer.payload_size)
    component = component_id(offer.component)
    vendor, klass = profile.ids
    context = DeviceContext(
        vendor_id=vendor,
        class_id=klass,
        installed_sequence={} if installed_sequence is None else {component: installed_sequence},
        fetchable=AnyUri(claimed),
        components=frozenset({component}),
    )
    try:
        outcome = process(offer.envelope, profile.anchors, context)
    except SuitError as exc:
        raise refusal_for(exc) from None
    if tuple(outcome.components) != (component,):
        raise Refused(Reason.WRONG_DEVICE, str(ErrorCode.COMPONENT_MISMATCH),
                      f"the manifest is not for component {offer.component!r} alone")
    if outcome.sequence_number != offer.sequence_number:
        raise Refused(Reason.MISMATCH, OFFER_MISMATCH,
                      f"the offer says sequence {offer.sequence_number}, the manifest {outcome.sequence_number}")
    image = dict(outcome.images).get(component)
    if not isinstance(image, ImageInfo):
        # An integrated payload or none: fleetsuit releases fetch theirs by content id.
        raise Refused(Reason.MISMATCH, str(ErrorCode.PAYLOAD_UNAVAILABLE), "the manifest installs no fetched payload")
    return VerifiedRelease(offer.release_id, offer.component, outcome.sequence_number, image.sha256, image.size)
