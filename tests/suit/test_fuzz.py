"""Fuzzing the decoder and processor: random bytes, mutated valid envelopes,
deep nesting and huge declared lengths. Nothing but ``SuitError`` escapes,
nothing is accepted that was not signed, nothing hangs.

``FLEETSUIT_FUZZ_EXAMPLES`` sets the total number of cases (default 10,000,
``make fuzz`` runs 200,000), shared between the tests below.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from suit.auth import TrustAnchor
from suit.codec import decode
from suit.errors import SuitError
from suit.processor import Procedure, validate
from suit.show import diagnostic

from .conftest import CLASS, VECTORS, VENDOR, device, mutations

TOTAL = int(os.environ.get("FLEETSUIT_FUZZ_EXAMPLES", "10000"))
SEEDS = [(VECTORS / n).read_bytes() for n in ("example2.cbor", "example4.cbor", "example3.cbor")]
SIGNED_MANIFESTS = {decode(s)[0].manifest_raw for s in SEEDS}


def _settings(share: float) -> settings:
    return settings(
        max_examples=max(1, int(TOTAL * share)),
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )


def _check(data: bytes, anchor: TrustAnchor) -> None:
    try:
        envelope, _ = decode(data)
    except SuitError:
        pass
    else:
        diagnostic(data)  # display must cope with anything that decodes
    verdict = validate(data, [anchor], device(vendor_id=VENDOR, class_id=CLASS),
                       Procedure.AUTHENTICATE)
    if verdict.accepted:
        assert decode(data)[0].manifest_raw in SIGNED_MANIFESTS


def _anchor() -> TrustAnchor:
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    key = load_pem_public_key((VECTORS / "spec_example_key_public.pem").read_bytes())
    return TrustAnchor(key)  # type: ignore[arg-type]


ANCHOR = _anchor()


@_settings(0.25)
@given(st.binary(max_size=512))
def test_fuzz_random_bytes(data: bytes) -> None:
    _check(data, ANCHOR)


@_settings(0.45)
@given(mutations(SEEDS, max_ops=4, max_span=8))
def test_fuzz_mutated_envelopes(data: bytes) -> None:
    _check(data, ANCHOR)


@_settings(0.15)
@given(st.integers(1, 100_000), st.sampled_from([b"\x81", b"\xa1\x00", b"\xd8\x6b", b"\x41"]))
def test_fuzz_deep_nesting(depth: int, opener: bytes) -> None:
    _check(opener * depth + b"\x00", ANCHOR)


@_settings(0.15)
@given(
    st.sampled_from([0x5B, 0x7B, 0x9B, 0xBB, 0x5A, 0x9A, 0xBA]),
    st.integers(0, 2**64 - 1),
    st.binary(max_size=16),
    st.sampled_from([b"", b"\xd8\x6b\xa2\x02", b"\xd8\x6b\xa1\x03"]),
)
def test_fuzz_huge_declared_lengths(head: int, length: int, tail: bytes, prefix: bytes) -> None:
    width = 8 if head & 0x1F == 27 else 4
    data = prefix + bytes([head]) + (length % (1 << (8 * width))).to_bytes(width, "big") + tail
    _check(data, ANCHOR)
