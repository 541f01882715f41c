"""The manifest service's protobuf edge: its messages to and from the SUIT
library's domain types, and the table that maps the library's errors to
gRPC statuses. Nothing else in the service touches generated code.

What is an error and what is a verdict: ``Validate`` answers whether an
authentic envelope applies to the device described in the request, so a
refusal by the processing rules (rollback, vendor, class, image, a failed
condition: ``ProcessingError``) is a verdict, ``accepted = false`` with its
code. A request the service cannot judge at all — an envelope that does
not decode, breaks the limits or the CDDL, is not signed by a trusted key,
or carries severable members that do not match, or a trust anchor in the
request that is not a key — is refused: the servicer raises the library's
error and the interceptor (``fleetsuit.rpc``) aborts with the status below
and the error's code in ``fleetsuit-error-code``.

Fetchable payloads (``ManifestDeviceContext.fetchable``) are looked up by
the URI the manifest names; one with an EMPTY ``uri`` stands for the
payload whatever URI the manifest names (``_FetchableByUri``): a caller
that knows the payload by its digest and size, not by where a device
would fetch it (the consensus node checking a release before it proposes
it: fleetsuit finds payloads by content id), says so with ``uri = ""``.
The digest and size are still checked against the manifest's.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from typing import cast

import grpc
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from fleetsuit.rpc import ErrorTable
from fleetsuit.v1 import manifest_pb2 as pb
from suit.auth import TrustAnchor
from suit.device import DeviceContext, Image, ImageInfo
from suit.errors import (
    AuthenticationError,
    ErrorCode,
    ProcessingError,
    StructureError,
    SuitError,
)
from suit.keys import public_der
from suit.model import ComponentId, Envelope, Manifest
from suit.processor import Procedure, Verdict
from suit.show import diagnostic, envelope_json

# Looked up along the error's MRO (fleetsuit.rpc.status_of).
ERRORS: ErrorTable = {
    # The bytes are not a bounded, canonical SUIT envelope (DecodeError,
    # LimitExceeded, StructureError), its severable members do not match
    # (SeverableError), or a trust anchor in the request is not a key.
    SuitError: grpc.StatusCode.INVALID_ARGUMENT,
    # No trusted key signed it, or the digest does not match (§8.3): the
    # release is refused, whoever sent it; the code says which check failed.
    AuthenticationError: grpc.StatusCode.PERMISSION_DENIED,
    # Validate answers these with a verdict; raised anywhere else, the
    # device's state is what refuses the envelope.
    ProcessingError: grpc.StatusCode.FAILED_PRECONDITION,
}

_PROCEDURES: dict[int, Procedure] = {
    pb.MANIFEST_PROCEDURE_UNSPECIFIED: Procedure.UPDATE,
    pb.MANIFEST_PROCEDURE_AUTHENTICATE: Procedure.AUTHENTICATE,
    pb.MANIFEST_PROCEDURE_UPDATE: Procedure.UPDATE,
    pb.MANIFEST_PROCEDURE_INVOKE: Procedure.INVOKE,
}


def error_code_to_pb(code: ErrorCode) -> pb.ManifestErrorCode:
    # manifest.proto shares the numbers (tests check every one).
    return cast(pb.ManifestErrorCode, code.number)


def component_from_pb(msg: pb.ManifestComponentId) -> ComponentId:
    return tuple(bytes(p) for p in msg.parts)


def component_to_pb(component: ComponentId) -> pb.ManifestComponentId:
    return pb.ManifestComponentId(parts=list(component))


def anchor_from_pb(msg: pb.ManifestTrustAnchor) -> TrustAnchor:
    try:
        key = serialization.load_der_public_key(msg.public_key_der)
    except ValueError:
        raise StructureError("trust anchor is not a DER public key") from None
    if not isinstance(key, ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey):
        raise StructureError("trust anchor must be a P-256 or Ed25519 key")
    return TrustAnchor(
        public_key=key,
        key_id=msg.key_id or None,
        class_ids=frozenset(msg.class_ids) if msg.class_ids else None,
        components=frozenset(component_from_pb(c) for c in msg.components)
        if msg.components
        else None,
    )


class AnchorCache:
    """Trust anchors from requests, parsed once (DER key load, key family).

    Keyed by the anchor message's deterministic encoding, so an entry is
    reused only for the same key bytes, key id, classes and components.
    Least recently used entries go first beyond ``max_entries``.
    """

    def __init__(self, max_entries: int = 256) -> None:
        if max_entries <= 0:
            raise ValueError("AnchorCache.max_entries must be positive")
        self.max_entries = max_entries
        self._entries: OrderedDict[bytes, TrustAnchor] = OrderedDict()

    def get(self, msg: pb.ManifestTrustAnchor) -> TrustAnchor:
        key = msg.SerializeToString(deterministic=True)
        anchor = self._entries.get(key)
        if anchor is not None:
            self._entries.move_to_end(key)
            return anchor
        anchor = anchor_from_pb(msg)  # a bad anchor raises and is not cached
        self._entries[key] = anchor
        if len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        return anchor

    def __len__(self) -> int:
        return len(self._entries)


def anchor_to_pb(anchor: TrustAnchor) -> pb.ManifestTrustAnchor:
    return pb.ManifestTrustAnchor(
        public_key_der=public_der(anchor.public_key),
        key_id=anchor.key_id or b"",
        class_ids=sorted(anchor.class_ids or ()),
        components=[component_to_pb(c) for c in sorted(anchor.components or ())],
    )


def _image(msg: pb.ManifestPayload) -> Image:
    if msg.content or not msg.sha256:
        return bytes(msg.content)
    return ImageInfo(bytes(msg.sha256), int(msg.size))


class _FetchableByUri(Mapping[str, Image]):
    """Fetchable payloads by URI, and ``any_uri`` for every URI not named:
    the payload given with an empty ``uri``. Iterates over the named ones
    only."""

    def __init__(self, named: dict[str, Image], any_uri: Image) -> None:
        self._named = named
        self._any_uri = any_uri

    def __getitem__(self, uri: str) -> Image:
        return self._named.get(uri, self._any_uri)

    def __iter__(self) -> Iterator[str]:
        return iter(self._named)

    def __len__(self) -> int:
        return len(self._named)

    def __contains__(self, uri: object) -> bool:
        return isinstance(uri, str)


def fetchable_from_pb(payloads: Iterable[pb.ManifestPayload]) -> Mapping[str, Image]:
    """URI -> payload; a payload with an empty uri answers for any URI not
    named (the module's docstring says why)."""
    named: dict[str, Image] = {}
    any_uri: Image | None = None
    for p in payloads:
        if p.uri:
            named[p.uri] = _image(p)
        else:
            any_uri = _image(p)
    return named if any_uri is None else _FetchableByUri(named, any_uri)


def context_from_pb(msg: pb.ManifestDeviceContext) -> DeviceContext:
    return DeviceContext(
        vendor_id=bytes(msg.vendor_id),
        class_id=bytes(msg.class_id),
        device_id=bytes(msg.device_id) or None,
        installed_sequence={
            component_from_pb(i.component): int(i.sequence_number) for i in msg.installed
        },
        fetchable=fetchable_from_pb(msg.fetchable),
        images={component_from_pb(p.component): _image(p) for p in msg.images},
    )


def procedure_from_pb(value: int) -> Procedure:
    return _PROCEDURES.get(value, Procedure.UPDATE)


def verdict_to_pb(verdict: Verdict) -> pb.ManifestValidateResponse:
    return pb.ManifestValidateResponse(
        accepted=verdict.accepted,
        code=error_code_to_pb(verdict.code),
        message=verdict.message,
        sequence_number=verdict.sequence_number or 0,
        components=[component_to_pb(c) for c in verdict.components],
    )


def inspection_to_pb(
    data: bytes, envelope: Envelope, manifest: Manifest
) -> pb.ManifestInspectResponse:
    """What ``Inspect`` tells about an envelope that decoded (not verified)."""
    auth = envelope.authentication
    return pb.ManifestInspectResponse(
        ok=True,
        code=error_code_to_pb(ErrorCode.OK),
        message="decoded (not verified)",
        sequence_number=manifest.sequence_number,
        components=[component_to_pb(c) for c in manifest.common.components],
        json=json.dumps(envelope_json(envelope, manifest)),
        diagnostic=diagnostic(data),
        signed=auth is not None and bool(auth.blocks),
    )
