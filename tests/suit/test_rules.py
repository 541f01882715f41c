"""One test per recipient processing rule (draft-ietf-suit-manifest-37 §6,
§8.3, §8.4.2, §8.4.9, §8.4.12), on envelopes built and signed here."""

from __future__ import annotations

import hashlib
from typing import Any

import cbor2
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.hashes import SHA256

from suit import cbor, cose
from suit.auth import TrustAnchor
from suit.build import build_envelope, sign_envelope
from suit.codec import decode_envelope, encode_envelope
from suit.errors import ErrorCode
from suit.model import Envelope
from suit.processor import ImageInfo, Procedure, validate

from .conftest import PAYLOAD, URI, description, device, signed

COMPONENT = (b"\x00",)


def anchor(key: Any, **kw: Any) -> TrustAnchor:
    return TrustAnchor(key.public_key(), **kw)


def test_valid_envelope_is_accepted_es256(es256_key: ec.EllipticCurvePrivateKey) -> None:
    verdict = validate(signed(es256_key), [anchor(es256_key)], device())
    assert verdict.accepted, verdict.message
    assert verdict.outcome is not None
    assert verdict.outcome.images == ((COMPONENT, PAYLOAD),)


def test_valid_envelope_is_accepted_ed25519(ed25519_key: ed25519.Ed25519PrivateKey) -> None:
    verdict = validate(signed(ed25519_key), [anchor(ed25519_key)], device())
    assert verdict.accepted, verdict.message


def test_secure_boot_invokes_bootable_component(es256_key: Any) -> None:
    ctx = device(images={COMPONENT: PAYLOAD})
    verdict = validate(signed(es256_key), [anchor(es256_key)], ctx, Procedure.INVOKE)
    assert verdict.accepted and verdict.outcome is not None
    assert verdict.outcome.invoked == (COMPONENT,)


def test_wrong_key_is_rejected(es256_key: Any) -> None:
    other = ec.generate_private_key(ec.SECP256R1())
    verdict = validate(signed(es256_key), [anchor(other)], device())
    assert verdict.code is ErrorCode.SIGNATURE_INVALID


def test_key_of_other_type_is_untrusted(es256_key: Any, ed25519_key: Any) -> None:
    verdict = validate(signed(es256_key), [anchor(ed25519_key)], device())
    assert verdict.code is ErrorCode.UNTRUSTED_SIGNER


def test_anchor_for_other_device_class_is_not_used(es256_key: Any) -> None:
    scoped = anchor(es256_key, class_ids=frozenset({b"\x01" * 16}))
    verdict = validate(signed(es256_key), [scoped], device())
    assert verdict.code is ErrorCode.UNTRUSTED_SIGNER


def test_anchor_for_other_components_is_not_enough(es256_key: Any) -> None:
    scoped = anchor(es256_key, components=frozenset({(b"\x09",)}))
    verdict = validate(signed(es256_key), [scoped], device())
    assert verdict.code is ErrorCode.UNTRUSTED_SIGNER


def test_unsigned_envelope_is_rejected(es256_key: Any) -> None:
    data = build_envelope(description(), {})
    verdict = validate(data, [anchor(es256_key)], device())
    assert verdict.code is ErrorCode.NO_AUTHENTICATION


def test_sequence_number_equal_to_installed_is_rollback(es256_key: Any) -> None:
    ctx = device(installed_sequence={COMPONENT: 7})
    verdict = validate(signed(es256_key), [anchor(es256_key)], ctx)
    assert verdict.code is ErrorCode.ROLLBACK


def test_sequence_number_lower_than_installed_is_rollback(es256_key: Any) -> None:
    ctx = device(installed_sequence={COMPONENT: 8})
    assert validate(signed(es256_key), [anchor(es256_key)], ctx).code is ErrorCode.ROLLBACK


def test_sequence_number_greater_than_installed_is_accepted(es256_key: Any) -> None:
    ctx = device(installed_sequence={COMPONENT: 6})
    assert validate(signed(es256_key), [anchor(es256_key)], ctx).accepted


def test_vendor_mismatch(es256_key: Any) -> None:
    ctx = device(vendor_id=b"\x02" * 16)
    assert validate(signed(es256_key), [anchor(es256_key)], ctx).code is ErrorCode.VENDOR_MISMATCH


def test_class_mismatch(es256_key: Any) -> None:
    ctx = device(class_id=b"\x03" * 16)
    assert validate(signed(es256_key), [anchor(es256_key)], ctx).code is ErrorCode.CLASS_MISMATCH


def test_payload_digest_mismatch(es256_key: Any) -> None:
    tampered = bytes([PAYLOAD[0] ^ 1]) + PAYLOAD[1:]
    ctx = device(fetchable={URI: tampered})
    verdict = validate(signed(es256_key), [anchor(es256_key)], ctx)
    assert verdict.code is ErrorCode.IMAGE_DIGEST_MISMATCH


def test_payload_size_mismatch(es256_key: Any) -> None:
    ctx = device(fetchable={URI: PAYLOAD + b"\x00"})
    verdict = validate(signed(es256_key), [anchor(es256_key)], ctx)
    assert verdict.code is ErrorCode.IMAGE_SIZE_MISMATCH


def test_payload_known_by_digest_only(es256_key: Any) -> None:
    info = ImageInfo(hashlib.sha256(PAYLOAD).digest(), len(PAYLOAD))
    verdict = validate(signed(es256_key), [anchor(es256_key)], device(fetchable={URI: info}))
    assert verdict.accepted, verdict.message


def test_payload_unavailable(es256_key: Any) -> None:
    verdict = validate(signed(es256_key), [anchor(es256_key)], device(fetchable={}))
    assert verdict.code is ErrorCode.PAYLOAD_UNAVAILABLE


def test_integrated_payload_needs_no_fetch(es256_key: Any) -> None:
    desc = description(component={"file": "fw.bin", "integrated": True})
    data = sign_envelope(build_envelope(desc, {"fw.bin": PAYLOAD}), es256_key)
    verdict = validate(data, [anchor(es256_key)], device(fetchable={}))
    assert verdict.accepted, verdict.message


def _severed(key: Any) -> bytes:
    return signed(key, severable=["install", "text"])


def test_severed_install_is_authentic_but_cannot_update(es256_key: Any) -> None:
    data = _severed(es256_key)
    full = validate(data, [anchor(es256_key)], device())
    assert full.accepted, full.message
    envelope = decode_envelope(data)
    stripped = Envelope(
        envelope.tagged,
        tuple((k, v) for k, v in envelope.members if k not in (20, 23)),
        envelope.authentication,
        envelope.manifest_raw,
    )
    cut = encode_envelope(stripped)
    auth_only = validate(cut, [anchor(es256_key)], device(), Procedure.AUTHENTICATE)
    assert auth_only.accepted
    assert validate(cut, [anchor(es256_key)], device()).code is ErrorCode.SEVERABLE_MISSING


def test_tampered_severable_member_is_rejected(es256_key: Any) -> None:
    envelope = decode_envelope(_severed(es256_key))
    members = []
    for k, v in envelope.members:
        if k == 23:
            v = cbor.dumps({"en": {1: "a different text"}})
        members.append((k, v))
    tampered = Envelope(envelope.tagged, tuple(members), envelope.authentication,
                        envelope.manifest_raw)
    verdict = validate(encode_envelope(tampered), [anchor(es256_key)], device(),
                       Procedure.AUTHENTICATE)
    assert verdict.code is ErrorCode.SEVERABLE_DIGEST_MISMATCH


def _resign(data: bytes, key: ec.EllipticCurvePrivateKey, protected: dict[int, Any]) -> bytes:
    envelope = decode_envelope(data)
    auth = envelope.authentication
    assert auth is not None
    protected_raw = cbor2.dumps(protected)
    der = key.sign(cose.sig_structure(protected_raw, auth.digest_raw), ec.ECDSA(SHA256()))
    r, s = decode_dss_signature(der)
    block = cbor2.dumps(cbor2.CBORTag(18, [protected_raw, {}, None,
                                          r.to_bytes(32, "big") + s.to_bytes(32, "big")]))
    new_auth = cbor.dumps([auth.digest_raw, block])
    members = tuple((k, new_auth if k == 2 else v) for k, v in envelope.members)
    return encode_envelope(Envelope(envelope.tagged, members, None, envelope.manifest_raw))


def test_unsupported_signature_algorithm(es256_key: Any) -> None:
    data = _resign(build_envelope(description(), {}), es256_key, {1: -35})  # ES384
    verdict = validate(data, [anchor(es256_key)], device())
    assert verdict.code is ErrorCode.UNSUPPORTED_ALGORITHM


def test_unknown_critical_header(es256_key: Any) -> None:
    data = _resign(build_envelope(description(), {}), es256_key, {1: -7, 2: [99], 99: 1})
    verdict = validate(data, [anchor(es256_key)], device())
    assert verdict.code is ErrorCode.UNSUPPORTED_ALGORITHM


def test_fully_specified_esp256_verifies(es256_key: Any) -> None:
    data = _resign(build_envelope(description(), {}), es256_key, {1: -9})
    assert validate(data, [anchor(es256_key)], device()).accepted


def test_unsupported_digest_algorithm(es256_key: Any) -> None:
    envelope = decode_envelope(build_envelope(description(), {}))
    odd_digest = cbor.dumps([-17, hashlib.sha512(b"x").digest()[:32]])  # SHA-512/256
    block = cose.sign(odd_digest, es256_key)
    members = tuple(
        (k, cbor.dumps([odd_digest, block]) if k == 2 else v) for k, v in envelope.members
    )
    data = encode_envelope(Envelope(True, members, None, envelope.manifest_raw))
    verdict = validate(data, [anchor(es256_key)], device())
    assert verdict.code is ErrorCode.UNSUPPORTED_DIGEST_ALGORITHM


def test_two_components_each_checked(es256_key: Any) -> None:
    desc = description()
    second = dict(desc["components"][0], **{"install-id": ["01"], "uri": URI + "2"})
    desc["components"].append(second)
    data = sign_envelope(build_envelope(desc, {}), es256_key)
    ok = validate(data, [anchor(es256_key)], device(fetchable={URI: PAYLOAD, URI + "2": PAYLOAD}))
    assert ok.accepted, ok.message
    bad = validate(data, [anchor(es256_key)], device(fetchable={URI: PAYLOAD, URI + "2": b"x"}))
    assert bad.code is ErrorCode.IMAGE_SIZE_MISMATCH


def test_component_not_on_device(es256_key: Any) -> None:
    ctx = device(components=frozenset({(b"\x05",)}))
    verdict = validate(signed(es256_key), [anchor(es256_key)], ctx)
    assert verdict.code is ErrorCode.COMPONENT_MISMATCH
