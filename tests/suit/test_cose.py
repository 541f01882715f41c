"""The COSE byte assembly against the library calls it replaces: the
Sig_structure (RFC 9052 §4.4) against cbor2's encoding of the array, and the
r‖s to DER conversion (RFC 9053 §2.1) against ``encode_dss_signature``."""

from __future__ import annotations

import cbor2
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from hypothesis import given, settings
from hypothesis import strategies as st

from suit.cose import der_signature, sig_structure

# Halves with leading zero bytes and high bits set are the edge cases of DER.
_HALF = st.one_of(
    st.binary(min_size=32, max_size=32),
    st.builds(lambda z, b: bytes(z) + b[z:], st.integers(0, 32), st.binary(min_size=32, max_size=32)),
    st.builds(lambda b: b"\x80" + b, st.binary(min_size=31, max_size=31)),
)


@settings(max_examples=500, deadline=None, derandomize=True, database=None)
@given(_HALF, _HALF)
def test_der_signature_matches_encode_dss_signature(r: bytes, s: bytes) -> None:
    expected = encode_dss_signature(int.from_bytes(r, "big"), int.from_bytes(s, "big"))
    assert der_signature(r + s) == expected


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(st.binary(max_size=300), st.binary(max_size=40), st.binary(max_size=300))
def test_sig_structure_matches_cbor2(protected: bytes, aad: bytes, payload: bytes) -> None:
    assert sig_structure(protected, payload, aad) == cbor2.dumps(
        ["Signature1", protected, aad, payload]
    )
