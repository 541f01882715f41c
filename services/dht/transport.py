"""The peer transport port and its gRPC implementation.

``PeerTransport`` is what the node runtime needs from the network. Every
method raises ``PeerUnavailable`` when the peer cannot be reached and a
``DhtError`` subclass when it answered with an error. ``GrpcTransport`` keeps
one channel per peer address (fast-reconnect options from fleetsuit.grpcutil).
"""

from __future__ import annotations

from typing import Protocol

import grpc

from fleetsuit import grpcutil
from fleetsuit.v1 import dht_pb2, dht_pb2_grpc
from services.dht import wire
from services.dht.convert import contact_from_pb, contact_to_pb, contacts_from_pb, error_from_rpc
from services.dht.routing import Contact


class PeerTransport(Protocol):
    async def ping(self, address: str) -> Contact: ...

    async def find_node(self, to: Contact, target: bytes) -> list[Contact]: ...

    async def find_providers(
        self, to: Contact, key: bytes
    ) -> tuple[list[Contact], list[Contact]]: ...

    async def store(self, to: Contact, key: bytes, provider: Contact) -> None: ...

    async def replicate(self, to: Contact, key: bytes, sources: list[Contact]) -> bool:
        """Ask ``to`` to hold ``key``; True when it started fetching."""
        ...

    async def fetch_root(self, to: Contact, key: bytes) -> bytes: ...

    async def fetch_chunk(self, to: Contact, key: bytes, index: int) -> bytes: ...

    async def have(self, to: Contact, key: bytes) -> tuple[bool, bytes]:
        """(complete, have-bitmap) of ``key`` at ``to`` (see fetch.encode_have)."""
        ...

    async def close(self) -> None: ...


class GrpcTransport:
    def __init__(self, self_contact: Contact, rpc_timeout_s: float, fetch_timeout_s: float) -> None:
        self._sender = contact_to_pb(self_contact)
        self._timeout = rpc_timeout_s
        self._fetch_timeout = fetch_timeout_s
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._stubs: dict[str, dht_pb2_grpc.DhtPeerStub] = {}
        self._fetch_chunk: dict[str, grpc.aio.UnaryUnaryMultiCallable] = {}

    def _stub(self, address: str) -> dht_pb2_grpc.DhtPeerStub:
        stub = self._stubs.get(address)
        if stub is None:
            channel = grpcutil.insecure_channel(address)
            self._channels[address] = channel
            stub = self._stubs[address] = dht_pb2_grpc.DhtPeerStub(channel)
            # The chunk reply is decoded by hand: no copy through upb (wire.py).
            self._fetch_chunk[address] = channel.unary_unary(
                "/fleetsuit.v1.DhtPeer/FetchChunk",
                request_serializer=dht_pb2.DhtFetchChunkRequest.SerializeToString,
                response_deserializer=wire.decode_fetch_chunk_response,
            )
        return stub

    async def ping(self, address: str) -> Contact:
        try:
            reply = await self._stub(address).Ping(
                dht_pb2.DhtPingRequest(sender=self._sender), timeout=self._timeout
            )
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc) from None
        return contact_from_pb(reply.responder)

    async def find_node(self, to: Contact, target: bytes) -> list[Contact]:
        try:
            reply = await self._stub(to.address).FindNode(
                dht_pb2.DhtFindNodeRequest(sender=self._sender, target=target),
                timeout=self._timeout,
            )
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc) from None
        return contacts_from_pb(reply.closer)

    async def find_providers(self, to: Contact, key: bytes) -> tuple[list[Contact], list[Contact]]:
        try:
            reply = await self._stub(to.address).FindProviders(
                dht_pb2.DhtFindProvidersRequest(sender=self._sender, key=key),
                timeout=self._timeout,
            )
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc) from None
        return contacts_from_pb(reply.providers), contacts_from_pb(reply.closer)

    async def store(self, to: Contact, key: bytes, provider: Contact) -> None:
        try:
            await self._stub(to.address).Store(
                dht_pb2.DhtStoreRequest(
                    sender=self._sender, key=key, provider=contact_to_pb(provider)
                ),
                timeout=self._timeout,
            )
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc) from None

    async def replicate(self, to: Contact, key: bytes, sources: list[Contact]) -> bool:
        try:
            reply = await self._stub(to.address).Replicate(
                dht_pb2.DhtReplicateRequest(
                    sender=self._sender, key=key, sources=[contact_to_pb(c) for c in sources]
                ),
                timeout=self._timeout,
            )
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc) from None
        return bool(reply.started)

    async def fetch_root(self, to: Contact, key: bytes) -> bytes:
        try:
            reply = await self._stub(to.address).FetchRoot(
                dht_pb2.DhtFetchRootRequest(sender=self._sender, key=key),
                timeout=self._timeout,
            )
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc) from None
        return bytes(reply.root)

    async def fetch_chunk(self, to: Contact, key: bytes, index: int) -> bytes:
        try:
            self._stub(to.address)
            data: bytes = await self._fetch_chunk[to.address](
                dht_pb2.DhtFetchChunkRequest(sender=self._sender, key=key, index=index),
                timeout=self._fetch_timeout,
            )
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc) from None
        return data

    async def have(self, to: Contact, key: bytes) -> tuple[bool, bytes]:
        try:
            reply = await self._stub(to.address).Have(
                dht_pb2.DhtHaveRequest(sender=self._sender, key=key), timeout=self._timeout
            )
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc) from None
        return bool(reply.complete), bytes(reply.chunks)

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()
        self._stubs.clear()
        self._fetch_chunk.clear()
