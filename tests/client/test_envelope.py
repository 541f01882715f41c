"""The envelope the client signs is the one the cluster's check and a device
expect: it decodes with the SUIT library, authenticates with the signing
key's public half as the only trust anchor, names one component (one part:
the UTF-8 bytes of its name), the device class UUID5(UUID5(DNS, vendor
domain), class) (draft-ietf-suit-manifest §8.4.8.2), the payload's SHA-256
and size, and the uri ``fleetsuit:<content id>``; a device of that class
accepts it with the payload, and a device of another class does not."""

from __future__ import annotations

import hashlib
import uuid

import pytest

from fleetsuit.client import build_release_envelope, release_description
from suit import keys
from suit.auth import TrustAnchor, authenticate
from suit.codec import decode
from suit.device import DeviceContext, ImageInfo
from suit.errors import ErrorCode
from suit.processor import validate

PAYLOAD = b"firmware image " * 1000
CID = "sha256:" + hashlib.sha256(PAYLOAD).hexdigest()


def _context(vendor_domain: str, device_class: str, installed: int = 0) -> DeviceContext:
    vendor = uuid.uuid5(uuid.NAMESPACE_DNS, vendor_domain)
    klass = uuid.uuid5(vendor, device_class)
    return DeviceContext(
        vendor_id=vendor.bytes, class_id=klass.bytes,
        installed_sequence={(b"ota-app",): installed},
        fetchable={f"fleetsuit:{CID}": ImageInfo(hashlib.sha256(PAYLOAD).digest(), len(PAYLOAD))},
    )


@pytest.mark.parametrize("algorithm", list(keys.KeyAlgorithm))
def test_the_envelope_verifies_against_the_public_key_and_a_device_of_its_class_accepts_it(
    algorithm: keys.KeyAlgorithm,
) -> None:
    key = keys.generate(algorithm)
    envelope = build_release_envelope(
        component="ota-app", sequence=7, payload_cid=CID, payload_size=len(PAYLOAD),
        key_pem=keys.private_pem(key), device_class="board-a", vendor_domain="vendor.example",
    )
    decoded, manifest = decode(envelope)
    anchor = TrustAnchor(keys.load_public_pem(keys.public_pem(key.public_key())))
    assert authenticate(decoded, [anchor]) is anchor
    assert manifest.sequence_number == 7
    assert manifest.common.components == ((b"ota-app",),)

    verdict = validate(envelope, [anchor], _context("vendor.example", "board-a", installed=6))
    assert verdict.accepted, verdict.message
    other_class = validate(envelope, [anchor], _context("vendor.example", "board-b", installed=6))
    assert not other_class.accepted and other_class.code is ErrorCode.CLASS_MISMATCH
    stranger = keys.generate(algorithm)
    unsigned_by_anchor = validate(
        envelope, [TrustAnchor(stranger.public_key())], _context("vendor.example", "board-a"))
    assert not unsigned_by_anchor.accepted


def test_ed25519_envelopes_are_deterministic_and_p256_ones_are_not() -> None:
    def envelope(key_pem: bytes) -> bytes:
        return build_release_envelope(component="ota-app", sequence=3, payload_cid=CID,
                                      payload_size=len(PAYLOAD), key_pem=key_pem)

    ed = keys.private_pem(keys.generate(keys.KeyAlgorithm.ED25519))
    assert envelope(ed) == envelope(ed)
    p256 = keys.private_pem(keys.generate(keys.KeyAlgorithm.ES256))
    assert envelope(p256) != envelope(p256)


def test_the_description_follows_the_conventions_of_the_check() -> None:
    description = release_description(component="ota-app", sequence=9, payload_cid=CID, payload_size=5)
    assert description["manifest-sequence-number"] == 9 and description["manifest-version"] == 1
    (component,) = description["components"]
    assert component == {
        "install-id": [b"ota-app".hex()],
        "vendor-domain": "fleetsuit.example",
        "class-info": "default",
        "install-digest": {"algorithm-id": "sha256", "digest-bytes": CID.removeprefix("sha256:")},
        "install-size": 5,
        "uri": f"fleetsuit:{CID}",
    }


@pytest.mark.parametrize("bad", ["", "sha256:abc", "md5:" + "0" * 64, "sha256:" + "A" * 64])
def test_a_content_id_that_is_not_a_sha256_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="payload cid"):
        release_description(component="c", sequence=1, payload_cid=bad, payload_size=1)


def test_a_key_that_is_not_a_supported_pem_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="PEM"):
        build_release_envelope(component="c", sequence=1, payload_cid=CID, payload_size=1, key_pem=b"nope")
