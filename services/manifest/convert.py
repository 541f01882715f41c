"""Translation between the manifest service's protobuf messages and the
SUIT library's domain types. Nothing else touches generated code."""

from __future__ import annotations

from collections import OrderedDict

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from fleetsuit.v1 import manifest_pb2 as pb

from .auth import TrustAnchor
from .errors import ErrorCode, StructureError
from .model import ComponentId
from .processor import DeviceContext, Image, ImageInfo, Procedure, Verdict

_PROCEDURES: dict[int, Procedure] = {
    pb.MANIFEST_PROCEDURE_UNSPECIFIED: Procedure.UPDATE,
    pb.MANIFEST_PROCEDURE_AUTHENTICATE: Procedure.AUTHENTICATE,
    pb.MANIFEST_PROCEDURE_UPDATE: Procedure.UPDATE,
    pb.MANIFEST_PROCEDURE_INVOKE: Procedure.INVOKE,
}


def error_code_to_pb(code: ErrorCode) -> int:
    return int(code)  # the enums share their numbers (manifest.proto)


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
    der = anchor.public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return pb.ManifestTrustAnchor(
        public_key_der=der,
        key_id=anchor.key_id or b"",
        class_ids=sorted(anchor.class_ids or ()),
        components=[component_to_pb(c) for c in sorted(anchor.components or ())],
    )


def _image(msg: pb.ManifestPayload) -> Image:
    if msg.content or not msg.sha256:
        return bytes(msg.content)
    return ImageInfo(bytes(msg.sha256), int(msg.size))


def context_from_pb(msg: pb.ManifestDeviceContext) -> DeviceContext:
    return DeviceContext(
        vendor_id=bytes(msg.vendor_id),
        class_id=bytes(msg.class_id),
        device_id=bytes(msg.device_id) or None,
        installed_sequence={
            component_from_pb(i.component): int(i.sequence_number) for i in msg.installed
        },
        fetchable={p.uri: _image(p) for p in msg.fetchable},
        images={component_from_pb(p.component): _image(p) for p in msg.images},
    )


def procedure_from_pb(value: int) -> Procedure:
    return _PROCEDURES.get(value, Procedure.UPDATE)


def verdict_to_pb(verdict: Verdict) -> pb.ManifestValidateResponse:
    return pb.ManifestValidateResponse(
        accepted=verdict.accepted,
        code=error_code_to_pb(verdict.code),  # type: ignore[arg-type]
        message=verdict.message,
        sequence_number=verdict.sequence_number or 0,
        components=[component_to_pb(c) for c in verdict.components],
    )
