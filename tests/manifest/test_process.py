"""``python -m services.manifest`` as a real process: it serves Validate and
the gRPC health check on the port it is given, and exits cleanly on SIGTERM
(graceful shutdown: health NOT_SERVING, stop with grace)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fleetsuit import grpcutil
from fleetsuit.ports import free_port
from fleetsuit.v1 import manifest_pb2 as pb
from fleetsuit.v1 import manifest_pb2_grpc as pb_grpc
from services.manifest.server import SERVICE_NAME

from .conftest import CLASS, PAYLOAD, URI, VENDOR, signed

REPO = Path(__file__).resolve().parents[2]
START_DEADLINE_S = 30.0
EXIT_DEADLINE_S = 30.0


async def _wait_serving(target: str, proc: subprocess.Popen[bytes]) -> None:
    """Poll the health check until SERVING, the process dies, or the deadline."""
    deadline = time.monotonic() + START_DEADLINE_S
    async with grpcutil.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            assert proc.poll() is None, "the service exited during start-up"
            try:
                reply = await stub.Check(
                    health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=1.0
                )
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except Exception:  # not listening yet: retry until the deadline
                pass
            assert time.monotonic() < deadline, "the service did not become SERVING"
            await asyncio.sleep(0.05)  # poll interval, not a wait for an event


async def _validate(target: str, data: bytes) -> Any:
    async with grpcutil.insecure_channel(target) as channel:
        stub = pb_grpc.ManifestStub(channel)
        context = pb.ManifestDeviceContext(
            vendor_id=VENDOR,
            class_id=CLASS,
            fetchable=[pb.ManifestPayload(uri=URI, content=PAYLOAD)],
        )
        ok = await stub.Validate(
            pb.ManifestValidateRequest(envelope=data, context=context), timeout=10.0
        )
        bad = await stub.Validate(pb.ManifestValidateRequest(envelope=b"\xff"), timeout=10.0)
        return ok, bad


def test_service_process_validates_and_stops_on_sigterm(
    es256_key: Any, tmp_path: Path
) -> None:
    anchor = tmp_path / "anchor.pem"
    anchor.write_bytes(
        es256_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    target = f"127.0.0.1:{free_port()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETSUIT_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.manifest", "--listen", target,
         "--metrics-port", "-1", "--trust-anchor", str(anchor)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        asyncio.run(_wait_serving(target, proc))
        ok, bad = asyncio.run(_validate(target, signed(es256_key)))
        assert ok.accepted and ok.code == pb.MANIFEST_ERROR_OK, ok.message
        assert ok.sequence_number == 7
        assert not bad.accepted and bad.code == pb.MANIFEST_ERROR_MALFORMED_CBOR
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=EXIT_DEADLINE_S)
        assert proc.returncode == 0, err.decode(errors="replace")
        assert b"Traceback" not in err, err.decode(errors="replace")
        assert b"listening on port" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=EXIT_DEADLINE_S)


@pytest.mark.parametrize("argv", [["--listen", "nonsense"]])
def test_service_process_rejects_bad_config(argv: list[str]) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "services.manifest", *argv],
        cwd=REPO,
        capture_output=True,
        timeout=EXIT_DEADLINE_S,
    )
    assert proc.returncode == 2
    assert b"listen" in proc.stderr and b"Traceback" not in proc.stderr
