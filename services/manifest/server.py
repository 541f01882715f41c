"""The manifest gRPC service: Validate and Inspect over the SUIT library.

Owns the network edge only: protobuf in and out (``convert``), the service's
metrics, health and reflection, and the process's life (``serve``).
Validation itself is the library's pure ``suit.processor``; it is CPU-bound
and short (well under a millisecond), so it runs on the event loop. A
servicer method raises the library's errors and ``fleetsuit.rpc``'s
interceptor turns them into statuses (``convert.ERRORS``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health as grpc_health
from prometheus_client import CollectorRegistry, Counter, Histogram

from fleetsuit import __version__, rpc
from fleetsuit.cli import EXIT_CANNOT_START, EXIT_OK
from fleetsuit.logs import log_start
from fleetsuit.metrics import new_registry, serve_metrics
from fleetsuit.v1 import manifest_pb2 as pb
from fleetsuit.v1 import manifest_pb2_grpc as pb_grpc
from suit.auth import TrustAnchor
from suit.codec import decode
from suit.errors import ProcessingError, SuitError
from suit.keys import load_public_pem
from suit.limits import Limits
from suit.processor import accepted, process, rejected

from . import convert
from .config import ManifestConfig

SERVICE = "manifest"
SERVICE_NAME = "fleetsuit.v1.Manifest"

log = logging.getLogger(__name__)


class ManifestMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.validations = Counter(
            "fleetsuit_manifest_validations",
            "Envelope validations by result (accepted, rejected, refused) and error code",
            ["result", "code"],
            registry=registry,
        )
        self.latency = Histogram(
            "fleetsuit_manifest_validation_seconds",
            "Time to validate one envelope",
            buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25),
            registry=registry,
        )


@dataclass
class ManifestDeps:
    """What the service is given rather than makes (constructor injection)."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    anchors: tuple[TrustAnchor, ...] = ()  # trusted when a request names none
    # Set by build_server: the health servicer that serve() marks SERVING
    # and drains on shutdown.
    health: grpc_health.aio.HealthServicer | None = None


def load_anchors(paths: tuple[str, ...]) -> tuple[TrustAnchor, ...]:
    """The configured trust anchors; OSError or ValueError naming the file."""
    anchors = []
    for path in paths:
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise OSError(f"cannot read trust anchor {path}: {exc.strerror}") from None
        try:
            anchors.append(TrustAnchor(load_public_pem(data)))
        except ValueError as exc:
            raise ValueError(f"trust anchor {path}: {exc}") from None
    return tuple(anchors)


class ManifestServicer(pb_grpc.ManifestServicer):
    def __init__(self, config: ManifestConfig, deps: ManifestDeps) -> None:
        self.limits = Limits(max_envelope_bytes=config.max_envelope_bytes)
        self.anchors = deps.anchors
        self.metrics = ManifestMetrics(deps.registry)
        self.request_anchors = convert.AnchorCache(config.anchor_cache_entries)

    async def Validate(
        self, request: pb.ManifestValidateRequest, context: grpc.aio.ServicerContext
    ) -> pb.ManifestValidateResponse:
        """A verdict on an authentic envelope; a refusal (raised) for one
        that is not (``convert`` says which is which)."""
        start = time.perf_counter()
        result, code = "failed", "INTERNAL"  # unless it ends as below
        try:
            anchors = (
                tuple(self.request_anchors.get(a) for a in request.trust_anchors)
                if request.trust_anchors
                else self.anchors
            )
            try:
                verdict = accepted(
                    process(
                        request.envelope,
                        anchors,
                        convert.context_from_pb(request.context),
                        convert.procedure_from_pb(request.procedure),
                        self.limits,
                    )
                )
            except ProcessingError as exc:
                verdict = rejected(exc)
            result = "accepted" if verdict.accepted else "rejected"
            code = verdict.code.name
            return convert.verdict_to_pb(verdict)
        except SuitError as exc:
            result, code = "refused", exc.code.name
            raise
        finally:
            self.metrics.latency.observe(time.perf_counter() - start)
            self.metrics.validations.labels(result, code).inc()

    async def Inspect(
        self, request: pb.ManifestInspectRequest, context: grpc.aio.ServicerContext
    ) -> pb.ManifestInspectResponse:
        """The envelope decoded, as JSON and CBOR diagnostic notation (not
        verified); bytes that do not decode are refused."""
        envelope, manifest = decode(request.envelope, self.limits)
        return convert.inspection_to_pb(request.envelope, envelope, manifest)


def build_server(config: ManifestConfig, deps: ManifestDeps) -> tuple[grpc.aio.Server, int]:
    """A server bound to ``config.listen`` (not started) and its port; the
    health servicer is left in ``deps.health``. OSError if the address
    cannot be bound."""
    config.validate()
    server, health_servicer = rpc.new_server(SERVICE, convert.ERRORS, deps.registry)
    pb_grpc.add_ManifestServicer_to_server(ManifestServicer(config, deps), server)
    rpc.add_health_and_reflection(server, health_servicer, [SERVICE_NAME])
    deps.health = health_servicer
    port = rpc.bind(server, config.listen)
    return server, port


async def serve(config: ManifestConfig, *, shutdown: asyncio.Event | None = None) -> int:
    """Run until ``shutdown`` is set (default: SIGINT or SIGTERM); the exit
    code: 0 after a graceful stop, 3 when the service cannot start (a trust
    anchor that does not load, an address that cannot be bound)."""
    server: grpc.aio.Server | None = None
    try:
        deps = ManifestDeps(
            registry=new_registry(SERVICE, config.node_id),
            anchors=load_anchors(config.trust_anchors),
        )
        server, port = build_server(config, deps)
        addresses = {"grpc": f"{config.listen.rpartition(':')[0]}:{port}"}
        if config.metrics_enabled:
            metrics_port = serve_metrics(deps.registry, config.metrics_host, config.metrics_port)
            addresses["metrics"] = f"{config.metrics_host}:{metrics_port}"
    except (OSError, ValueError) as exc:
        log.error("manifest cannot start: %s", exc)
        if server is not None:
            await server.stop(None)  # bound, never started: free the port
        return EXIT_CANNOT_START
    log_start(
        log,
        service=SERVICE,
        version=__version__,
        cluster_id=config.cluster_id,
        node_id=config.node_id,
        data_dir="",
        addresses=addresses,
    )
    assert deps.health is not None  # set by build_server
    stop = shutdown if shutdown is not None else rpc.shutdown_event()
    await server.start()
    await rpc.set_serving(deps.health, [SERVICE_NAME])
    log.info(
        "manifest %s listening on port %d with %d trust anchors",
        config.node_id,
        port,
        len(deps.anchors),
    )
    await stop.wait()
    log.info("manifest %s stopping (grace %.1f s)", config.node_id, config.grace_s)
    await rpc.graceful_stop(server, deps.health, config.grace_s)
    return EXIT_OK
