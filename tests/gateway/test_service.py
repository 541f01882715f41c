"""``python -m services.gateway`` and ``serve()``: the service starts with
no consensus node to talk to (it follows the ledger once one answers),
serves health, Info and the downloads' health, and stops with exit code 0
on SIGTERM; a bad setting is exit code 2 naming it, a taken port 3."""

from __future__ import annotations

import asyncio
import os
import pathlib
import signal
import socket
import subprocess
import sys
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fleetsuit.cli import EXIT_CANNOT_START, EXIT_OK, EXIT_USAGE
from fleetsuit.grpcutil import insecure_channel
from fleetsuit.v1 import gateway_pb2 as pb
from fleetsuit.v1 import gateway_pb2_grpc as pb_grpc
from services.gateway.config import ENV_PREFIX, GatewayConfig
from services.gateway.server import SERVICE_NAME, serve
from tests.support.ports import free_port
from tests.support.wait import wait_for, wait_until

REPO = pathlib.Path(__file__).resolve().parents[2]


def gateway_args(tmp_path: pathlib.Path, listen: str, http: str) -> list[str]:
    nowhere = f"127.0.0.1:{free_port()}"  # nothing listens there
    return [
        "--node-id", "n1", "--listen", listen, "--http-listen", http, "--metrics-port", "-1",
        "--data", str(tmp_path / "n1"), "--consensus-endpoint", nowhere, "--dht-endpoint", nowhere,
        "--cluster-id", "fs-test",
    ]  # fmt: skip


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}


def run_gateway(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.gateway", *args], env={**clean_env(), **env},
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def serving(address: str) -> bool:
    with grpc.insecure_channel(address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=1
        )
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def test_the_process_serves_health_and_stops_on_sigterm_with_0(tmp_path: pathlib.Path) -> None:
    listen, http = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    log = open(tmp_path / "gateway.log", "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.gateway", *gateway_args(tmp_path, listen, http)],
        env=clean_env(), cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        wait_until(lambda: serving(listen), 30, "the gateway SERVING")
        with urllib.request.urlopen(f"http://{http}/healthz", timeout=5) as reply:
            assert reply.status == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == EXIT_OK
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        log.close()
    lines = (tmp_path / "gateway.log").read_text().splitlines()
    start = next(line for line in lines if "starting gateway version=" in line)
    assert f"grpc={listen}" in start and f"http={http}" in start and "cluster=fs-test" in start
    assert (tmp_path / "n1" / "cache").is_dir()


def test_a_bad_setting_is_exit_code_2_naming_it(tmp_path: pathlib.Path) -> None:
    result = run_gateway(["--data", str(tmp_path)], {"FLEETSUIT_GATEWAY_HEARTBEAT_INTERVAL_MS": "0"})
    assert result.returncode == EXIT_USAGE, result.stderr
    assert result.stderr.startswith("gateway: ") and "heartbeat_interval_ms" in result.stderr
    assert not list(tmp_path.iterdir())  # refused before anything was made


def test_a_taken_port_is_exit_code_3_naming_it(tmp_path: pathlib.Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = f"127.0.0.1:{holder.getsockname()[1]}"
        result = run_gateway(gateway_args(tmp_path, f"127.0.0.1:{free_port()}", taken), {})
    assert result.returncode == EXIT_CANNOT_START, result.stderr
    assert "cannot start" in result.stderr


@pytest.mark.asyncio
async def test_serve_answers_info_and_returns_0_after_a_clean_stop(tmp_path: pathlib.Path) -> None:
    listen = f"127.0.0.1:{free_port()}"
    config = GatewayConfig.from_args(
        gateway_args(tmp_path, listen, "127.0.0.1:0"), env={}
    )
    stop = asyncio.Event()
    task = asyncio.ensure_future(serve(config, shutdown=stop))
    try:
        async with insecure_channel(listen) as channel:
            stub = pb_grpc.GatewayStub(channel)

            async def info() -> pb.GatewayInfo:
                answer: pb.GatewayInfo = await stub.Info(pb.GatewayInfoRequest(), timeout=1)
                return answer

            answer = await wait_for(info, 30, "Info")
            assert answer.self.gateway_id == "n1" and answer.self.grpc_address == listen
            assert answer.node_id == "n1" and answer.sessions == 0
            assert answer.self.http_address.startswith("127.0.0.1:")
            assert not answer.self.http_address.endswith(":0")  # the port bound
    finally:
        stop.set()
    assert await asyncio.wait_for(task, 30) == EXIT_OK
