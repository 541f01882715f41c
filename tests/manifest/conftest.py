"""Fixtures for the manifest service and CLI tests: the SUIT library's test
helpers (``tests/suit/conftest.py``) and a signing key per session."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from ..suit.conftest import CLASS, PAYLOAD, URI, VECTORS, VENDOR, description, signed

__all__ = ["CLASS", "PAYLOAD", "URI", "VECTORS", "VENDOR", "description", "signed"]


@pytest.fixture(scope="session")
def es256_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())
