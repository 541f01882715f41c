"""PEM keys in and out: both supported families round-trip, anything else
is a ValueError saying why (the caller names the file)."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from suit import keys


@pytest.mark.parametrize("algorithm", list(keys.KeyAlgorithm))
def test_generated_keys_round_trip_through_pem(algorithm: keys.KeyAlgorithm) -> None:
    key = keys.generate(algorithm)
    private = keys.load_private_pem(keys.private_pem(key))
    public = keys.load_public_pem(keys.public_pem(key.public_key()))
    assert keys.public_pem(private.public_key()) == keys.public_pem(public)


def test_other_curves_and_garbage_are_refused() -> None:
    p384 = ec.generate_private_key(ec.SECP384R1())
    with pytest.raises(ValueError, match="P-256 and Ed25519"):
        keys.load_private_pem(keys.private_pem(p384))
    with pytest.raises(ValueError, match="P-256 and Ed25519"):
        keys.load_public_pem(keys.public_pem(p384.public_key()))
    with pytest.raises(ValueError, match="not a PEM public key"):
        keys.load_public_pem(b"hello")
    with pytest.raises(ValueError, match="not an unencrypted PEM private key"):
        keys.load_private_pem(b"hello")
