"""Manifest validation throughput on one core, beside raw signature verify rates.

Measures, in one run: raw ``cryptography`` ES256 and Ed25519 verifies per
CPU second (the limit for this work), full in-process validations per CPU second
(decode, COSE verify, digest, rollback, the update procedure's command
sequences) for envelopes signed with each, and validations per second over
gRPC (in-process server on 127.0.0.1:0, one asyncio client; wall clock).
Each figure is the median of several rounds; raw and in-process rounds
alternate and the ratio is the median of per-round ratios. Writes
``results_dir/manifest.json``.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import pathlib
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

ROUNDS = 5
ROUND_S = 0.4
GRPC_CALLS = 1500
GRPC_IN_FLIGHT = 32
PAYLOAD = bytes(4096)
URI = "https://updates.example/fw.bin"
VENDOR = bytes.fromhex("fa6b4a53d5ad5fdfbe9de663e4d41ffe")
CLASS = bytes.fromhex("1492af1425695e48bf429b2d51f2ab45")


def _round(fn: Callable[[], object]) -> float:
    """Calls per second of CPU time over one round of about ROUND_S."""
    n = 0
    start = time.process_time()  # CPU time: other processes on a shared machine do not count
    deadline = start + ROUND_S
    while True:
        for _ in range(50):
            fn()
        n += 50
        now = time.process_time()
        if now >= deadline:
            return n / (now - start)


def _rates(raw: Callable[[], object], validate: Callable[[], object]) -> tuple[float, float, float]:
    """Median rates of both, and the median of their per-round ratios.

    The rounds alternate, so a slow spell on a shared machine hits both
    figures of a ratio alike instead of skewing one of them.
    """
    raw_rates, validate_rates = [], []
    for _ in range(ROUNDS):
        raw_rates.append(_round(raw))
        validate_rates.append(_round(validate))
    ratios = [v / r for r, v in zip(raw_rates, validate_rates, strict=True)]
    return statistics.median(raw_rates), statistics.median(validate_rates), statistics.median(ratios)


def _description() -> dict[str, Any]:
    return {
        "manifest-version": 1,
        "manifest-sequence-number": 42,
        "components": [
            {
                "install-id": ["00"],
                "vendor-id": VENDOR.hex(),
                "class-id": CLASS.hex(),
                "install-digest": {
                    "algorithm-id": "sha256",
                    "digest-bytes": hashlib.sha256(PAYLOAD).hexdigest(),
                },
                "install-size": len(PAYLOAD),
                "uri": URI,
                "bootable": True,
            }
        ],
    }


def _signature(data: bytes) -> bytes:
    from suit.codec import decode_envelope

    auth = decode_envelope(data).authentication
    assert auth is not None and auth.blocks[0].sign1 is not None
    return auth.blocks[0].sign1.signature


async def _grpc_rate(data: bytes, key: Any) -> float:
    from fleetsuit import grpcutil
    from fleetsuit.v1 import manifest_pb2 as pb
    from fleetsuit.v1 import manifest_pb2_grpc as pb_grpc
    from services.manifest.config import ManifestConfig
    from services.manifest.server import ManifestDeps, build_server
    from suit.auth import TrustAnchor

    deps = ManifestDeps(anchors=(TrustAnchor(key.public_key()),))
    server, port = build_server(ManifestConfig(listen="127.0.0.1:0"), deps)
    await server.start()
    channel = grpcutil.insecure_channel(f"127.0.0.1:{port}")
    stub = pb_grpc.ManifestStub(channel)
    request = pb.ManifestValidateRequest(
        envelope=data,
        context=pb.ManifestDeviceContext(
            vendor_id=VENDOR,
            class_id=CLASS,
            fetchable=[
                pb.ManifestPayload(
                    uri=URI, sha256=hashlib.sha256(PAYLOAD).digest(), size=len(PAYLOAD)
                )
            ],
        ),
    )
    try:
        reply = await stub.Validate(request)
        assert reply.accepted, reply.message
        rates = []
        for _ in range(3):
            start = time.perf_counter()
            for _ in range(GRPC_CALLS // GRPC_IN_FLIGHT):
                await asyncio.gather(*(stub.Validate(request) for _ in range(GRPC_IN_FLIGHT)))
            done = (GRPC_CALLS // GRPC_IN_FLIGHT) * GRPC_IN_FLIGHT
            rates.append(done / (time.perf_counter() - start))
        return statistics.median(rates)
    finally:
        await channel.close()
        await server.stop(0)


def main(results_dir: pathlib.Path) -> dict[str, Any]:
    from suit.auth import TrustAnchor
    from suit.build import build_envelope, sign_envelope
    from suit.processor import DeviceContext, image_info, validate

    unsigned = build_envelope(_description(), {})
    message = b"\x84jSignature1" + bytes(60)  # a Sig_structure-sized message
    context = DeviceContext(vendor_id=VENDOR, class_id=CLASS, fetchable={URI: image_info(PAYLOAD)})
    results: dict[str, Any] = {"rounds": ROUNDS, "envelope_bytes": {}}
    rows = []
    for name, key in (
        ("ES256", ec.generate_private_key(ec.SECP256R1())),
        ("Ed25519", ed25519.Ed25519PrivateKey.generate()),
    ):
        public = key.public_key()
        raw_verify: Callable[[], object]
        if isinstance(key, ec.EllipticCurvePrivateKey):
            sig = key.sign(message, ec.ECDSA(hashes.SHA256()))
            raw_verify = functools.partial(public.verify, sig, message, ec.ECDSA(hashes.SHA256()))
        else:
            sig = key.sign(message)
            raw_verify = functools.partial(public.verify, sig, message)
        data = sign_envelope(unsigned, key)
        anchors = [TrustAnchor(public)]
        verdict = validate(data, anchors, context)
        assert verdict.accepted, verdict.message
        # What is timed checks the signature: with one bit of it changed, the
        # same envelope is rejected.
        at = data.index(_signature(data)) + 10
        forged = data[:at] + bytes([data[at] ^ 1]) + data[at + 1 :]
        assert validate(forged, anchors, context).code.name == "SIGNATURE_INVALID"
        raw, in_process, ratio = _rates(
            raw_verify, functools.partial(validate, data, anchors, context)
        )
        over_grpc = asyncio.run(_grpc_rate(data, key))
        results["envelope_bytes"][name] = len(data)
        results[name] = {
            "raw_verify_per_s": round(raw),
            "validate_in_process_per_s": round(in_process),
            "validate_grpc_per_s": round(over_grpc),
            "in_process_vs_raw": round(ratio, 3),
        }
        rows.append((name, raw, in_process, ratio, over_grpc))
    print(f"{'alg':8} {'raw verify/s':>13} {'validate/s':>11} {'ratio':>6} {'gRPC/s':>8}")
    for name, raw, in_process, ratio, over_grpc in rows:
        print(f"{name:8} {raw:13.0f} {in_process:11.0f} {ratio:6.2f} {over_grpc:8.0f}")
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "manifest.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    out = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else pathlib.Path("bench/results")
    main(out)
