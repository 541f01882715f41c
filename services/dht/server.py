"""The dht gRPC server: the public Dht service and the DhtPeer service.

``build_server(config, deps)`` binds the port and wires the servicers to a
``DhtNode`` (tests use it with ``127.0.0.1:0``); ``serve(config, shutdown=)``
runs a whole process: store, metrics endpoint, health, repair loop, and the
shared graceful stop. Errors map to gRPC status codes through
``services/dht/convert.py``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import grpc
from prometheus_client import CollectorRegistry

from fleetsuit import grpcutil
from fleetsuit.metrics import serve_metrics
from fleetsuit.v1 import dht_pb2, dht_pb2_grpc
from services.dht import convert, wire
from services.dht.config import DhtConfig, split_host_port
from services.dht.content import parse_id
from services.dht.errors import DhtError, InvalidArgument
from services.dht.kv import RocksKeyValue
from services.dht.metrics import DhtMetrics
from services.dht.node import DhtNode
from services.dht.routing import Contact, node_id_from_name
from services.dht.store import BlobStore
from services.dht.transport import GrpcTransport, PeerTransport

log = logging.getLogger("fleetsuit.dht.server")

SERVICE_NAMES = ("fleetsuit.v1.Dht", "fleetsuit.v1.DhtPeer")
T = TypeVar("T")


@dataclass
class DhtDeps:
    """What build_server needs; ``node`` and ``health`` are filled in by it."""

    store: BlobStore
    metrics: DhtMetrics
    rng: random.Random
    transport_factory: Callable[[Contact], PeerTransport] | None = None
    node: DhtNode | None = field(default=None)
    health: object | None = field(default=None)


async def _abort(context: grpc.aio.ServicerContext, exc: DhtError) -> None:
    context.set_trailing_metadata(
        ((convert.ERROR_CODE_KEY, exc.code.value), *convert.retry_after_metadata(exc))
    )
    await context.abort(convert.status_of(exc), str(exc))


class DhtServicer(dht_pb2_grpc.DhtServicer):
    def __init__(self, node: DhtNode) -> None:
        self.node = node

    async def Put(
        self,
        request_iterator: AsyncIterator[tuple[memoryview, bool]],
        context: grpc.aio.ServicerContext,
    ) -> dht_pb2.BlobPutResponse:
        """Requests arrive decoded by ``wire.decode_put_request`` (no payload copy)."""
        pin = False

        async def pieces() -> AsyncIterator[memoryview]:
            nonlocal pin
            first = True
            async for data, pin_flag in request_iterator:
                if first:
                    pin = pin_flag
                    first = False
                if len(data):
                    yield data

        # The pin flag rides on the first message, so it is known once the stream is read.
        try:
            result = await self.node.put(pieces(), pin=False)
            if pin:
                await self.node.pin(parse_id(result.content_id))
        except DhtError as exc:
            await _abort(context, exc)
            raise AssertionError("unreachable") from exc
        return dht_pb2.BlobPutResponse(
            content_id=result.content_id,
            size=result.size,
            chunk_count=result.chunk_count,
            replicas_requested=result.replicas_requested,
        )

    async def Get(
        self, request: dht_pb2.BlobGetRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        """Responses leave already encoded (``wire.encode_get_response``), paced
        by the node's upload limit when one is set."""
        try:
            blob = parse_id(request.content_id)
            async for offset, data, total in self.node.read(blob, request.offset, request.length):
                await self.node.pace_upload(len(data))
                yield wire.encode_get_response(offset, data, total)
        except DhtError as exc:
            await _abort(context, exc)

    async def Stat(
        self, request: dht_pb2.BlobStatRequest, context: grpc.aio.ServicerContext
    ) -> dht_pb2.BlobStatResponse:
        try:
            result = await self.node.stat(parse_id(request.content_id), request.lookup)
        except DhtError as exc:
            await _abort(context, exc)
            raise AssertionError("unreachable") from exc
        return dht_pb2.BlobStatResponse(
            content_id=result.content_id,
            size=result.size,
            local=result.local,
            pinned=result.pinned,
            chunk_count=result.chunk_count,
            chunk_bytes=result.chunk_bytes,
            holders=[convert.contact_to_pb(c) for c in result.holders],
        )

    async def Pin(
        self, request: dht_pb2.BlobPinRequest, context: grpc.aio.ServicerContext
    ) -> dht_pb2.BlobPinResponse:
        try:
            await self.node.pin(parse_id(request.content_id))
        except DhtError as exc:
            await _abort(context, exc)
        return dht_pb2.BlobPinResponse(pinned=True)

    async def Unpin(
        self, request: dht_pb2.BlobPinRequest, context: grpc.aio.ServicerContext
    ) -> dht_pb2.BlobPinResponse:
        try:
            await self.node.unpin(parse_id(request.content_id))
        except DhtError as exc:
            await _abort(context, exc)
        return dht_pb2.BlobPinResponse(pinned=False)


class DhtPeerServicer(dht_pb2_grpc.DhtPeerServicer):
    def __init__(self, node: DhtNode) -> None:
        self.node = node

    async def _run(self, context: grpc.aio.ServicerContext, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except DhtError as exc:
            await _abort(context, exc)
            raise AssertionError("unreachable") from exc

    async def Ping(
        self, request: dht_pb2.DhtPingRequest, context: grpc.aio.ServicerContext
    ) -> dht_pb2.DhtPingResponse:
        def run() -> dht_pb2.DhtPingResponse:
            if request.HasField("sender"):
                self.node.observe(convert.contact_from_pb(request.sender))
            return dht_pb2.DhtPingResponse(responder=convert.contact_to_pb(self.node.contact))

        return await self._run(context, run)

    async def FindNode(
        self, request: dht_pb2.DhtFindNodeRequest, context: grpc.aio.ServicerContext
    ) -> dht_pb2.DhtFindNodeResponse:
        def run() -> dht_pb2.DhtFindNodeResponse:
            closer = self.node.handle_find_node(
                convert.contact_from_pb(request.sender), convert.key_from_pb(request.target)
            )
            return dht_pb2.DhtFindNodeResponse(closer=[convert.contact_to_pb(c) for c in closer])

        return await self._run(context, run)

    async def FindProviders(
        self, request: dht_pb2.DhtFindProvidersRequest, context: grpc.aio.ServicerContext
    ) -> dht_pb2.DhtFindProvidersResponse:
        def run() -> dht_pb2.DhtFindProvidersResponse:
            providers, closer = self.node.handle_find_providers(
                convert.contact_from_pb(request.sender), convert.key_from_pb(request.key)
            )
            return dht_pb2.DhtFindProvidersResponse(
                providers=[convert.contact_to_pb(c) for c in providers],
                closer=[convert.contact_to_pb(c) for c in closer],
            )

        return await self._run(context, run)

    async def Store(
        self, request: dht_pb2.DhtStoreRequest, context: grpc.aio.ServicerContext
    ) -> dht_pb2.DhtStoreResponse:
        def run() -> dht_pb2.DhtStoreResponse:
            self.node.handle_store(
                convert.contact_from_pb(request.sender),
                convert.key_from_pb(request.key),
                convert.contact_from_pb(request.provider),
            )
            return dht_pb2.DhtStoreResponse()

        return await self._run(context, run)

    async def Replicate(
        self, request: dht_pb2.DhtReplicateRequest, context: grpc.aio.ServicerContext
    ) -> dht_pb2.DhtReplicateResponse:
        def run() -> dht_pb2.DhtReplicateResponse:
            started = self.node.handle_replicate(
                convert.contact_from_pb(request.sender),
                convert.key_from_pb(request.key),
                convert.contacts_from_pb(request.sources),
            )
            return dht_pb2.DhtReplicateResponse(already_present=not started, started=started)

        return await self._run(context, run)

    async def FetchRoot(
        self, request: dht_pb2.DhtFetchRootRequest, context: grpc.aio.ServicerContext
    ) -> dht_pb2.DhtFetchRootResponse:
        def run() -> dht_pb2.DhtFetchRootResponse:
            root = self.node.handle_fetch_root(
                convert.contact_from_pb(request.sender), convert.key_from_pb(request.key)
            )
            return dht_pb2.DhtFetchRootResponse(root=root)

        return await self._run(context, run)

    async def Have(
        self, request: dht_pb2.DhtHaveRequest, context: grpc.aio.ServicerContext
    ) -> dht_pb2.DhtHaveResponse:
        def run() -> dht_pb2.DhtHaveResponse:
            complete, chunks = self.node.handle_have(
                convert.contact_from_pb(request.sender), convert.key_from_pb(request.key)
            )
            return dht_pb2.DhtHaveResponse(complete=complete, chunks=chunks)

        return await self._run(context, run)

    async def FetchChunk(
        self, request: dht_pb2.DhtFetchChunkRequest, context: grpc.aio.ServicerContext
    ) -> bytes:
        """The response leaves already encoded (``wire.encode_fetch_chunk_response``)."""
        try:
            data = await self.node.handle_fetch_chunk(
                convert.contact_from_pb(request.sender),
                convert.key_from_pb(request.key),
                request.index,
            )
        except DhtError as exc:
            await _abort(context, exc)
            raise AssertionError("unreachable") from exc
        return wire.encode_fetch_chunk_response(data)


class _Capture:
    """Stands in for a server to collect a generated ``add_*_to_server``'s handlers."""

    def __init__(self) -> None:
        self.handlers: dict[str, grpc.RpcMethodHandler] = {}

    def add_generic_rpc_handlers(self, handlers: object) -> None:
        pass

    def add_registered_method_handlers(
        self, name: str, handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        self.handlers = dict(handlers)


def _register(
    server: grpc.aio.Server,
    name: str,
    add: Callable[[object, object], None],
    servicer: object,
    overrides: dict[str, grpc.RpcMethodHandler],
) -> None:
    """The generated handlers for ``name`` with the bulk methods replaced."""
    capture = _Capture()
    add(servicer, capture)
    handlers = {**capture.handlers, **overrides}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(name, handlers),))
    server.add_registered_method_handlers(name, handlers)


def _identity(data: bytes) -> bytes:
    return data


def _add_servicers(server: grpc.aio.Server, node: DhtNode) -> None:
    public = DhtServicer(node)
    peer = DhtPeerServicer(node)
    _register(
        server,
        "fleetsuit.v1.Dht",
        dht_pb2_grpc.add_DhtServicer_to_server,
        public,
        {
            "Put": grpc.stream_unary_rpc_method_handler(
                public.Put,
                request_deserializer=wire.decode_put_request,
                response_serializer=dht_pb2.BlobPutResponse.SerializeToString,
            ),
            "Get": grpc.unary_stream_rpc_method_handler(
                public.Get,
                request_deserializer=dht_pb2.BlobGetRequest.FromString,
                response_serializer=_identity,
            ),
        },
    )
    _register(
        server,
        "fleetsuit.v1.DhtPeer",
        dht_pb2_grpc.add_DhtPeerServicer_to_server,
        peer,
        {
            "FetchChunk": grpc.unary_unary_rpc_method_handler(
                peer.FetchChunk,
                request_deserializer=dht_pb2.DhtFetchChunkRequest.FromString,
                response_serializer=_identity,
            ),
        },
    )


def build_server(config: DhtConfig, deps: DhtDeps) -> tuple[grpc.aio.Server, int]:
    """A server bound to ``config.listen`` (port 0 picks one); not started."""
    host, _port = split_host_port(config.listen, "listen")
    server = grpcutil.new_server()
    port = server.add_insecure_port(config.listen)
    if port == 0:
        raise InvalidArgument(f"cannot listen on {config.listen}")
    contact = Contact(node_id_from_name(config.node_id), f"{host}:{port}")
    if deps.transport_factory is not None:
        transport = deps.transport_factory(contact)
    else:
        transport = GrpcTransport(
            contact, config.rpc_timeout_ms / 1000, config.fetch_timeout_ms / 1000
        )
    node = DhtNode(config, contact, deps.store, transport, deps.metrics, deps.rng)
    _add_servicers(server, node)
    deps.health = grpcutil.add_health_and_reflection(server, SERVICE_NAMES)
    deps.node = node
    return server, port


def open_store(config: DhtConfig) -> BlobStore:
    os.makedirs(config.data_dir, exist_ok=True)
    return BlobStore(RocksKeyValue(os.path.join(config.data_dir, "blobs")), config.max_disk_bytes)


async def serve(config: DhtConfig, *, shutdown: asyncio.Event | None = None) -> None:
    """Run the dht service until ``shutdown`` is set (default: SIGINT/SIGTERM)."""
    config.validate()
    stop = shutdown if shutdown is not None else grpcutil.shutdown_event()
    registry = CollectorRegistry()
    store = open_store(config)
    deps = DhtDeps(store=store, metrics=DhtMetrics(registry), rng=random.Random())
    try:
        server, port = build_server(config, deps)
        if config.metrics_port >= 0:
            metrics_port = serve_metrics(registry, config.metrics_host, config.metrics_port)
            log.info("metrics on %s:%d", config.metrics_host, metrics_port)
        await server.start()
        node = deps.node
        assert node is not None
        await grpcutil.mark_serving(deps.health, SERVICE_NAMES)
        log.info("dht %s listening on port %d", config.node_id, port)
        # Machine-readable line for supervisors and tests that bind port 0.
        print(f"DHT_LISTENING {node.contact.address}", flush=True)
        maintenance = asyncio.ensure_future(node.maintenance(stop))
        scrub = asyncio.ensure_future(node.scrub(stop))
        await stop.wait()
        await grpcutil.graceful_stop(server, deps.health, config.grace_ms / 1000)
        maintenance.cancel()
        scrub.cancel()
        await asyncio.gather(maintenance, scrub, return_exceptions=True)
        await node.close()
    finally:
        store.close()
