"""How a device proves who it is to a gateway (shared by the gateway and the
device agent): the message it signs at registration, and signing and
verifying it with the device's key (Ed25519 or ECDSA P-256).

A gateway sends a fresh random nonce; the device signs
``registration_message(gateway_id, device_id, nonce)`` with the private key
whose public half was enrolled in the ledger. Binding the gateway id stops
a signature made for one gateway being replayed to another; the nonce stops
a replay to the same one.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

DOMAIN = b"fleetsuit-device-register\x00"
NONCE_BYTES = 32
MAX_KEY_PEM_BYTES = 4096

DevicePrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey
DevicePublicKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey


class DeviceKeyError(ValueError):
    """A device key that does not load or is of a kind we do not accept."""


def registration_message(gateway_id: str, device_id: str, nonce: bytes) -> bytes:
    return DOMAIN + gateway_id.encode() + b"\x00" + device_id.encode() + b"\x00" + nonce


def new_device_key() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


def private_pem(key: DevicePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def public_pem(key: DevicePrivateKey | DevicePublicKey) -> bytes:
    public = key.public_key() if isinstance(key, DevicePrivateKey) else key
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_private_key(pem: bytes) -> DevicePrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise DeviceKeyError(f"not a PEM private key: {exc}") from None
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key
    if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1):
        return key
    raise DeviceKeyError("a device key must be Ed25519 or ECDSA P-256")


def load_public_key(pem: bytes) -> DevicePublicKey:
    if not pem or len(pem) > MAX_KEY_PEM_BYTES:
        raise DeviceKeyError(f"a device public key is 1..{MAX_KEY_PEM_BYTES} bytes of PEM")
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError) as exc:
        raise DeviceKeyError(f"not a PEM public key: {exc}") from None
    if isinstance(key, ed25519.Ed25519PublicKey):
        return key
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return key
    raise DeviceKeyError("a device key must be Ed25519 or ECDSA P-256")


def sign(key: DevicePrivateKey, message: bytes) -> bytes:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(message)
    return key.sign(message, ec.ECDSA(hashes.SHA256()))


def verify(key: DevicePublicKey, message: bytes, signature: bytes) -> bool:
    try:
        if isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, message)
        else:
            key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        return False
    return True
