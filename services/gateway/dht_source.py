"""The payload cache's source: the node's dht, over its public gRPC API.

``Stat`` gives a blob's size (first from what the node knows, then with a
network lookup, so a payload held only by other nodes is found too); ``Get``
streams the bytes from an offset, which is what makes a cut fetch resumable.
The dht node fetches and verifies chunks it does not hold itself; the cache
still verifies the whole payload against its id.

Every failure of the call (the blob unknown, the node down, a busy or cut
stream) becomes :class:`~services.gateway.cache.BlobUnavailable`: to the
gateway they all mean "not now, ask again".
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator

import grpc

from fleetsuit.grpcutil import insecure_channel
from fleetsuit.release_model import CID_PREFIX
from fleetsuit.v1 import dht_pb2, dht_pb2_grpc
from services.gateway.cache import BlobUnavailable

DEFAULT_STAT_TIMEOUT_S = 10.0
# The empty payload's id: its size is known without asking (the dht cannot
# tell "size 0" from "size unknown" in a Stat answer).
EMPTY_CID = CID_PREFIX + hashlib.sha256(b"").hexdigest()


class DhtBlobSource:
    """A :class:`~services.gateway.cache.BlobSource` reading from the dht at
    ``endpoint`` (HOST:PORT of its public service)."""

    def __init__(self, endpoint: str, *, stat_timeout_s: float = DEFAULT_STAT_TIMEOUT_S) -> None:
        self.endpoint = endpoint
        self._stat_timeout_s = stat_timeout_s
        self._channel = insecure_channel(endpoint)
        self._stub = dht_pb2_grpc.DhtStub(self._channel)

    async def size(self, cid: str) -> int:
        if cid == EMPTY_CID:
            return 0
        for lookup in (False, True):
            try:
                reply = await self._stub.Stat(
                    dht_pb2.BlobStatRequest(content_id=cid, lookup=lookup),
                    timeout=self._stat_timeout_s,
                )
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.NOT_FOUND and not lookup:
                    continue  # not known on this node: ask the network
                raise _unavailable(cid, exc) from None
            if reply.size > 0:
                return int(reply.size)
        raise BlobUnavailable(f"{cid}: no node of the dht at {self.endpoint} knows its size")

    async def read(self, cid: str, offset: int) -> AsyncIterator[bytes]:
        call = self._stub.Get(dht_pb2.BlobGetRequest(content_id=cid, offset=offset))
        expected = offset
        try:
            async for msg in call:
                if msg.offset != expected:
                    raise BlobUnavailable(
                        f"{cid}: the dht sent bytes at {msg.offset}, expected {expected}"
                    )
                expected += len(msg.data)
                yield bytes(msg.data)
        except grpc.aio.AioRpcError as exc:
            raise _unavailable(cid, exc) from None
        finally:
            call.cancel()  # a no-op once the stream ended; stops it when the reader quits

    async def close(self) -> None:
        await self._channel.close()


def _unavailable(cid: str, exc: grpc.aio.AioRpcError) -> BlobUnavailable:
    code = exc.code()
    return BlobUnavailable(f"{cid}: dht {code.name if code else 'error'}: {exc.details()}")
