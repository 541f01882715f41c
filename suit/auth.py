"""Authenticating an envelope: the digest, the signatures, severable members.

draft-ietf-suit-manifest-37 §8.3: the SUIT_Digest covers the bstr-wrapped
manifest (header included); each COSE block signs that encoded digest as a
detached payload. Policy (SPEC_NOTES §2 leaves it open): the envelope is
authentic when at least one COSE_Sign1 block verifies with a trust anchor
that applies to the device class. §8.4.12: a severable member present in
the envelope must match the digest the manifest holds for it. Pure
functions over the typed model; no I/O.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from .cbor import encode_head
from .cose import (
    ALGORITHM_FAMILY,
    KeyFamily,
    PublicKey,
    check_algorithm,
    key_family,
    sig_structure,
    verify_message,
)
from .errors import AuthenticationError, ErrorCode, SeverableError, StructureError
from .model import SEVERABLE_KEYS, ComponentId, Envelope, Manifest, SuitDigest


@dataclass(frozen=True, slots=True)
class TrustAnchor:
    """A key allowed to sign manifests, optionally scoped (DESIGN: Security model)."""

    public_key: PublicKey
    key_id: bytes | None = None
    class_ids: frozenset[bytes] | None = None  # None: any device class
    components: frozenset[ComponentId] | None = None  # None: any component
    # Derived once from ``public_key`` so validations skip the type checks.
    family: KeyFamily = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "family", key_family(self.public_key))

    def covers(self, components: Sequence[ComponentId]) -> bool:
        return self.components is None or all(c in self.components for c in components)


_HASHES: dict[int, Callable[[bytes], bytes]] = {
    -16: lambda b: hashlib.sha256(b).digest(),
    -18: lambda b: hashlib.shake_128(b).digest(32),
    -43: lambda b: hashlib.sha384(b).digest(),
    -44: lambda b: hashlib.sha512(b).digest(),
    -45: lambda b: hashlib.shake_256(b).digest(64),
}


def compute_digest(algorithm: int, data: bytes) -> bytes:
    fn = _HASHES.get(algorithm)
    if fn is None:
        raise AuthenticationError(
            f"digest algorithm {algorithm} is not supported",
            ErrorCode.UNSUPPORTED_DIGEST_ALGORITHM,
        )
    return fn(data)


def digest_matches(digest: SuitDigest, data: bytes) -> bool:
    return hmac.compare_digest(compute_digest(digest.algorithm, data), digest.digest)


def wrapped_digest_matches(digest: SuitDigest, content: bytes) -> bool:
    """``digest`` covers ``content`` as a bstr item, header included (§8.3)."""
    head = encode_head(2, len(content))
    if digest.algorithm == -16:  # SHA-256, the common case: no copy of the content
        h = hashlib.sha256(head)
        h.update(content)
        return hmac.compare_digest(h.digest(), digest.digest)
    return digest_matches(digest, head + content)


def signer_of(
    anchors: Sequence[TrustAnchor],
    class_id: bytes | None,
    alg: int,
    kid: bytes | None,
    signature: bytes,
    message: bytes,
) -> tuple[TrustAnchor | None, bool]:
    """The first anchor for a device of ``class_id`` (None: any class) whose
    key verifies ``signature`` over the Sig_structure ``message``, and whether
    any anchor could be tried at all (class, key id and key family fit)."""
    family = ALGORITHM_FAMILY[alg]
    tried = False
    for anchor in anchors:
        classes = anchor.class_ids
        if class_id is not None and classes is not None and class_id not in classes:
            continue
        if kid is not None and anchor.key_id is not None and kid != anchor.key_id:
            continue
        if anchor.family is not family:
            continue
        tried = True
        if verify_message(alg, signature, message, anchor.public_key):
            return anchor, True
    return None, tried


def no_signer(tried: bool, unsupported: AuthenticationError | None) -> AuthenticationError:
    """Why no block authenticated the envelope."""
    if not tried and unsupported is not None:
        return unsupported
    if not tried:
        return AuthenticationError(
            "no trust anchor for this device class and algorithm can check the signature",
            ErrorCode.UNTRUSTED_SIGNER,
        )
    return AuthenticationError(
        "signature does not verify with any trusted key", ErrorCode.SIGNATURE_INVALID
    )


def digest_mismatch() -> AuthenticationError:
    return AuthenticationError("SUIT_Digest does not match the manifest", ErrorCode.DIGEST_MISMATCH)


def authenticate(
    envelope: Envelope, anchors: Sequence[TrustAnchor], class_id: bytes | None = None
) -> TrustAnchor:
    """The anchor whose signature authenticates the envelope, or an error.

    Signatures are checked before the digest so that a changed digest reads as
    a bad signature and a changed manifest as a digest mismatch.
    """
    auth = envelope.authentication
    if auth is None or not auth.blocks:
        raise AuthenticationError(
            "no SUIT_Authentication_Block: the envelope is not signed (§8.3)",
            ErrorCode.NO_AUTHENTICATION,
        )
    unsupported: AuthenticationError | None = None
    tried = False
    signer: TrustAnchor | None = None
    for block in auth.blocks:
        sign1 = block.sign1
        if sign1 is None:
            unsupported = AuthenticationError(
                f"COSE object with tag {block.tag} is not supported",
                ErrorCode.UNSUPPORTED_ALGORITHM,
            )
            continue
        if sign1.payload is not None and sign1.payload != auth.digest_raw:
            raise StructureError("COSE payload must be detached (nil) or the SUIT_Digest")
        try:
            alg = check_algorithm(sign1)
        except AuthenticationError as exc:
            unsupported = exc
            continue
        message = sig_structure(sign1.protected_raw, auth.digest_raw)
        signer, tried_block = signer_of(
            anchors, class_id, alg, sign1.key_id, sign1.signature, message
        )
        tried = tried or tried_block
        if signer is not None:
            break
    if signer is None:
        raise no_signer(tried, unsupported)
    if not wrapped_digest_matches(auth.digest, envelope.manifest_raw):
        raise digest_mismatch()
    return signer


def check_digest_only(envelope: Envelope) -> None:
    """The manifest matches the wrapper's digest (no signature): tooling only."""
    auth = envelope.authentication
    if auth is None:
        raise AuthenticationError("no authentication wrapper", ErrorCode.NO_AUTHENTICATION)
    if not wrapped_digest_matches(auth.digest, envelope.manifest_raw):
        raise digest_mismatch()


def check_envelope_members(envelope: Envelope) -> None:
    """Reject envelope members the specification does not define (§8.2)."""
    for key, _ in envelope.members:
        if isinstance(key, str):
            continue  # integrated payload
        if key in (2, 3) or key in SEVERABLE_KEYS:
            continue
        if -256 < key < 256:
            raise StructureError(f"unsupported envelope member {key}")


def check_severable(envelope: Envelope, manifest: Manifest) -> tuple[int, ...]:
    """Verify present severable members (§8.4.12); returns the severed keys."""
    severed = []
    for key in SEVERABLE_KEYS:
        in_manifest = manifest.severable(key)
        present = envelope.member(int(key))
        if isinstance(in_manifest, SuitDigest):
            if present is None:
                severed.append(int(key))
            elif not wrapped_digest_matches(in_manifest, present):
                raise SeverableError(
                    f"severable member {key.name.lower()} does not match its digest",
                    ErrorCode.SEVERABLE_DIGEST_MISMATCH,
                )
        elif present is not None:
            # §5.4: an envelope element cannot replace or add to the manifest.
            raise SeverableError(
                f"envelope carries {key.name.lower()} the manifest does not authorise",
                ErrorCode.SEVERABLE_DIGEST_MISMATCH,
            )
    return tuple(severed)
