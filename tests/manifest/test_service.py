"""The manifest service over a real grpc.aio server on 127.0.0.1:0."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from cryptography.hazmat.primitives import serialization
from prometheus_client import CollectorRegistry

from fleetsuit import grpcutil
from fleetsuit.v1 import manifest_pb2 as pb
from fleetsuit.v1 import manifest_pb2_grpc as pb_grpc
from services.manifest.auth import TrustAnchor
from services.manifest.config import ManifestConfig
from services.manifest.convert import anchor_to_pb
from services.manifest.server import SERVICE_NAME, ManifestDeps, build_server

from .conftest import CLASS, PAYLOAD, URI, VECTORS, VENDOR, signed


@pytest_asyncio.fixture
async def service(es256_key: Any) -> AsyncIterator[tuple[pb_grpc.ManifestStub, CollectorRegistry]]:
    registry = CollectorRegistry()
    deps = ManifestDeps(registry=registry, anchors=(TrustAnchor(es256_key.public_key()),))
    server, port = build_server(ManifestConfig(listen="127.0.0.1:0"), deps)
    await server.start()
    await grpcutil.mark_serving(deps.health, [SERVICE_NAME])
    channel = grpcutil.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield pb_grpc.ManifestStub(channel), registry
    finally:
        await channel.close()
        await grpcutil.graceful_stop(server, deps.health, 0.5)


def _context(**kw: Any) -> pb.ManifestDeviceContext:
    return pb.ManifestDeviceContext(
        vendor_id=VENDOR,
        class_id=CLASS,
        fetchable=[pb.ManifestPayload(uri=URI, content=PAYLOAD)],
        **kw,
    )


@pytest.mark.asyncio
async def test_validate_accepts_and_rejects(service: Any, es256_key: Any) -> None:
    stub, registry = service
    data = signed(es256_key)
    ok = await stub.Validate(pb.ManifestValidateRequest(envelope=data, context=_context()))
    assert ok.accepted and ok.code == pb.MANIFEST_ERROR_OK and ok.sequence_number == 7
    rollback = await stub.Validate(
        pb.ManifestValidateRequest(
            envelope=data,
            context=_context(
                installed=[pb.ManifestInstalledSequence(
                    component=pb.ManifestComponentId(parts=[b"\x00"]), sequence_number=9)]
            ),
        )
    )
    assert not rollback.accepted and rollback.code == pb.MANIFEST_ERROR_ROLLBACK
    garbage = await stub.Validate(pb.ManifestValidateRequest(envelope=b"\xff"))
    assert garbage.code == pb.MANIFEST_ERROR_MALFORMED_CBOR
    accepted = registry.get_sample_value(
        "fleetsuit_manifest_validations_total", {"result": "accepted", "code": "OK"}
    )
    assert accepted == 1.0
    assert registry.get_sample_value("fleetsuit_manifest_validation_seconds_count") == 3.0


@pytest.mark.asyncio
async def test_validate_with_request_anchors(service: Any) -> None:
    stub, _ = service
    key = serialization.load_pem_public_key(
        (VECTORS / "spec_example_key_public.pem").read_bytes()
    )
    request = pb.ManifestValidateRequest(
        envelope=(VECTORS / "example2.cbor").read_bytes(),
        context=_context(),
        trust_anchors=[anchor_to_pb(TrustAnchor(key))],  # type: ignore[arg-type]
        procedure=pb.MANIFEST_PROCEDURE_AUTHENTICATE,
    )
    reply = await stub.Validate(request)
    assert reply.accepted, reply.message
    unsigned = await stub.Validate(
        pb.ManifestValidateRequest(
            envelope=(VECTORS / "example2-unsigned-severed.cbor").read_bytes(),
            trust_anchors=request.trust_anchors,
        )
    )
    assert unsigned.code == pb.MANIFEST_ERROR_NO_AUTHENTICATION


@pytest.mark.asyncio
async def test_inspect(service: Any) -> None:
    stub, _ = service
    reply = await stub.Inspect(
        pb.ManifestInspectRequest(envelope=(VECTORS / "example4.cbor").read_bytes())
    )
    assert reply.ok and reply.signed and reply.sequence_number == 4
    assert len(reply.components) == 3 and reply.diagnostic.startswith("107(")
    bad = await stub.Inspect(pb.ManifestInspectRequest(envelope=b"\x9b" + b"\xff" * 8))
    assert not bad.ok and bad.code == pb.MANIFEST_ERROR_MALFORMED_CBOR


def test_config_validate_names_field() -> None:
    from fleetsuit.envconfig import ConfigError

    with pytest.raises(ConfigError, match="listen"):
        ManifestConfig(listen="nonsense").validate()
    env = {"FLEETSUIT_MANIFEST_LISTEN": "127.0.0.1:0", "FLEETSUIT_NODE_ID": "n1"}
    config = ManifestConfig.from_env(env).validate()
    assert config.node_id == "n1" and config.listen == "127.0.0.1:0"


def test_anchor_cache_reuses_parsed_anchor_only_for_the_same_message() -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    from services.manifest.convert import AnchorCache

    cache = AnchorCache(max_entries=2)
    first, second, third = (
        anchor_to_pb(TrustAnchor(ec.generate_private_key(ec.SECP256R1()).public_key()))
        for _ in range(3)
    )
    a = cache.get(first)
    assert cache.get(pb.ManifestTrustAnchor.FromString(first.SerializeToString())) is a
    scoped = pb.ManifestTrustAnchor()
    scoped.CopyFrom(first)
    scoped.class_ids.append(b"\x01" * 16)
    b = cache.get(scoped)  # same key, narrower scope: a different anchor
    assert b is not a and b.class_ids == frozenset({b"\x01" * 16}) and a.class_ids is None
    cache.get(second)
    cache.get(third)
    assert len(cache) == 2  # bounded: the least recently used went first
    assert cache.get(first) is not a
