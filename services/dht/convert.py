"""Translation between the dht's domain types and fleetsuit.v1 protobuf.

Also the one table mapping dht errors to gRPC status codes; the stable error
code travels in the trailing metadata key ``fleetsuit-error-code``.
"""

from __future__ import annotations

import grpc

from fleetsuit.v1 import dht_pb2
from services.dht import errors
from services.dht.routing import ID_BYTES, Contact, NodeId

ERROR_CODE_KEY = "fleetsuit-error-code"
# Busy's retry_after_s in whole milliseconds; absent from older peers (read as 0).
RETRY_AFTER_KEY = "fleetsuit-retry-after-ms"
MAX_RETRY_AFTER_S = 10.0  # a peer's hint is capped: it must not park a fetch

STATUS_OF: dict[type[errors.DhtError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.InvalidContentId: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.StoreFull: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.BlobTooLarge: grpc.StatusCode.INVALID_ARGUMENT,
    errors.InvalidRoot: grpc.StatusCode.DATA_LOSS,
    errors.ChunkCorrupt: grpc.StatusCode.DATA_LOSS,
    errors.DigestMismatch: grpc.StatusCode.DATA_LOSS,
    errors.PeerUnavailable: grpc.StatusCode.UNAVAILABLE,
    errors.Busy: grpc.StatusCode.RESOURCE_EXHAUSTED,
}

_ERROR_OF_CODE: dict[str, type[errors.DhtError]] = {
    cls.code.value: cls for cls in STATUS_OF if cls is not errors.StoreFull
}


def status_of(exc: errors.DhtError) -> grpc.StatusCode:
    for cls in type(exc).__mro__:
        if cls in STATUS_OF:
            return STATUS_OF[cls]
    return grpc.StatusCode.INTERNAL


def contact_to_pb(contact: Contact) -> dht_pb2.DhtContact:
    return dht_pb2.DhtContact(node_id=contact.node_id, address=contact.address)


def contact_from_pb(msg: dht_pb2.DhtContact) -> Contact:
    if len(msg.node_id) != ID_BYTES:
        raise errors.InvalidArgument(f"contact node id must be {ID_BYTES} bytes")
    if not msg.address or len(msg.address) > 256:
        raise errors.InvalidArgument("contact address missing or too long")
    return Contact(NodeId(bytes(msg.node_id)), msg.address)


def contacts_from_pb(msgs: object, limit: int = 64) -> list[Contact]:
    out: list[Contact] = []
    for msg in list(msgs)[:limit]:  # type: ignore[call-overload]
        try:
            out.append(contact_from_pb(msg))
        except errors.InvalidArgument:
            continue  # a peer's bad contact is ignored, not fatal
    return out


def key_from_pb(key: bytes) -> bytes:
    if len(key) != ID_BYTES:
        raise errors.InvalidArgument(f"key must be {ID_BYTES} bytes")
    return bytes(key)


def error_from_rpc(exc: grpc.aio.AioRpcError) -> errors.DhtError:
    """The dht error a failed call stands for (transport failures included)."""
    code = None
    retry_after_ms = ""
    for key, value in exc.trailing_metadata() or ():
        if key == ERROR_CODE_KEY:
            code = value
        elif key == RETRY_AFTER_KEY:
            retry_after_ms = str(value)
    cls = _ERROR_OF_CODE.get(str(code)) if code else None
    if cls is errors.Busy:
        return errors.Busy(exc.details() or "", _retry_after_s(retry_after_ms))
    if cls is not None and cls is not errors.ChunkCorrupt:
        return cls(exc.details() or "")
    if exc.code() == grpc.StatusCode.NOT_FOUND:
        return errors.NotFound(exc.details() or "")
    if exc.code() == grpc.StatusCode.DATA_LOSS:
        return errors.DigestMismatch(exc.details() or "")
    if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return errors.InvalidArgument(exc.details() or "")
    return errors.PeerUnavailable(f"{exc.code().name}: {exc.details()}")


def retry_after_metadata(exc: errors.DhtError) -> tuple[tuple[str, str], ...]:
    """The trailing metadata carrying a Busy error's hint (none without one)."""
    if isinstance(exc, errors.Busy) and exc.retry_after_s > 0:
        return ((RETRY_AFTER_KEY, str(max(1, round(exc.retry_after_s * 1000)))),)
    return ()


def _retry_after_s(text: str) -> float:
    """A peer's hint, bounded: malformed or negative reads as none."""
    try:
        ms = int(text)
    except ValueError:
        return 0.0
    return min(MAX_RETRY_AFTER_S, ms / 1000) if ms > 0 else 0.0
