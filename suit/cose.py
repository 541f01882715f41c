"""COSE_Sign1 with a detached payload (RFC 9052 §4.2–4.4), as SUIT uses it.

ES256 (−7, and the fully-specified ESP256 −9) and EdDSA with Ed25519 (−8,
and −19). Signatures are raw r‖s for ECDSA (RFC 9053 §2.1: DER is invalid
here). This module verifies and signs bytes; which key may sign what is the
caller's policy (``auth.py``).
"""

from __future__ import annotations

import enum
from typing import Any

import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from .cbor import encode_head
from .errors import AuthenticationError, ErrorCode
from .model import CoseAlgorithm, CoseSign1

PublicKey = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey
PrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey

ECDSA_ALGORITHMS = frozenset({CoseAlgorithm.ES256, CoseAlgorithm.ESP256})
EDDSA_ALGORITHMS = frozenset({CoseAlgorithm.EDDSA, CoseAlgorithm.ED25519})
SUPPORTED_ALGORITHMS = ECDSA_ALGORITHMS | EDDSA_ALGORITHMS
# Header labels this implementation understands, for the 'crit' check (RFC 9052 §3.1).
UNDERSTOOD_HEADERS = frozenset({1, 2, 3, 4})
_ECDSA_SHA256 = ec.ECDSA(hashes.SHA256())  # one instance: verify takes it as a parameter
assert {-7, -9} == ECDSA_ALGORITHMS  # spelled out as ints in verify_message


# The array head and context string of every COSE_Sign1 Sig_structure.
_SIG1_PREFIX = b"\x84\x6aSignature1"


def sig_structure(protected_raw: bytes, payload: bytes, external_aad: bytes = b"") -> bytes:
    """Sig_structure for COSE_Sign1 (RFC 9052 §4.4).

    Assembled from the byte strings as they are, with their CBOR heads:
    nothing is re-encoded (the same bytes as ``cbor2.dumps`` of the array).
    """
    return b"".join(
        (
            _SIG1_PREFIX,
            encode_head(2, len(protected_raw)),
            protected_raw,
            encode_head(2, len(external_aad)),
            external_aad,
            encode_head(2, len(payload)),
            payload,
        )
    )


def _der_integer(magnitude: bytes) -> bytes:
    """A DER INTEGER of an unsigned big-endian magnitude (X.690 §8.3)."""
    magnitude = magnitude.lstrip(b"\x00") or b"\x00"
    if magnitude[0] & 0x80:
        magnitude = b"\x00" + magnitude
    return b"\x02" + bytes((len(magnitude),)) + magnitude


def der_signature(raw: bytes) -> bytes:
    """r‖s (RFC 9053 §2.1) as the DER ECDSA-Sig-Value OpenSSL verifies.

    The same bytes as ``encode_dss_signature``; built here directly because
    that call costs more than the rest of this conversion.
    """
    half = len(raw) // 2
    r, s = raw[:half], raw[half:]
    if half == 32 and r[0] and s[0]:
        # P-256 halves without a leading zero byte (255 in 256 signatures):
        # each INTEGER is 32 bytes, after a 0x00 sign byte when the top bit is set.
        return _DER_HEADS[r[0] >> 7][s[0] >> 7] + r + _INTEGER_HEADS[s[0] >> 7] + s
    r, s = _der_integer(r), _der_integer(s)
    return b"\x30" + bytes((len(r) + len(s),)) + r + s


_INTEGER_HEADS = (b"\x02\x20", b"\x02\x21\x00")
# SEQUENCE head plus r's INTEGER head, by the top bits of r and s.
_DER_HEADS = tuple(
    tuple(bytes((0x30, 0x44 + r_top + s_top)) + _INTEGER_HEADS[r_top] for s_top in (0, 1))
    for r_top in (0, 1)
)


def check_algorithm(sign1: CoseSign1) -> int:
    """The block's algorithm, or an UNSUPPORTED_ALGORITHM error."""
    alg = sign1.algorithm
    if type(alg) is not int or alg not in SUPPORTED_ALGORITHMS:
        raise AuthenticationError(
            f"COSE algorithm {alg!r} is not supported", ErrorCode.UNSUPPORTED_ALGORITHM
        )
    crit = sign1.protected.get(2)
    if crit is not None:
        if not isinstance(crit, list | tuple) or not crit:
            raise AuthenticationError("malformed COSE crit header", ErrorCode.INVALID_STRUCTURE)
        unknown = [c for c in crit if c not in UNDERSTOOD_HEADERS]
        if unknown:
            raise AuthenticationError(
                f"critical COSE header {unknown[0]!r} is not understood",
                ErrorCode.UNSUPPORTED_ALGORITHM,
            )
    return alg


class KeyFamily(enum.Enum):
    """Which COSE algorithms a public key can check."""

    P256 = "P-256"  # ES256, ESP256
    ED25519 = "Ed25519"  # EdDSA, Ed25519
    OTHER = "other"


def key_family(key: object) -> KeyFamily:
    """Worked out once per trust anchor (``TrustAnchor.family``), not per signature."""
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return KeyFamily.P256
    if isinstance(key, ed25519.Ed25519PublicKey):
        return KeyFamily.ED25519
    return KeyFamily.OTHER


# The key family each supported algorithm needs.
ALGORITHM_FAMILY = {
    alg: KeyFamily.P256 if alg in ECDSA_ALGORITHMS else KeyFamily.ED25519
    for alg in map(int, SUPPORTED_ALGORITHMS)
}


def family_for(alg: int) -> KeyFamily:
    return KeyFamily.P256 if alg in ECDSA_ALGORITHMS else KeyFamily.ED25519


def key_fits(alg: int, key: PublicKey) -> bool:
    return key_family(key) is family_for(alg)


def verify(sign1: CoseSign1, payload: bytes, key: PublicKey) -> bool:
    """True when ``sign1`` signs the detached ``payload`` with ``key``."""
    alg = check_algorithm(sign1)
    if not key_fits(alg, key):
        return False
    return verify_checked(alg, sign1, payload, key)


def verify_checked(alg: int, sign1: CoseSign1, payload: bytes, key: PublicKey) -> bool:
    """``verify`` once the caller has checked ``alg`` and that ``key`` fits it."""
    return verify_message(alg, sign1.signature, sig_structure(sign1.protected_raw, payload), key)


def verify_message(alg: int, signature: bytes, message: bytes, key: PublicKey) -> bool:
    """True when ``signature`` (COSE form) signs the Sig_structure ``message``."""
    if len(signature) != 64:  # r‖s for P-256 (RFC 9053 §2.1), or an Ed25519 signature
        return False
    try:
        if alg == -7 or alg == -9:  # ES256, ESP256 (ECDSA_ALGORITHMS)
            key.verify(der_signature(signature), message, _ECDSA_SHA256)  # type: ignore[call-arg]
        else:
            key.verify(signature, message)  # type: ignore[call-arg]
    except InvalidSignature:
        return False
    return True


def algorithm_for(key: PrivateKey | PublicKey) -> int:
    if isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey):
        return CoseAlgorithm.EDDSA
    if isinstance(key.curve, ec.SECP256R1):
        return CoseAlgorithm.ES256
    raise ValueError(f"unsupported key curve {key.curve.name}")


def sign(payload: bytes, key: PrivateKey, key_id: bytes | None = None) -> bytes:
    """A tagged COSE_Sign1 (#6.18) over the detached ``payload``."""
    alg = algorithm_for(key)
    protected_raw = cbor2.dumps({1: alg})
    message = sig_structure(protected_raw, payload)
    if isinstance(key, ed25519.Ed25519PrivateKey):
        signature = key.sign(message)
    else:
        r, s = decode_dss_signature(key.sign(message, _ECDSA_SHA256))
        signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    unprotected: dict[int, Any] = {} if key_id is None else {4: key_id}
    return cbor2.dumps(cbor2.CBORTag(18, [protected_raw, unprotected, None, signature]))
