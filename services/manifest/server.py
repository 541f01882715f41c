"""The manifest gRPC service: Validate and Inspect over the SUIT library.

Owns the network edge only: protobuf in and out (via ``convert``), metrics,
health and reflection. Validation itself is the pure ``processor``; it is
CPU-bound and short (well under a millisecond), so it runs on the event loop.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from prometheus_client import CollectorRegistry, Counter, Histogram

from fleetsuit import grpcutil
from fleetsuit.metrics import serve_metrics
from fleetsuit.v1 import manifest_pb2 as pb
from fleetsuit.v1 import manifest_pb2_grpc as pb_grpc

from . import convert
from .auth import TrustAnchor
from .codec import decode
from .config import ManifestConfig
from .errors import ErrorCode, SuitError
from .limits import Limits
from .processor import Verdict, validate
from .show import diagnostic, envelope_json

SERVICE_NAME = "fleetsuit.v1.Manifest"


class ManifestMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.validations = Counter(
            "fleetsuit_manifest_validations",
            "Envelope validations by result and error code",
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
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    anchors: tuple[TrustAnchor, ...] = ()
    health: Any = None  # set by build_server: the health servicer to drain on shutdown


def load_anchors(paths: tuple[str, ...]) -> tuple[TrustAnchor, ...]:
    anchors = []
    for path in paths:
        key = load_pem_public_key(Path(path).read_bytes())
        anchors.append(TrustAnchor(key))  # type: ignore[arg-type]
    return tuple(anchors)


class ManifestServicer(pb_grpc.ManifestServicer):
    def __init__(self, config: ManifestConfig, deps: ManifestDeps) -> None:
        self.limits = Limits(max_envelope_bytes=config.max_envelope_bytes)
        self.anchors = deps.anchors
        self.metrics = ManifestMetrics(deps.registry)
        self.request_anchors = convert.AnchorCache()

    async def Validate(
        self, request: pb.ManifestValidateRequest, context: grpc.aio.ServicerContext
    ) -> pb.ManifestValidateResponse:
        start = time.perf_counter()
        try:
            anchors = (
                tuple(self.request_anchors.get(a) for a in request.trust_anchors)
                if request.trust_anchors
                else self.anchors
            )
            verdict = validate(
                request.envelope,
                anchors,
                convert.context_from_pb(request.context),
                convert.procedure_from_pb(request.procedure),
                self.limits,
            )
        except SuitError as exc:  # a bad trust anchor in the request
            verdict = Verdict(False, exc.code, exc.message)
        self.metrics.latency.observe(time.perf_counter() - start)
        self.metrics.validations.labels(
            "accepted" if verdict.accepted else "rejected", verdict.code.name
        ).inc()
        return convert.verdict_to_pb(verdict)

    async def Inspect(
        self, request: pb.ManifestInspectRequest, context: grpc.aio.ServicerContext
    ) -> pb.ManifestInspectResponse:
        try:
            envelope, manifest = decode(request.envelope, self.limits)
        except SuitError as exc:
            return pb.ManifestInspectResponse(
                ok=False, code=convert.error_code_to_pb(exc.code), message=exc.message  # type: ignore[arg-type]
            )
        auth = envelope.authentication
        return pb.ManifestInspectResponse(
            ok=True,
            code=convert.error_code_to_pb(ErrorCode.OK),  # type: ignore[arg-type]
            message="decoded (not verified)",
            sequence_number=manifest.sequence_number,
            components=[convert.component_to_pb(c) for c in manifest.common.components],
            json=json.dumps(envelope_json(envelope, manifest)),
            diagnostic=diagnostic(request.envelope),
            signed=auth is not None and bool(auth.blocks),
        )


def build_server(config: ManifestConfig, deps: ManifestDeps) -> tuple[grpc.aio.Server, int]:
    """A server bound to ``config.listen`` (not started) and its port."""
    config.validate()
    server = grpcutil.new_server()
    pb_grpc.add_ManifestServicer_to_server(  # type: ignore[no-untyped-call]
        ManifestServicer(config, deps), server
    )
    deps.health = grpcutil.add_health_and_reflection(server, [SERVICE_NAME])
    port = server.add_insecure_port(config.listen)
    if port == 0:
        raise OSError(f"cannot listen on {config.listen}")
    return server, port


async def serve(config: ManifestConfig, *, shutdown: asyncio.Event | None = None) -> None:
    """Run until ``shutdown`` is set (default: SIGINT or SIGTERM)."""
    deps = ManifestDeps(anchors=load_anchors(config.trust_anchor_paths))
    server, port = build_server(config, deps)
    health = deps.health
    if config.metrics_port >= 0:
        serve_metrics(deps.registry, config.metrics_host, config.metrics_port)
    await server.start()
    await grpcutil.mark_serving(health, [SERVICE_NAME])
    print(f"manifest {config.node_id} listening on port {port}", flush=True)
    stop = shutdown if shutdown is not None else grpcutil.shutdown_event()
    await stop.wait()
    await grpcutil.graceful_stop(server, health, config.grace_ms / 1000)
