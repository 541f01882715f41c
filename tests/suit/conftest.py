"""Shared fixtures for the SUIT manifest tests: the specification's vectors
(beside the repository, in ../shared/suit-vectors) and freshly made keys."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from hypothesis import strategies as st

from suit.auth import TrustAnchor
from suit.build import build_envelope, sign_envelope
from suit.device import DeviceContext

VECTORS = Path(__file__).resolve().parents[3] / "shared" / "suit-vectors"
VENDOR = bytes.fromhex("fa6b4a53d5ad5fdfbe9de663e4d41ffe")
CLASS = bytes.fromhex("1492af1425695e48bf429b2d51f2ab45")
PAYLOAD = bytes(range(256)) * 16
URI = "https://updates.example/fw.bin"


def vector_index() -> list[dict[str, Any]]:
    # No skip: a missing vectors directory must fail the run.
    return list(json.loads((VECTORS / "index.json").read_text())["vectors"])


@pytest.fixture(scope="session")
def spec_anchor() -> TrustAnchor:
    key = load_pem_public_key((VECTORS / "spec_example_key_public.pem").read_bytes())
    return TrustAnchor(key)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def es256_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="session")
def ed25519_key() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


def description(**overrides: Any) -> dict[str, Any]:
    comp: dict[str, Any] = {
        "install-id": ["00"],
        "vendor-id": VENDOR.hex(),
        "class-id": CLASS.hex(),
        "install-digest": {
            "algorithm-id": "sha256",
            "digest-bytes": hashlib.sha256(PAYLOAD).hexdigest(),
        },
        "install-size": len(PAYLOAD),
        "uri": URI,
        "bootable": True,
    }
    comp.update(overrides.pop("component", {}))
    desc: dict[str, Any] = {
        "manifest-version": 1,
        "manifest-sequence-number": 7,
        "components": [comp],
        "text": {"manifest-description": "test release"},
    }
    desc.update(overrides)
    return desc


def signed(key: Any, **overrides: Any) -> bytes:
    return sign_envelope(build_envelope(description(**overrides), {}), key)


def mutations(seeds: list[bytes], *, max_ops: int, max_span: int) -> st.SearchStrategy[bytes]:
    """Envelopes from ``seeds`` with 1..max_ops random edits: a flipped bit, a
    replaced byte, up to ``max_span`` bytes cut or inserted."""

    @st.composite
    def mutated(draw: st.DrawFn) -> bytes:
        data = bytearray(draw(st.sampled_from(seeds)))
        for _ in range(draw(st.integers(1, max_ops))):
            op = draw(st.integers(0, 3))
            pos = draw(st.integers(0, len(data) - 1))
            if op == 0:
                data[pos] ^= 1 << draw(st.integers(0, 7))
            elif op == 1:
                data[pos] = draw(st.integers(0, 255))
            elif op == 2:
                del data[pos : pos + draw(st.integers(1, max_span))]
            else:
                data[pos:pos] = draw(st.binary(min_size=1, max_size=max_span))
            if not data:
                break
        return bytes(data)

    return mutated()


def device(**overrides: Any) -> DeviceContext:
    fields: dict[str, Any] = {
        "vendor_id": VENDOR,
        "class_id": CLASS,
        "fetchable": {URI: PAYLOAD},
    }
    fields.update(overrides)
    return DeviceContext(**fields)
