"""Signing keys as PEM bytes: making, reading and writing the two key
families COSE signing here supports (P-256 for ES256, Ed25519 for EdDSA).

Bytes in, keys out: reading and writing key files, and their permissions,
are the caller's (the CLI, the service's trust-anchor loader, a device
agent). A key of another family or a PEM that does not parse is a
``ValueError`` saying which.
"""

from __future__ import annotations

import enum

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from .cose import PrivateKey, PublicKey


class KeyAlgorithm(enum.StrEnum):
    ES256 = "es256"  # ECDSA on P-256 with SHA-256
    ED25519 = "ed25519"  # EdDSA on Ed25519


def generate(algorithm: KeyAlgorithm) -> PrivateKey:
    if algorithm is KeyAlgorithm.ED25519:
        return ed25519.Ed25519PrivateKey.generate()
    return ec.generate_private_key(ec.SECP256R1())


def private_pem(key: PrivateKey) -> bytes:
    """PKCS#8, unencrypted: protect the file that holds it."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def public_pem(key: PublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def public_der(key: PublicKey) -> bytes:
    """The key's SubjectPublicKeyInfo, DER: how trust anchors travel and
    are named."""
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_private_pem(data: bytes) -> PrivateKey:
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"not an unencrypted PEM private key ({exc})") from None
    if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1):
        return key
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key
    raise ValueError("only P-256 and Ed25519 keys are supported")


def load_public_pem(data: bytes) -> PublicKey:
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"not a PEM public key ({exc})") from None
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return key
    if isinstance(key, ed25519.Ed25519PublicKey):
        return key
    raise ValueError("only P-256 and Ed25519 keys are supported")
