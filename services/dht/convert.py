"""Translation between the dht's domain types and fleetsuit.v1 protobuf.

Also the one table mapping dht errors to gRPC status codes (``ERRORS``,
applied by ``fleetsuit.rpc``'s interceptor, which sends the stable error code
in the trailing metadata key ``fleetsuit-error-code``), and the reverse: the
dht error a failed peer call stands for.
"""

from __future__ import annotations

import grpc

from fleetsuit.rpc import ERROR_CODE_KEY as ERROR_CODE_KEY  # re-exported for clients
from fleetsuit.rpc import ErrorTable
from fleetsuit.v1 import dht_pb2
from services.dht import errors
from services.dht.routing import ID_BYTES, Contact, NodeId

# Busy's retry_after_s in whole milliseconds; absent from older peers (read as 0).
RETRY_AFTER_KEY = errors.RETRY_AFTER_KEY
MAX_RETRY_AFTER_S = 10.0  # a peer's hint is capped: it must not park a fetch

ERRORS: ErrorTable = {
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

# Codes whose error can be rebuilt from a message alone (StoreFull and
# ChunkCorrupt carry fields a peer's answer does not).
_ERROR_OF_CODE: dict[str, type[errors.DhtError]] = {
    cls.code: cls
    for cls in ERRORS
    if issubclass(cls, errors.DhtError) and cls not in (errors.StoreFull, errors.ChunkCorrupt)
}


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
    code = ""
    retry_after_ms = ""
    for key, value in exc.trailing_metadata() or ():
        if key == ERROR_CODE_KEY:
            code = str(value)
        elif key == RETRY_AFTER_KEY:
            retry_after_ms = str(value)
    details = _message(exc.details() or "", code)
    cls = _ERROR_OF_CODE.get(code)
    if cls is errors.Busy:
        return errors.Busy(details, _retry_after_s(retry_after_ms))
    if cls is not None:
        return cls(details)
    if exc.code() == grpc.StatusCode.NOT_FOUND:
        return errors.NotFound(details)
    if exc.code() == grpc.StatusCode.DATA_LOSS:
        return errors.DigestMismatch(details)
    if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return errors.InvalidArgument(details)
    return errors.PeerUnavailable(f"{exc.code().name}: {details}")


def _message(details: str, code: str) -> str:
    """The peer's message without the ``CODE: `` the interceptor put before
    it, so an error passed on from node to node is not prefixed twice."""
    prefix = f"{code}: "
    return details[len(prefix) :] if code and details.startswith(prefix) else details


def _retry_after_s(text: str) -> float:
    """A peer's hint, bounded: malformed or negative reads as none."""
    try:
        ms = int(text)
    except ValueError:
        return 0.0
    return min(MAX_RETRY_AFTER_S, ms / 1000) if ms > 0 else 0.0
