"""Cross-check with an independent COSE implementation (pycose, test-only):
our signatures verify with pycose and pycose's verify with ours."""

from __future__ import annotations

from typing import Any

import cbor2
import pytest
from cryptography.hazmat.primitives import serialization
from pycose.algorithms import EdDSA, Es256
from pycose.headers import Algorithm
from pycose.keys import CoseKey
from pycose.messages import Sign1Message

from suit import cbor
from suit.auth import TrustAnchor
from suit.build import build_envelope, sign_envelope
from suit.codec import decode_envelope, encode_envelope
from suit.model import Envelope
from suit.processor import validate

from .conftest import VECTORS, description, device


def _pycose_decode(raw: bytes) -> Sign1Message:
    # pycose's CoseMessage.decode expects a list inside the tag; cbor2 6 gives
    # a tuple (and a frozen map) there, so hand it plain Python containers.
    tagged = cbor2.loads(raw)
    assert tagged.tag == 18
    body = list(tagged.value)
    body[1] = dict(body[1])
    return Sign1Message.from_cose_obj(body, allow_unknown_attributes=False)


def _public_pem(key: Any) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _private_pem(key: Any) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@pytest.mark.parametrize("which", ["es256_key", "ed25519_key"])
def test_our_envelopes_verify_with_pycose(which: str, request: pytest.FixtureRequest) -> None:
    key = request.getfixturevalue(which)
    envelope = decode_envelope(sign_envelope(build_envelope(description(), {}), key))
    auth = envelope.authentication
    assert auth is not None
    message = _pycose_decode(auth.blocks[0].raw)
    message.key = CoseKey.from_pem_public_key(_public_pem(key).decode())
    assert message.verify_signature(detached_payload=auth.digest_raw)


def test_spec_vector_verifies_with_pycose() -> None:
    envelope = decode_envelope((VECTORS / "example0.cbor").read_bytes())
    auth = envelope.authentication
    assert auth is not None
    message = _pycose_decode(auth.blocks[0].raw)
    message.key = CoseKey.from_pem_public_key(
        (VECTORS / "spec_example_key_public.pem").read_text()
    )
    assert message.verify_signature(detached_payload=auth.digest_raw)


@pytest.mark.parametrize(("which", "alg"), [("es256_key", Es256), ("ed25519_key", EdDSA)])
def test_pycose_signed_envelopes_verify_with_ours(
    which: str, alg: Any, request: pytest.FixtureRequest
) -> None:
    key = request.getfixturevalue(which)
    unsigned = decode_envelope(build_envelope(description(), {}))
    auth = unsigned.authentication
    assert auth is not None
    message = Sign1Message(phdr={Algorithm: alg}, payload=None)
    message.key = CoseKey.from_pem_private_key(_private_pem(key).decode())
    block = message.encode(tag=True, detached_payload=auth.digest_raw)
    assert cbor2.loads(block).tag == 18
    members = tuple(
        (k, cbor.dumps([auth.digest_raw, block]) if k == 2 else v) for k, v in unsigned.members
    )
    data = encode_envelope(Envelope(True, members, None, unsigned.manifest_raw))
    verdict = validate(data, [TrustAnchor(key.public_key())], device())
    assert verdict.accepted, verdict.message
