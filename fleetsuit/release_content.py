"""What a release push sends, built where the signing key is (the CI
job, never a node): the release's SUIT envelope, in the shape the cluster's
checks expect, and its payload, known by content id and read in pieces.

The one module of ``fleetsuit`` that imports the SUIT library (``suit/``, a
pure library): signing has to happen where the key is. No I/O but reading
the payload's file."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleetsuit.release_model import (
    CID_PREFIX,
    DEFAULT_DEVICE_CLASS,
    DEFAULT_VENDOR_DOMAIN,
    check_content_id,
)
from suit import keys as suit_keys
from suit.build import build_envelope, sign_envelope
from suit.codec import decode as decode_envelope
from suit.errors import SuitError

UPLOAD_PIECE_BYTES = 1024 * 1024  # one Dht.Put message; far below the 8 MiB gRPC limit


# ---------------------------------------------------------------- envelopes


def release_description(
    *, component: str, sequence: int, payload_cid: str, payload_size: int,
    device_class: str = DEFAULT_DEVICE_CLASS, vendor_domain: str = DEFAULT_VENDOR_DOMAIN,
) -> dict[str, Any]:
    """The SUIT description (``suit.build``'s input) of a release, as the
    cluster's check expects it: one component whose id is one part, the
    UTF-8 bytes of its name; one device class (draft-ietf-suit-manifest
    §8.4.8.2: class id = UUID5(vendor id, class name), vendor id =
    UUID5(DNS, vendor domain)); the payload's SHA-256 and size, fetched from
    ``fleetsuit:<content id>``."""
    check_content_id(payload_cid)
    return {
        "manifest-version": 1,
        "manifest-sequence-number": sequence,
        "text": {"manifest-description": f"{component} sequence {sequence} ({device_class})"},
        "components": [{
            "install-id": [component.encode().hex()],
            "vendor-domain": vendor_domain,
            "class-info": device_class,
            "install-digest": {"algorithm-id": "sha256", "digest-bytes": payload_cid[len(CID_PREFIX):]},
            "install-size": payload_size,
            "uri": f"fleetsuit:{payload_cid}",
        }],
    }


def build_release_envelope(
    *, component: str, sequence: int, payload_cid: str, payload_size: int, key_pem: bytes,
    device_class: str = DEFAULT_DEVICE_CLASS, vendor_domain: str = DEFAULT_VENDOR_DOMAIN,
) -> bytes:
    """The signed envelope of a release (Ed25519 or P-256 key, PEM). A
    P-256 (ECDSA) signature differs on every call; an Ed25519 one does not."""
    key = suit_keys.load_private_pem(key_pem)
    description = release_description(
        component=component, sequence=sequence, payload_cid=payload_cid, payload_size=payload_size,
        device_class=device_class, vendor_domain=vendor_domain,
    )
    try:
        return sign_envelope(build_envelope(description, {}), key)
    except SuitError as exc:
        raise ValueError(f"cannot build the envelope: {exc}") from None


def check_envelope(envelope: bytes, component: str, sequence: int) -> None:
    """A pre-built envelope must at least decode and name this component and
    sequence (the cluster checks the rest)."""
    try:
        _, manifest = decode_envelope(envelope)
    except SuitError as exc:
        raise ValueError(f"the envelope does not decode: {exc}") from None
    if manifest.sequence_number != sequence:
        raise ValueError(f"the envelope's sequence number is {manifest.sequence_number}, not {sequence}")
    if manifest.common.components != ((component.encode(),),):
        raise ValueError(f"the envelope is not for the one component {component!r}")


# ---------------------------------------------------------------- payloads


@dataclass(frozen=True, slots=True)
class Payload:
    """A release's payload: its content id and size, and where its bytes
    are (a file, bytes, or None: assumed in the dht already)."""

    cid: str
    size: int
    source: Path | bytes | None  # None: assumed in the dht already

    @classmethod
    def of(cls, payload: Path | bytes | None, cid: str | None, size: int | None) -> Payload:
        if payload is not None and cid is not None:
            raise ValueError("give the payload or its cid and size, not both")
        if payload is None:
            if cid is None or size is None:
                raise ValueError("give the payload, or its cid and size (payload_cid, payload_size)")
            if size < 0:
                raise ValueError("payload_size must not be negative")
            return cls(check_content_id(cid), size, None)
        if isinstance(payload, bytes):
            return cls(CID_PREFIX + hashlib.sha256(payload).hexdigest(), len(payload), payload)
        digest = hashlib.sha256()
        size = 0
        with open(payload, "rb") as f:
            while piece := f.read(UPLOAD_PIECE_BYTES):
                digest.update(piece)
                size += len(piece)
        return cls(CID_PREFIX + digest.hexdigest(), size, payload)

    def pieces(self) -> Iterator[bytes]:
        if isinstance(self.source, bytes):
            for at in range(0, len(self.source), UPLOAD_PIECE_BYTES):
                yield self.source[at:at + UPLOAD_PIECE_BYTES]
        elif self.source is not None:
            with open(self.source, "rb") as f:
                while piece := f.read(UPLOAD_PIECE_BYTES):
                    yield piece
