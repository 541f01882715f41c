"""The dht gRPC server: the public Dht service and the DhtPeer service.

``build_server(config, deps)`` binds the port and wires the servicers to a
``DhtNode`` (tests use it with ``127.0.0.1:0``); ``serve(config, shutdown=)``
runs a whole process (store, metrics endpoint, health, repair loop and scrub,
the shared graceful stop) and returns its exit code. Servicers only raise
dht errors: the interceptor of ``fleetsuit.rpc`` turns them into gRPC
statuses through ``convert.ERRORS`` and counts every call.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health as grpc_health

from fleetsuit import __version__, rpc
from fleetsuit.cli import EXIT_CANNOT_START, EXIT_OK
from fleetsuit.logs import log_start
from fleetsuit.metrics import new_registry, serve_metrics
from fleetsuit.v1 import dht_pb2, dht_pb2_grpc
from services.dht import convert, wire
from services.dht.config import DhtConfig, is_wildcard, split_host_port
from services.dht.content import parse_id
from services.dht.kv import RocksKeyValue
from services.dht.metrics import DhtMetrics
from services.dht.node import DhtNode
from services.dht.routing import Contact, node_id_from_name
from services.dht.store import BlobStore
from services.dht.transport import GrpcTransport, PeerTransport

log = logging.getLogger("fleetsuit.dht.server")

SERVICE = "dht"
SERVICE_NAMES = ("fleetsuit.v1.Dht", "fleetsuit.v1.DhtPeer")


@dataclass
class DhtDeps:
    """What build_server needs; ``node`` and ``health`` are filled in by it.
    The gRPC metrics go on ``metrics.registry`` beside the dht's own."""

    store: BlobStore
    metrics: DhtMetrics
    rng: random.Random
    transport_factory: Callable[[Contact], PeerTransport] | None = None
    node: DhtNode | None = field(default=None)
    health: grpc_health.aio.HealthServicer | None = field(default=None)


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
        result = await self.node.put(pieces(), pin=False)
        if pin:
            await self.node.pin(parse_id(result.content_id))
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
        blob = parse_id(request.content_id)
        async for offset, data, total in self.node.read(blob, request.offset, request.length):
            await self.node.pace_upload(len(data))
            yield wire.encode_get_response(offset, data, total)

    async def Stat(
        self, request: dht_pb2.BlobStatRequest, context: grpc.aio.ServicerContext
    ) -> dht_pb2.BlobStatResponse:
        result = await self.node.stat(parse_id(request.content_id), request.lookup)
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
        await self.node.pin(parse_id(request.content_id))
        return dht_pb2.BlobPinResponse(pinned=True)

    async def Unpin(
        self, request: dht_pb2.BlobPinRequest, context: grpc.aio.ServicerContext
    ) -> dht_pb2.BlobPinResponse:
        await self.node.unpin(parse_id(request.content_id))
        return dht_pb2.BlobPinResponse(pinned=False)


class DhtPeerServicer(dht_pb2_grpc.DhtPeerServicer):
    def __init__(self, node: DhtNode) -> None:
        self.node = node

    async def Ping(
        self, request: dht_pb2.DhtPingRequest, context: grpc.aio.ServicerContext
    ) -> dht_pb2.DhtPingResponse:
        if request.HasField("sender"):
            self.node.observe(convert.contact_from_pb(request.sender))
        return dht_pb2.DhtPingResponse(responder=convert.contact_to_pb(self.node.contact))

    async def FindNode(
        self, request: dht_pb2.DhtFindNodeRequest, context: grpc.aio.ServicerContext
    ) -> dht_pb2.DhtFindNodeResponse:
        closer = self.node.handle_find_node(
            convert.contact_from_pb(request.sender), convert.key_from_pb(request.target)
        )
        return dht_pb2.DhtFindNodeResponse(closer=[convert.contact_to_pb(c) for c in closer])

    async def FindProviders(
        self, request: dht_pb2.DhtFindProvidersRequest, context: grpc.aio.ServicerContext
    ) -> dht_pb2.DhtFindProvidersResponse:
        providers, closer = self.node.handle_find_providers(
            convert.contact_from_pb(request.sender), convert.key_from_pb(request.key)
        )
        return dht_pb2.DhtFindProvidersResponse(
            providers=[convert.contact_to_pb(c) for c in providers],
            closer=[convert.contact_to_pb(c) for c in closer],
        )

    async def Store(
        self, request: dht_pb2.DhtStoreRequest, context: grpc.aio.ServicerContext
    ) -> dht_pb2.DhtStoreResponse:
        self.node.handle_store(
            convert.contact_from_pb(request.sender),
            convert.key_from_pb(request.key),
            convert.contact_from_pb(request.provider),
        )
        return dht_pb2.DhtStoreResponse()

    async def Replicate(
        self, request: dht_pb2.DhtReplicateRequest, context: grpc.aio.ServicerContext
    ) -> dht_pb2.DhtReplicateResponse:
        started = self.node.handle_replicate(
            convert.contact_from_pb(request.sender),
            convert.key_from_pb(request.key),
            convert.contacts_from_pb(request.sources),
        )
        return dht_pb2.DhtReplicateResponse(already_present=not started, started=started)

    async def FetchRoot(
        self, request: dht_pb2.DhtFetchRootRequest, context: grpc.aio.ServicerContext
    ) -> dht_pb2.DhtFetchRootResponse:
        root = self.node.handle_fetch_root(
            convert.contact_from_pb(request.sender), convert.key_from_pb(request.key)
        )
        return dht_pb2.DhtFetchRootResponse(root=root)

    async def Have(
        self, request: dht_pb2.DhtHaveRequest, context: grpc.aio.ServicerContext
    ) -> dht_pb2.DhtHaveResponse:
        complete, chunks = self.node.handle_have(
            convert.contact_from_pb(request.sender), convert.key_from_pb(request.key)
        )
        return dht_pb2.DhtHaveResponse(complete=complete, chunks=chunks)

    async def FetchChunk(
        self, request: dht_pb2.DhtFetchChunkRequest, context: grpc.aio.ServicerContext
    ) -> bytes:
        """The response leaves already encoded (``wire.encode_fetch_chunk_response``).
        A full node raises Busy, whose retry-after hint the interceptor sends."""
        data = await self.node.handle_fetch_chunk(
            convert.contact_from_pb(request.sender),
            convert.key_from_pb(request.key),
            request.index,
        )
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
    """A server bound to ``config.listen`` (port 0 picks one); not started.
    The node's contact is ``config.advertise`` when set, else the listen
    host with the bound port. A taken or malformed address raises OSError
    naming it."""
    split_host_port(config.listen, "listen")
    server, health_servicer = rpc.new_server(SERVICE, convert.ERRORS, deps.metrics.registry)
    port = rpc.bind(server, config.listen)
    # What every peer is told to dial (Ping, FindNode, provider records):
    # the advertised address, not a wildcard the server binds.
    contact = Contact(node_id_from_name(config.node_id), config.contact_address(port))
    if deps.transport_factory is not None:
        transport = deps.transport_factory(contact)
    else:
        transport = GrpcTransport(
            contact, config.rpc_timeout_ms / 1000, config.fetch_timeout_ms / 1000
        )
    node = DhtNode(config, contact, deps.store, transport, deps.metrics, deps.rng)
    _add_servicers(server, node)
    rpc.add_health_and_reflection(server, health_servicer, SERVICE_NAMES)
    deps.health = health_servicer
    deps.node = node
    return server, port


def open_store(config: DhtConfig) -> BlobStore:
    """The blob store under ``config.data_dir``; OSError when it cannot be opened
    (no permission, or another process holds the database)."""
    os.makedirs(config.data_dir, exist_ok=True)
    try:
        kv = RocksKeyValue(config.store_path)
    except Exception as exc:  # rocksdict raises a bare Exception ("IO error: lock ...")
        raise OSError(f"cannot open the blob store {config.store_path}: {exc}") from exc
    return BlobStore(kv, config.max_disk_bytes)


async def serve(config: DhtConfig, *, shutdown: asyncio.Event | None = None) -> int:
    """Run the dht service until ``shutdown`` is set (default: SIGINT or
    SIGTERM). Returns the exit code: 0 after a clean stop, 3 when it cannot
    start (the reason is logged)."""
    config.validate()
    log_start(
        log, service=SERVICE, version=__version__, cluster_id=config.cluster_id, node_id=config.node_id,
        data_dir=config.data_dir, addresses={"grpc": config.listen,
        **({"advertise": config.advertise} if config.advertise else {}), "metrics": config.metrics_address},
    )  # fmt: skip
    if not config.advertise and is_wildcard(split_host_port(config.listen, "listen")[0]):
        log.warning("listen %s is a wildcard address and advertise is not set: a node that joins "
                    "through this one is told to dial %s", config.listen, config.listen)
    stop = shutdown if shutdown is not None else rpc.shutdown_event()
    registry = new_registry(SERVICE, config.node_id)
    try:
        store = open_store(config)
    except OSError as exc:
        log.error("cannot start: %s", exc)
        return EXIT_CANNOT_START
    deps = DhtDeps(store=store, metrics=DhtMetrics(registry), rng=random.Random())
    try:
        try:
            server, port = build_server(config, deps)
            if config.metrics_port >= 0:
                metrics_port = serve_metrics(registry, config.metrics_host, config.metrics_port)
                log.info("metrics on %s:%d", config.metrics_host, metrics_port)
        except OSError as exc:
            log.error("cannot start: %s", exc)
            if deps.node is not None:
                await deps.node.close()
            return EXIT_CANNOT_START
        node, health_servicer = deps.node, deps.health
        assert node is not None and health_servicer is not None
        await server.start()
        await rpc.set_serving(health_servicer, SERVICE_NAMES)
        log.info("dht %s listening on port %d", config.node_id, port)
        # Machine-readable line for supervisors and tests that bind port 0.
        print(f"DHT_LISTENING {node.contact.address}", flush=True)
        maintenance = asyncio.ensure_future(node.maintenance(stop))
        scrub = asyncio.ensure_future(node.scrub(stop))
        await stop.wait()
        log.info("stopping")
        await rpc.graceful_stop(server, health_servicer, config.grace_ms / 1000)
        maintenance.cancel()
        scrub.cancel()
        await asyncio.gather(maintenance, scrub, return_exceptions=True)
        await node.close()
    finally:
        store.close()
    return EXIT_OK
