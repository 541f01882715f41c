"""``python -m services.manifest`` as a real process: it serves Validate and
the gRPC health check on the port it is given, logs a start line (text or
JSON lines), exports /metrics, and exits cleanly on SIGTERM (graceful
shutdown: health NOT_SERVING, stop with grace). Every process a test starts
is stopped by the test."""

from __future__ import annotations

import asyncio
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fleetsuit import grpcutil, rpc
from fleetsuit.v1 import manifest_pb2 as pb
from fleetsuit.v1 import manifest_pb2_grpc as pb_grpc
from services.manifest.server import SERVICE_NAME
from tests.support.ports import free_port

from .conftest import CLASS, PAYLOAD, URI, VENDOR, signed

REPO = Path(__file__).resolve().parents[2]
START_DEADLINE_S = 30.0
EXIT_DEADLINE_S = 30.0
START_LINE = re.compile(
    r"starting manifest version=\S+ cluster=(?P<cluster>\S+) node=(?P<node>\S+) data=- "
    r"grpc=(?P<grpc>\S+)(?: metrics=(?P<metrics>\S+))?$"
)


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


def _context() -> pb.ManifestDeviceContext:
    return pb.ManifestDeviceContext(
        vendor_id=VENDOR,
        class_id=CLASS,
        fetchable=[pb.ManifestPayload(uri=URI, content=PAYLOAD)],
    )


async def _validate(target: str, data: bytes) -> tuple[Any, tuple[grpc.StatusCode, str]]:
    """The verdict on ``data``, and the status and code that refuse garbage."""
    async with grpcutil.insecure_channel(target) as channel:
        stub = pb_grpc.ManifestStub(channel)
        ok = await stub.Validate(
            pb.ManifestValidateRequest(envelope=data, context=_context()), timeout=10.0
        )
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Validate(pb.ManifestValidateRequest(envelope=b"\xff"), timeout=10.0)
        trailers = dict(info.value.trailing_metadata() or ())
        return ok, (info.value.code(), str(trailers.get(rpc.ERROR_CODE_KEY)))


def _anchor_file(key: Any, tmp_path: Path) -> Path:
    anchor = tmp_path / "anchor.pem"
    anchor.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return anchor


def _start(*argv: str) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETSUIT_")}
    return subprocess.Popen(
        [sys.executable, "-m", "services.manifest", *argv],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=EXIT_DEADLINE_S)


def test_service_process_validates_and_stops_on_sigterm(es256_key: Any, tmp_path: Path) -> None:
    anchor = _anchor_file(es256_key, tmp_path)
    target = f"127.0.0.1:{free_port()}"
    proc = _start("--listen", target, "--metrics-port", "-1", "--trust-anchors", str(anchor))
    try:
        asyncio.run(_wait_serving(target, proc))
        ok, bad = asyncio.run(_validate(target, signed(es256_key)))
        assert ok.accepted and ok.code == pb.MANIFEST_ERROR_OK, ok.message
        assert ok.sequence_number == 7
        assert bad == (grpc.StatusCode.INVALID_ARGUMENT, "MALFORMED_CBOR")
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=EXIT_DEADLINE_S)
        assert proc.returncode == 0, err.decode(errors="replace")
        assert b"Traceback" not in err, err.decode(errors="replace")
        assert b"listening on port" in err
        assert out == b""  # the service logs; it prints nothing
        (start,) = [line for line in err.decode().splitlines() if "starting manifest" in line]
        match = START_LINE.search(start)
        assert match is not None and match["grpc"] == target and match["metrics"] is None
    finally:
        _stop(proc)


class _Lines:
    """A child's stderr, line by line, read on a thread; ``next`` waits for
    the next line up to a deadline."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._queue: queue.Queue[bytes | None] = queue.Queue()
        self.seen: list[str] = []
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def _pump(self, stream: IO[bytes]) -> None:
        for line in stream:
            self._queue.put(line)
        self._queue.put(None)

    def next(self, deadline: float) -> str:
        line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
        assert line is not None, "the service closed stderr: " + "".join(self.seen)
        self.seen.append(line.decode())
        return line.decode()

    def rest(self) -> Iterator[str]:
        """Every line left, once the child has exited."""
        self._thread.join(timeout=EXIT_DEADLINE_S)
        while not self._queue.empty():
            line = self._queue.get_nowait()
            if line is not None:
                self.seen.append(line.decode())
                yield line.decode()


def test_json_logs_start_line_and_metrics(es256_key: Any, tmp_path: Path) -> None:
    anchor = _anchor_file(es256_key, tmp_path)
    proc = _start(
        "--listen",
        "127.0.0.1:0",
        "--metrics-port",
        "0",
        "--log-format",
        "json",
        "--node-id",
        "n1",
        "--cluster-id",
        "c1",
        "--trust-anchors",
        str(anchor),
    )
    try:
        assert proc.stderr is not None
        lines = _Lines(proc.stderr)
        first = json.loads(lines.next(time.monotonic() + START_DEADLINE_S))
        match = START_LINE.search(first["msg"])
        assert match is not None, first
        assert (match["cluster"], match["node"]) == ("c1", "n1")
        target, metrics = match["grpc"], match["metrics"]
        assert target.startswith("127.0.0.1:") and not target.endswith(":0")
        assert metrics is not None and not metrics.endswith(":0")

        asyncio.run(_wait_serving(target, proc))
        ok, _ = asyncio.run(_validate(target, signed(es256_key)))
        assert ok.accepted, ok.message
        with urllib.request.urlopen(f"http://{metrics}/metrics", timeout=10) as reply:
            exported = reply.read().decode()
        build = [m for m in exported.splitlines() if m.startswith("fleetsuit_build_info{")]
        assert len(build) == 1 and 'service="manifest"' in build[0] and 'node="n1"' in build[0]
        assert build[0].endswith(" 1.0")
        handled = re.search(
            r'^fleetsuit_grpc_server_handled_total\{(?=[^}]*grpc_method="Validate")'
            r'(?=[^}]*grpc_code="OK")[^}]*\} 1\.0$',
            exported,
            re.M,
        )
        assert handled is not None, exported

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=EXIT_DEADLINE_S) == 0
        records = [first, *(json.loads(line) for line in lines.rest())]
        for record in records:
            assert {"time", "level", "service", "node", "msg"} <= record.keys(), record
            assert (record["service"], record["node"]) == ("manifest", "n1")
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record["time"])
        assert any("listening on port" in r["msg"] for r in records)
        assert any("stopping" in r["msg"] for r in records)
    finally:
        _stop(proc)


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--listen", "nonsense"], b"listen"),
        (["--log-format", "xml"], b"log_format"),
        (["--metrics-port", "lots"], b"--metrics-port"),
    ],
)
def test_service_process_rejects_bad_config(argv: list[str], named: bytes) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "services.manifest", *argv],
        cwd=REPO,
        capture_output=True,
        timeout=EXIT_DEADLINE_S,
    )
    assert proc.returncode == 2
    assert named in proc.stderr and b"Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_service_process_that_cannot_start_exits_3(tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "services.manifest",
            "--listen",
            "127.0.0.1:0",
            "--metrics-port",
            "-1",
            "--trust-anchors",
            str(missing),
        ],
        cwd=REPO,
        capture_output=True,
        timeout=EXIT_DEADLINE_S,
    )
    assert proc.returncode == 3
    assert str(missing).encode() in proc.stderr and b"Traceback" not in proc.stderr
