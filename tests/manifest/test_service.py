"""The manifest service over a real grpc.aio server on 127.0.0.1:0.

An authentic envelope gets a verdict (``accepted``, or the processing rule
that refused it); an envelope the service cannot judge is refused through
the shared interceptor: the status of ``convert.ERRORS`` and the stable code
in the ``fleetsuit-error-code`` trailing metadata."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import cbor2
import grpc
import pytest
import pytest_asyncio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from prometheus_client import CollectorRegistry

from fleetsuit import grpcutil, rpc
from fleetsuit.metrics import new_registry
from fleetsuit.settings import ConfigError
from fleetsuit.v1 import manifest_pb2 as pb
from fleetsuit.v1 import manifest_pb2_grpc as pb_grpc
from services.manifest import convert
from services.manifest.config import ManifestConfig
from services.manifest.convert import AnchorCache, anchor_to_pb
from services.manifest.server import SERVICE_NAME, ManifestDeps, build_server
from suit.auth import TrustAnchor
from suit.codec import decode_envelope, encode_envelope
from suit.errors import (
    AuthenticationError,
    DecodeError,
    ErrorCode,
    LimitExceeded,
    ProcessingError,
    RollbackRejected,
    SeverableError,
    StructureError,
    SuitError,
)
from suit.model import Envelope

from .conftest import CLASS, PAYLOAD, URI, VECTORS, VENDOR, signed

MAX_ENVELOPE_BYTES = 64 * 1024

Service = tuple[pb_grpc.ManifestStub, CollectorRegistry]


@pytest_asyncio.fixture
async def service(es256_key: Any) -> AsyncIterator[Service]:
    registry = new_registry("manifest", "n1")
    deps = ManifestDeps(registry=registry, anchors=(TrustAnchor(es256_key.public_key()),))
    config = ManifestConfig(listen="127.0.0.1:0", max_envelope_bytes=MAX_ENVELOPE_BYTES)
    server, port = build_server(config, deps)
    await server.start()
    assert deps.health is not None
    await rpc.set_serving(deps.health, [SERVICE_NAME])
    channel = grpcutil.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield pb_grpc.ManifestStub(channel), registry
    finally:
        await channel.close()
        await rpc.graceful_stop(server, deps.health, 0.5)


def _context(**kw: Any) -> pb.ManifestDeviceContext:
    fields: dict[str, Any] = {
        "vendor_id": VENDOR,
        "class_id": CLASS,
        "fetchable": [pb.ManifestPayload(uri=URI, content=PAYLOAD)],
    }
    fields.update(kw)
    return pb.ManifestDeviceContext(**fields)


async def _eventually(condition: Callable[[], bool], deadline_s: float = 10.0) -> None:
    """Wait until ``condition()`` holds, failing after ``deadline_s``."""
    deadline = time.monotonic() + deadline_s
    while not condition():
        assert time.monotonic() < deadline, "the condition did not hold in time"
        await asyncio.sleep(0.005)  # poll interval, not a wait for an event


async def _refusal(call: Any) -> tuple[grpc.StatusCode, str, str]:
    """(status, fleetsuit-error-code, details) of a call that must fail."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    error = info.value
    trailers = dict(error.trailing_metadata() or ())
    return error.code(), str(trailers.get(rpc.ERROR_CODE_KEY)), error.details() or ""


@pytest.mark.asyncio
async def test_validate_accepts_and_rejects(service: Service, es256_key: Any) -> None:
    stub, registry = service
    data = signed(es256_key)
    ok = await stub.Validate(pb.ManifestValidateRequest(envelope=data, context=_context()))
    assert ok.accepted and ok.code == pb.MANIFEST_ERROR_OK and ok.sequence_number == 7
    rollback = await stub.Validate(
        pb.ManifestValidateRequest(
            envelope=data,
            context=_context(
                installed=[
                    pb.ManifestInstalledSequence(
                        component=pb.ManifestComponentId(parts=[b"\x00"]), sequence_number=9
                    )
                ]
            ),
        )
    )
    assert not rollback.accepted and rollback.code == pb.MANIFEST_ERROR_ROLLBACK
    status, code, _ = await _refusal(stub.Validate(pb.ManifestValidateRequest(envelope=b"\xff")))
    assert status == grpc.StatusCode.INVALID_ARGUMENT and code == "MALFORMED_CBOR"
    accepted = registry.get_sample_value(
        "fleetsuit_manifest_validations_total", {"result": "accepted", "code": "OK"}
    )
    assert accepted == 1.0
    refused = registry.get_sample_value(
        "fleetsuit_manifest_validations_total", {"result": "refused", "code": "MALFORMED_CBOR"}
    )
    assert refused == 1.0
    assert registry.get_sample_value("fleetsuit_manifest_validation_seconds_count") == 3.0


@pytest.mark.asyncio
async def test_validate_with_request_anchors(service: Service) -> None:
    stub, _ = service
    key = serialization.load_pem_public_key((VECTORS / "spec_example_key_public.pem").read_bytes())
    request = pb.ManifestValidateRequest(
        envelope=(VECTORS / "example2.cbor").read_bytes(),
        context=_context(),
        trust_anchors=[anchor_to_pb(TrustAnchor(key))],  # type: ignore[arg-type]
        procedure=pb.MANIFEST_PROCEDURE_AUTHENTICATE,
    )
    reply = await stub.Validate(request)
    assert reply.accepted, reply.message
    status, code, _ = await _refusal(
        stub.Validate(
            pb.ManifestValidateRequest(
                envelope=(VECTORS / "example2-unsigned-severed.cbor").read_bytes(),
                trust_anchors=request.trust_anchors,
            )
        )
    )
    assert status == grpc.StatusCode.PERMISSION_DENIED and code == "NO_AUTHENTICATION"


@pytest.mark.asyncio
async def test_inspect(service: Service) -> None:
    stub, _ = service
    reply = await stub.Inspect(
        pb.ManifestInspectRequest(envelope=(VECTORS / "example4.cbor").read_bytes())
    )
    assert reply.ok and reply.signed and reply.sequence_number == 4
    assert len(reply.components) == 3 and reply.diagnostic.startswith("107(")
    status, code, details = await _refusal(
        stub.Inspect(pb.ManifestInspectRequest(envelope=b"\x9b" + b"\xff" * 8))
    )
    assert status == grpc.StatusCode.INVALID_ARGUMENT and code == "MALFORMED_CBOR"
    assert details.startswith("MALFORMED_CBOR: ")


# ------------------------------------------------------------ refusals


def _flip_signature(data: bytes) -> bytes:
    auth = decode_envelope(data).authentication
    assert auth is not None and auth.blocks[0].sign1 is not None
    signature = auth.blocks[0].sign1.signature
    at = data.index(signature) + 5
    return data[:at] + bytes([data[at] ^ 1]) + data[at + 1 :]


def _tamper_manifest(data: bytes) -> bytes:
    manifest = bytes(cbor2.loads(data).value[3])
    at = data.index(manifest) + len(manifest) - 1
    return data[:at] + bytes([data[at] ^ 1]) + data[at + 1 :]


def _tamper_severed_text(data: bytes) -> bytes:
    envelope = decode_envelope(data)
    members = tuple(
        (k, cbor2.dumps({"en": {1: "a different text"}}) if k == 23 else v)
        for k, v in envelope.members
    )
    return encode_envelope(
        Envelope(envelope.tagged, members, envelope.authentication, envelope.manifest_raw)
    )


# (name, envelope from the server's signing key, status, code)
REFUSED: list[tuple[str, Any, grpc.StatusCode, str]] = [
    ("malformed", lambda key: b"\xff", grpc.StatusCode.INVALID_ARGUMENT, "MALFORMED_CBOR"),
    ("truncated", lambda key: signed(key)[:-3], grpc.StatusCode.INVALID_ARGUMENT, "MALFORMED_CBOR"),
    (
        "too large",
        lambda key: b"\x00" * (MAX_ENVELOPE_BYTES + 1),
        grpc.StatusCode.INVALID_ARGUMENT,
        "TOO_LARGE",
    ),
    (
        "forged signature",
        lambda key: _flip_signature(signed(key)),
        grpc.StatusCode.PERMISSION_DENIED,
        "SIGNATURE_INVALID",
    ),
    (
        "tampered manifest",
        lambda key: _tamper_manifest(signed(key)),
        grpc.StatusCode.PERMISSION_DENIED,
        "DIGEST_MISMATCH",
    ),
    (
        "another key",
        lambda key: signed(ec.generate_private_key(ec.SECP256R1())),
        grpc.StatusCode.PERMISSION_DENIED,
        "SIGNATURE_INVALID",
    ),
    (
        "another key family",
        lambda key: signed(ed25519.Ed25519PrivateKey.generate()),
        grpc.StatusCode.PERMISSION_DENIED,
        "UNTRUSTED_SIGNER",
    ),
    (
        "unsigned",
        lambda key: (VECTORS / "example0-unsigned.cbor").read_bytes(),
        grpc.StatusCode.PERMISSION_DENIED,
        "NO_AUTHENTICATION",
    ),
    (
        "tampered severed member",
        lambda key: _tamper_severed_text(signed(key, severable=["text"])),
        grpc.StatusCode.INVALID_ARGUMENT,
        "SEVERABLE_DIGEST_MISMATCH",
    ),
]


@pytest.mark.asyncio
@pytest.mark.parametrize(("name", "make", "status", "code"), REFUSED, ids=[r[0] for r in REFUSED])
async def test_an_envelope_it_cannot_judge_is_refused_with_status_and_code(
    service: Service, es256_key: Any, name: str, make: Any, status: grpc.StatusCode, code: str
) -> None:
    stub, registry = service
    request = pb.ManifestValidateRequest(envelope=make(es256_key), context=_context())
    got_status, got_code, details = await _refusal(stub.Validate(request))
    assert (got_status, got_code) == (status, code), details
    assert details.startswith(f"{code}: ") and "\n" not in details
    # Counted once the interceptor's abort has returned, which may be just
    # after the client has the status.
    labels = {"grpc_service": SERVICE_NAME, "grpc_method": "Validate", "grpc_code": status.name}
    await _eventually(
        lambda: registry.get_sample_value("fleetsuit_grpc_server_handled_total", labels) == 1.0
    )


@pytest.mark.asyncio
async def test_a_request_anchor_that_is_not_a_key_is_refused(
    service: Service, es256_key: Any
) -> None:
    stub, _ = service
    request = pb.ManifestValidateRequest(
        envelope=signed(es256_key),
        context=_context(),
        trust_anchors=[pb.ManifestTrustAnchor(public_key_der=b"not a key")],
    )
    status, code, details = await _refusal(stub.Validate(request))
    assert (status, code) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_STRUCTURE")
    assert "trust anchor" in details


@pytest.mark.asyncio
async def test_processing_rules_answer_with_a_verdict_not_a_status(
    service: Service, es256_key: Any
) -> None:
    stub, registry = service
    data = signed(es256_key)
    cases = {
        pb.MANIFEST_ERROR_VENDOR_MISMATCH: _context(vendor_id=b"\x01" * 16),
        pb.MANIFEST_ERROR_CLASS_MISMATCH: _context(class_id=b"\x01" * 16),
        pb.MANIFEST_ERROR_PAYLOAD_UNAVAILABLE: pb.ManifestDeviceContext(
            vendor_id=VENDOR, class_id=CLASS
        ),
    }
    for code, context in cases.items():
        call = stub.Validate(pb.ManifestValidateRequest(envelope=data, context=context))
        reply = await call
        assert not reply.accepted and reply.code == code, reply.message
        assert await call.code() == grpc.StatusCode.OK
        trailers = dict(await call.trailing_metadata() or ())
        assert rpc.ERROR_CODE_KEY not in trailers
    rejected = registry.get_sample_value(
        "fleetsuit_manifest_validations_total", {"result": "rejected", "code": "VENDOR_MISMATCH"}
    )
    assert rejected == 1.0


def test_the_error_table_maps_each_error_class() -> None:
    expected = {
        DecodeError: grpc.StatusCode.INVALID_ARGUMENT,
        LimitExceeded: grpc.StatusCode.INVALID_ARGUMENT,
        StructureError: grpc.StatusCode.INVALID_ARGUMENT,
        SeverableError: grpc.StatusCode.INVALID_ARGUMENT,
        AuthenticationError: grpc.StatusCode.PERMISSION_DENIED,
        ProcessingError: grpc.StatusCode.FAILED_PRECONDITION,
        SuitError: grpc.StatusCode.INVALID_ARGUMENT,
    }
    for cls, status in expected.items():
        assert rpc.status_of(cls("x"), convert.ERRORS) == status, cls.__name__
    rollback = RollbackRejected(9, 7)
    assert rpc.status_of(rollback, convert.ERRORS) == grpc.StatusCode.FAILED_PRECONDITION
    assert rpc.error_code(rollback) == "ROLLBACK"


def test_error_codes_keep_their_names_and_proto_numbers() -> None:
    names = {n.removeprefix("MANIFEST_ERROR_"): v for n, v in pb.ManifestErrorCode.items()}
    assert {code.value: code.number for code in ErrorCode} == names
    for code in ErrorCode:
        assert code.value == code.name and convert.error_code_to_pb(code) == names[code.name]


# ------------------------------------------------------------ config, cache


def test_config_validate_names_field() -> None:
    with pytest.raises(ConfigError, match="listen"):
        ManifestConfig(listen="nonsense").validate()
    env = {"FLEETSUIT_MANIFEST_LISTEN": "127.0.0.1:0", "FLEETSUIT_NODE_ID": "n1"}
    config = ManifestConfig.from_env(env)
    config.validate()
    assert config.node_id == "n1" and config.listen == "127.0.0.1:0"


def test_config_flags_override_the_environment_and_bad_values_name_the_setting() -> None:
    env = {"FLEETSUIT_MANIFEST_TRUST_ANCHORS": "a.pem,b.pem", "FLEETSUIT_MANIFEST_GRACE_MS": "5"}
    config = ManifestConfig.from_args(["--grace-ms", "7", "--log-format", "json"], env)
    assert config.trust_anchors == ("a.pem", "b.pem") and config.grace_ms == 7
    assert config.log_format == "json" and config.grace_s == 0.007
    with pytest.raises(ConfigError, match="log_format"):
        ManifestConfig.from_args(["--log-format", "xml"], {})
    with pytest.raises(ConfigError, match="FLEETSUIT_MANIFEST_METRICS_PORT"):
        ManifestConfig.from_args([], {"FLEETSUIT_MANIFEST_METRICS_PORT": "many"})
    with pytest.raises(ConfigError, match="FLEETSUIT_MANIFEST_LISTEN_ADDRESS"):
        ManifestConfig.from_args([], {"FLEETSUIT_MANIFEST_LISTEN_ADDRESS": "x"})


def test_anchor_cache_reuses_parsed_anchor_only_for_the_same_message() -> None:
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
