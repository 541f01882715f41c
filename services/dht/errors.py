"""The dht's exception tree and its stable error codes.

``DhtError`` is the base, under fleetsuit's ``ServiceError``; each error
carries a stable ``code`` (``DHT_NOT_FOUND``, ...) that clients branch on and
that never changes once published. Errors about data a peer or client sent
(``BadRemoteData``) are kept apart from transport failures (``PeerUnavailable``)
so callers can tell "this peer lied" from "this peer is gone". The mapping to
gRPC status codes lives in ``services/dht/convert.py`` (applied by the
interceptor of ``fleetsuit.rpc``); this module imports no gRPC, so the
sans-I/O cores raise these errors.
"""

from __future__ import annotations

import enum

from fleetsuit.errors import ServiceError

# Trailing metadata of a Busy refusal: when to ask again (absent: no estimate).
RETRY_AFTER_KEY = "fleetsuit-retry-after-ms"


class ErrorCode(enum.StrEnum):
    INVALID_CONTENT_ID = "DHT_INVALID_CONTENT_ID"
    INVALID_ROOT = "DHT_INVALID_ROOT"
    NOT_FOUND = "DHT_NOT_FOUND"
    STORE_FULL = "DHT_STORE_FULL"
    BLOB_TOO_LARGE = "DHT_BLOB_TOO_LARGE"
    CHUNK_CORRUPT = "DHT_CHUNK_CORRUPT"
    DIGEST_MISMATCH = "DHT_DIGEST_MISMATCH"
    PEER_UNAVAILABLE = "DHT_PEER_UNAVAILABLE"
    INVALID_ARGUMENT = "DHT_INVALID_ARGUMENT"
    BUSY = "DHT_BUSY"


class DhtError(ServiceError):
    code: ErrorCode = ErrorCode.INVALID_ARGUMENT


class InvalidArgument(DhtError):
    code = ErrorCode.INVALID_ARGUMENT


class InvalidContentId(DhtError):
    code = ErrorCode.INVALID_CONTENT_ID


class NotFound(DhtError):
    code = ErrorCode.NOT_FOUND


class StoreFull(DhtError):
    """Writing would exceed the disk-use limit even after evicting unpinned blobs."""

    code = ErrorCode.STORE_FULL

    def __init__(self, needed: int, used: int, limit: int) -> None:
        super().__init__(
            f"store full: need {needed} more bytes, {used} of {limit} used "
            "(pinned or in-use blobs cannot be evicted)"
        )
        self.needed = needed
        self.used = used
        self.limit = limit


class BlobTooLarge(DhtError):
    code = ErrorCode.BLOB_TOO_LARGE


class BadRemoteData(DhtError):
    """Data that does not match the id it was sent under."""


class InvalidRoot(BadRemoteData):
    code = ErrorCode.INVALID_ROOT


class ChunkCorrupt(BadRemoteData):
    """A chunk's bytes do not hash to its id (on disk or on the wire)."""

    code = ErrorCode.CHUNK_CORRUPT

    def __init__(self, blob: bytes, index: int, where: str) -> None:
        super().__init__(f"chunk {index} of sha256:{blob.hex()} is corrupt ({where})")
        self.blob = blob
        self.index = index


class DigestMismatch(BadRemoteData):
    code = ErrorCode.DIGEST_MISMATCH


class PeerUnavailable(DhtError):
    code = ErrorCode.PEER_UNAVAILABLE


class Busy(DhtError):
    """A peer already serves ``max_uploads`` chunks; ask another holder.

    ``retry_after_s`` is the peer's estimate of when it has a slot again (0:
    no estimate); a rate-limited peer knows it from its upload backlog."""

    code = ErrorCode.BUSY

    def __init__(self, message: str = "", retry_after_s: float = 0.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        """The hint, in whole milliseconds, sent beside the error's code."""
        if self.retry_after_s > 0:
            return ((RETRY_AFTER_KEY, str(max(1, round(self.retry_after_s * 1000)))),)
        return ()
