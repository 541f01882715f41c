"""The device context's protobuf edge (``services/manifest/convert.py``):
a fetchable payload with an empty ``uri`` stands for the payload whatever
URI the manifest names (a caller that knows the payload by digest, as the
consensus node checking a release does); the digest and size are still
checked. Unit tests of the conversion, and the rule through a real
grpc.aio server on 127.0.0.1:0."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from fleetsuit import grpcutil, rpc
from fleetsuit.v1 import manifest_pb2 as pb
from fleetsuit.v1 import manifest_pb2_grpc as pb_grpc
from services.manifest.config import ManifestConfig
from services.manifest.convert import context_from_pb
from services.manifest.server import ManifestDeps, build_server
from suit.auth import TrustAnchor
from suit.device import ImageInfo

from .conftest import CLASS, PAYLOAD, URI, VENDOR, signed

DIGEST = hashlib.sha256(PAYLOAD).digest()


def _by_digest(digest: bytes = DIGEST, size: int = len(PAYLOAD), uri: str = "") -> pb.ManifestPayload:
    return pb.ManifestPayload(uri=uri, sha256=digest, size=size)


def test_an_empty_uri_answers_for_any_uri() -> None:
    fetchable = context_from_pb(pb.ManifestDeviceContext(fetchable=[_by_digest()])).fetchable
    for uri in (URI, "fleetsuit:sha256:00", ""):
        assert uri in fetchable
        assert fetchable[uri] == ImageInfo(DIGEST, len(PAYLOAD))
        assert fetchable.get(uri) == ImageInfo(DIGEST, len(PAYLOAD))


def test_a_named_uri_wins_over_the_empty_one() -> None:
    context = pb.ManifestDeviceContext(fetchable=[_by_digest(), pb.ManifestPayload(uri=URI, content=b"named")])
    fetchable = context_from_pb(context).fetchable
    assert fetchable[URI] == b"named"
    assert fetchable["https://elsewhere.example/fw.bin"] == ImageInfo(DIGEST, len(PAYLOAD))
    assert list(fetchable) == [URI] and len(fetchable) == 1


def test_without_an_empty_uri_only_named_uris_are_fetchable() -> None:
    fetchable = context_from_pb(pb.ManifestDeviceContext(fetchable=[_by_digest(uri=URI)])).fetchable
    assert URI in fetchable and "https://elsewhere.example/fw.bin" not in fetchable
    assert fetchable.get("https://elsewhere.example/fw.bin") is None


@pytest_asyncio.fixture
async def stub(es256_key: Any) -> AsyncIterator[pb_grpc.ManifestStub]:
    deps = ManifestDeps(anchors=(TrustAnchor(es256_key.public_key()),))
    server, port = build_server(ManifestConfig(listen="127.0.0.1:0", metrics_port=-1), deps)
    await server.start()
    channel = grpcutil.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield pb_grpc.ManifestStub(channel)
    finally:
        await channel.close()
        assert deps.health is not None
        await rpc.graceful_stop(server, deps.health, 0.5)


def _request(envelope: bytes, payload: pb.ManifestPayload) -> pb.ManifestValidateRequest:
    return pb.ManifestValidateRequest(
        envelope=envelope,
        context=pb.ManifestDeviceContext(vendor_id=VENDOR, class_id=CLASS, fetchable=[payload]),
        procedure=pb.MANIFEST_PROCEDURE_UPDATE,
    )


@pytest.mark.asyncio
async def test_a_payload_known_by_digest_validates_whatever_uri_the_manifest_names(
    stub: pb_grpc.ManifestStub, es256_key: Any
) -> None:
    envelope = signed(es256_key, component={"uri": "fleetsuit:sha256:" + DIGEST.hex()})
    reply = await stub.Validate(_request(envelope, _by_digest()))
    assert reply.accepted, reply.message
    assert (await stub.Validate(_request(signed(es256_key), _by_digest()))).accepted


@pytest.mark.asyncio
async def test_a_payload_known_by_digest_is_still_checked(stub: pb_grpc.ManifestStub, es256_key: Any) -> None:
    wrong_digest = await stub.Validate(_request(signed(es256_key), _by_digest(digest=bytes(32))))
    assert not wrong_digest.accepted and wrong_digest.code == pb.MANIFEST_ERROR_IMAGE_DIGEST_MISMATCH
    wrong_size = await stub.Validate(_request(signed(es256_key), _by_digest(size=len(PAYLOAD) + 1)))
    assert not wrong_size.accepted and wrong_size.code == pb.MANIFEST_ERROR_IMAGE_SIZE_MISMATCH
