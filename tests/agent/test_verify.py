"""End-to-end verification of offers against the device's own trust anchors:
one test per attack (python-tuf's habit): a foreign signer, another class or
vendor, an older sequence, an offer whose claims disagree with the manifest,
a tampered envelope."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import pytest

from agent.errors import Reason, Refused
from agent.verify import DeviceProfile, load_trust_anchors, verify_offer
from suit import build
from suit.device import class_id, vendor_id

from .fakes import Publisher, cid_of, offer

PAYLOAD = b"firmware image v2 " * 100
TRUSTED = Publisher.new(1)
PROFILE = DeviceProfile(load_trust_anchors([TRUSTED.public_pem]), device_id="dev-1")


def refusal(o: object, installed: int | None = 0, profile: DeviceProfile = PROFILE) -> Refused:
    with pytest.raises(Refused) as info:
        verify_offer(o, profile, installed)  # type: ignore[arg-type]
    return info.value


def test_a_good_envelope_passes_with_the_manifests_digest_and_size() -> None:
    release = verify_offer(offer(TRUSTED, 2, PAYLOAD), PROFILE, 1)
    assert release.sequence_number == 2
    assert release.sha256 == hashlib.sha256(PAYLOAD).digest()
    assert release.size == len(PAYLOAD)
    assert release.cid == cid_of(PAYLOAD)


def test_the_ids_are_derived_as_suit_build_derives_them() -> None:
    # draft-ietf-suit-manifest §8.4.8.2, as suit.build computes them from a description.
    v, c = build._vendor_and_class({"vendor-domain": "fleetsuit.example", "class-info": "default"})
    assert (vendor_id("fleetsuit.example"), class_id("fleetsuit.example", "default")) == (v, c)


def test_an_envelope_signed_by_another_key_is_untrusted() -> None:
    r = refusal(offer(Publisher.new(2), 2, PAYLOAD))
    assert r.reason is Reason.UNTRUSTED and r.suit_code == "SIGNATURE_INVALID"


def test_an_envelope_for_another_class_is_for_another_device() -> None:
    r = refusal(offer(TRUSTED, 2, PAYLOAD, device_class="thermostat"))
    assert (r.reason, r.suit_code) == (Reason.WRONG_DEVICE, "CLASS_MISMATCH")


def test_an_envelope_for_another_vendor_is_for_another_device() -> None:
    r = refusal(offer(TRUSTED, 2, PAYLOAD, vendor_domain="evil.example"))
    assert (r.reason, r.suit_code) == (Reason.WRONG_DEVICE, "VENDOR_MISMATCH")


def test_an_envelope_for_another_component_is_for_another_device() -> None:
    o = offer(TRUSTED, 2, PAYLOAD, component="bootloader")
    r = refusal(replace(o, component="firmware"))
    assert r.reason is Reason.WRONG_DEVICE


@pytest.mark.parametrize("installed", [2, 3])
def test_an_older_or_equal_sequence_is_a_rollback(installed: int) -> None:
    r = refusal(offer(TRUSTED, 2, PAYLOAD), installed)
    assert (r.reason, r.suit_code) == (Reason.ROLLBACK, "ROLLBACK")


def test_an_offer_lying_about_the_payload_digest_is_refused() -> None:
    r = refusal(replace(offer(TRUSTED, 2, PAYLOAD), payload_cid=cid_of(b"other bytes")))
    assert (r.reason, r.suit_code) == (Reason.MISMATCH, "IMAGE_DIGEST_MISMATCH")


def test_an_offer_lying_about_the_payload_size_is_refused() -> None:
    r = refusal(replace(offer(TRUSTED, 2, PAYLOAD), payload_size=len(PAYLOAD) + 1))
    assert (r.reason, r.suit_code) == (Reason.MISMATCH, "IMAGE_SIZE_MISMATCH")


def test_an_offer_lying_about_the_sequence_is_refused() -> None:
    r = refusal(replace(offer(TRUSTED, 2, PAYLOAD), sequence_number=3))
    assert (r.reason, r.suit_code) == (Reason.MISMATCH, "OFFER_MISMATCH")


def test_a_malformed_cid_is_refused() -> None:
    r = refusal(replace(offer(TRUSTED, 2, PAYLOAD), payload_cid="md5:abc"))
    assert r.reason is Reason.MISMATCH


def test_a_tampered_envelope_is_refused() -> None:
    o = offer(TRUSTED, 2, PAYLOAD)
    raw = bytearray(o.envelope)
    raw[-5] ^= 0x01  # inside the manifest, after the signature
    r = refusal(replace(o, envelope=bytes(raw)))
    assert r.reason in (Reason.UNTRUSTED, Reason.MALFORMED)


def test_garbage_is_malformed() -> None:
    r = refusal(replace(offer(TRUSTED, 2, PAYLOAD), envelope=b"\x00not cbor"))
    assert r.reason is Reason.MALFORMED
