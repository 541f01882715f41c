"""Every example of draft-ietf-suit-manifest-37 (Appendix B) decodes,
authenticates with the draft's key and re-encodes to identical bytes; the
unsigned variants are rejected; single flipped bytes are rejected."""

from __future__ import annotations

import hashlib

import pytest

from suit.auth import TrustAnchor
from suit.codec import decode, encode_envelope, encode_manifest
from suit.errors import ErrorCode
from suit.processor import DeviceContext, ImageInfo, Procedure, validate

from .conftest import CLASS, VECTORS, VENDOR, vector_index

INDEX = vector_index()
SIGNED = [v["file"] for v in INDEX if v["reference_check"]["ok"]]
CTX = DeviceContext(vendor_id=VENDOR, class_id=CLASS)
SAMPLE = bytes.fromhex("00112233445566778899aabbccddeeff0123456789abcdeffedcba9876543210")
SAMPLE_B = SAMPLE[16:] + SAMPLE[:16]  # the examples' second sample digest


def test_index_covers_every_file() -> None:
    files = {p.name for p in VECTORS.glob("*.cbor")}
    assert files == {v["file"] for v in INDEX}
    assert len(files) == 13


@pytest.mark.parametrize("entry", INDEX, ids=lambda e: e["file"])
def test_vector_decodes_and_reencodes(entry: dict) -> None:
    data = (VECTORS / entry["file"]).read_bytes()
    assert hashlib.sha256(data).hexdigest() == entry["sha256_file"]
    envelope, manifest = decode(data)
    assert encode_envelope(envelope) == data
    # The typed manifest re-encodes from its fields to the signed bytes.
    assert encode_manifest(manifest) == envelope.manifest_raw
    assert manifest.sequence_number == entry["sequence_number"]
    keys = [1, 2, 3] + [k for k in (4, 7, 8, 9, 16, 20, 23) if _has(manifest, k)]
    assert keys == entry["manifest_keys"]


def _has(manifest: object, key: int) -> bool:
    attr = {4: "reference_uri", 7: "validate", 8: "load", 9: "invoke", 16: "payload_fetch",
            20: "install", 23: "text"}[key]
    return getattr(manifest, attr) is not None


@pytest.mark.parametrize("entry", INDEX, ids=lambda e: e["file"])
def test_vector_authentication_as_index_says(entry: dict, spec_anchor: TrustAnchor) -> None:
    data = (VECTORS / entry["file"]).read_bytes()
    verdict = validate(data, [spec_anchor], CTX, Procedure.AUTHENTICATE)
    assert verdict.accepted is entry["reference_check"]["ok"], verdict.message
    if not verdict.accepted:
        assert verdict.code is ErrorCode.NO_AUTHENTICATION
    if entry["file"] == "example2-signed-severed.cbor":
        assert verdict.outcome is not None and verdict.outcome.severed == (20, 23)


def test_example2_full_has_verified_severable_members(spec_anchor: TrustAnchor) -> None:
    data = (VECTORS / "example2.cbor").read_bytes()
    verdict = validate(data, [spec_anchor], CTX, Procedure.AUTHENTICATE)
    assert verdict.accepted and verdict.outcome is not None
    assert verdict.outcome.severed == ()


@pytest.mark.parametrize(
    ("name", "fetchable", "slots"),
    [
        ("example1.cbor", {"http://example.com/file.bin": ImageInfo(SAMPLE, 34768)}, {}),
        ("example2.cbor", {"http://example.com/very/long/path/to/file/file.bin":
                           ImageInfo(SAMPLE, 34768)}, {}),
        ("example3.cbor", {"http://example.com/file2.bin": ImageInfo(SAMPLE_B, 76834)},
         {(b"\x00",): 1}),
    ],
)
def test_vector_update_procedure_runs(
    name: str, fetchable: dict, slots: dict, spec_anchor: TrustAnchor
) -> None:
    ctx = DeviceContext(vendor_id=VENDOR, class_id=CLASS, fetchable=fetchable, slots=slots)
    verdict = validate((VECTORS / name).read_bytes(), [spec_anchor], ctx, Procedure.UPDATE)
    assert verdict.accepted, verdict.message


def test_example3_other_slot_needs_other_payload(spec_anchor: TrustAnchor) -> None:
    fetchable = {"http://example.com/file2.bin": ImageInfo(SAMPLE_B, 76834)}
    ctx = DeviceContext(vendor_id=VENDOR, class_id=CLASS, fetchable=fetchable, slots={})
    verdict = validate((VECTORS / "example3.cbor").read_bytes(), [spec_anchor], ctx)
    assert verdict.code is ErrorCode.PAYLOAD_UNAVAILABLE


def test_example0_secure_boot_invokes(spec_anchor: TrustAnchor) -> None:
    ctx = DeviceContext(
        vendor_id=VENDOR, class_id=CLASS, images={(b"\x00",): ImageInfo(SAMPLE, 34768)}
    )
    verdict = validate(
        (VECTORS / "example0.cbor").read_bytes(), [spec_anchor], ctx, Procedure.INVOKE
    )
    assert verdict.accepted and verdict.outcome is not None
    assert verdict.outcome.invoked == ((b"\x00",),)


def _flip(data: bytes, offset: int, mask: int = 0x01) -> bytes:
    return data[:offset] + bytes([data[offset] ^ mask]) + data[offset + 1 :]


@pytest.mark.parametrize("name", SIGNED)
def test_flipped_byte_anywhere_is_rejected(name: str, spec_anchor: TrustAnchor) -> None:
    data = (VECTORS / name).read_bytes()
    for offset in range(len(data)):
        for mask in (0x01, 0x80):
            verdict = validate(_flip(data, offset, mask), [spec_anchor], CTX, Procedure.AUTHENTICATE)
            assert not verdict.accepted, f"flip {mask:#x} at {offset} accepted"


@pytest.mark.parametrize("name", ["example2.cbor", "example4.cbor"])
def test_flipped_byte_codes_per_region(name: str, spec_anchor: TrustAnchor) -> None:
    data = (VECTORS / name).read_bytes()
    envelope, _ = decode(data)
    auth = envelope.authentication
    assert auth is not None and auth.blocks[0].sign1 is not None
    regions = [
        (envelope.manifest_raw, ErrorCode.DIGEST_MISMATCH),
        (auth.digest.digest, ErrorCode.SIGNATURE_INVALID),
        (auth.blocks[0].sign1.signature, ErrorCode.SIGNATURE_INVALID),
    ]
    for key in (20, 23):
        member = envelope.member(key)
        if member is not None:
            regions.append((member, ErrorCode.SEVERABLE_DIGEST_MISMATCH))
    for part, code in regions:
        start = data.index(part)
        for offset in range(start, start + len(part)):
            verdict = validate(_flip(data, offset), [spec_anchor], CTX, Procedure.AUTHENTICATE)
            assert verdict.code is code, (offset, verdict.message)


def test_protected_header_flip_is_unsupported_or_invalid(spec_anchor: TrustAnchor) -> None:
    data = (VECTORS / "example0.cbor").read_bytes()
    start = data.index(bytes.fromhex("43a10126")) + 1
    for offset in range(start, start + 3):
        verdict = validate(_flip(data, offset), [spec_anchor], CTX, Procedure.AUTHENTICATE)
        assert verdict.code in (
            ErrorCode.UNSUPPORTED_ALGORITHM,
            ErrorCode.SIGNATURE_INVALID,
            ErrorCode.UNTRUSTED_SIGNER,
            ErrorCode.MALFORMED_CBOR,
        ), verdict.message
