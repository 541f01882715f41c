"""``python -m services.dht`` and ``serve()``: a bad setting is refused at
start with exit code 2 naming it; a start that cannot happen is exit code 3;
logs come as JSON lines with a start line; /metrics has the build and a
counter per call; a stop on SIGTERM is exit code 0."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import pathlib
import socket
import subprocess
import sys
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from fleetsuit.cli import EXIT_CANNOT_START, EXIT_OK, EXIT_USAGE
from fleetsuit.v1 import dht_pb2
from services.dht.__main__ import main
from services.dht.config import ENV_PREFIX, DhtConfig
from services.dht.content import content_id_of
from services.dht.kv import RocksKeyValue
from services.dht.server import serve
from tests.dht.procs import DhtProcess, wait_until
from tests.support.ports import free_port
from tests.support.wait import wait_for

REPO = pathlib.Path(__file__).resolve().parents[2]


def run_dht(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The service as a process, with only the FLEETSUIT_DHT_ variables given."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    return subprocess.run(
        [sys.executable, "-m", "services.dht", *args],
        env={**clean, **env}, cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("env", "args", "named"),
    [
        ({"FLEETSUIT_DHT_K": "abc"}, [], "FLEETSUIT_DHT_K"),
        ({"FLEETSUIT_DHT_REPLICAS": "3"}, [], "FLEETSUIT_DHT_REPLICAS"),  # unknown
        ({}, ["--chunk-bytes", "1MiB"], "--chunk-bytes"),
        ({"FLEETSUIT_DHT_K": "30"}, [], "k must not exceed bucket_size"),
        ({"FLEETSUIT_DHT_LOG_FORMAT": "xml"}, [], "log_format"),
    ],
)
def test_a_bad_setting_is_refused_at_start_naming_it(
    tmp_path: pathlib.Path, env: dict[str, str], args: list[str], named: str
) -> None:
    result = run_dht(["--data", str(tmp_path), "--metrics-port", "-1", *args], env)
    assert result.returncode == EXIT_USAGE, result.stderr
    assert result.stderr.startswith("dht: ") and named in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1 and result.stdout == ""
    assert not list(tmp_path.iterdir())  # refused before anything was created


def test_main_reads_the_settings_of_the_environment_given(tmp_path: pathlib.Path) -> None:
    assert main(["--data", str(tmp_path)], {"FLEETSUIT_DHT_ALPHA": "zero"}) == EXIT_USAGE
    assert DhtConfig.from_args([], {"FLEETSUIT_DHT_DATA": "state/dht"}).store_path == (
        "state/dht/blobs"
    )


def test_a_taken_port_is_exit_code_3_naming_it(tmp_path: pathlib.Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = run_dht(
            ["--listen", f"127.0.0.1:{port}", "--metrics-port", "-1", "--data", str(tmp_path)],
            {},
        )
    assert result.returncode == EXIT_CANNOT_START, result.stderr
    assert "cannot start" in result.stderr and f"127.0.0.1:{port}" in result.stderr


def metric_samples(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


@pytest.mark.slow
def test_json_logs_a_start_line_metrics_and_a_clean_stop(tmp_path: pathlib.Path) -> None:
    node = DhtProcess("n0", tmp_path, ["--log-format", "json", "--log-level", "INFO"])
    node.start()
    try:
        wait_until(node.healthy, 30, "the node healthy")
        missing = content_id_of(b"nobody has this")
        with pytest.raises(grpc.RpcError) as refused:
            node.stub().Stat(dht_pb2.BlobStatRequest(content_id=missing), timeout=10)
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND
        samples = metric_samples(f"http://127.0.0.1:{node.metrics_port}/metrics")
        builds = [labels for (name, labels) in samples if name == "fleetsuit_build_info"]
        assert len(builds) == 1 and {("service", "dht"), ("node", "n0")} <= builds[0]
        stat_not_found = frozenset(
            {("grpc_service", "fleetsuit.v1.Dht"), ("grpc_method", "Stat"),
             ("grpc_code", "NOT_FOUND")}
        )  # fmt: skip
        assert samples[("fleetsuit_grpc_server_handled_total", stat_not_found)] == 1
        assert any(name.startswith("process_") for name, _labels in samples)
        assert node.stop() == EXIT_OK
    finally:
        node.kill()
    lines = (tmp_path / "n0.log").read_text().splitlines()
    assert [line for line in lines if not line.startswith("{")] == [
        f"DHT_LISTENING {node.address}"  # stdout, for supervisors; every log line is JSON
    ]
    records = [json.loads(line) for line in lines if line.startswith("{")]
    assert all(r["service"] == "dht" and r["node"] == "n0" for r in records)
    first = records[0]["msg"]
    assert first.startswith("starting dht version=") and f"grpc={node.address}" in first
    assert any("DHT_NOT_FOUND" in r["msg"] for r in records)  # the refusal, logged


def serve_config(tmp_path: pathlib.Path) -> DhtConfig:
    return DhtConfig(
        node_id="served", listen=f"127.0.0.1:{free_port()}", metrics_port=-1,
        data_dir=str(tmp_path / "data"),
    ).validate()  # fmt: skip


@pytest.mark.asyncio
async def test_serve_marks_health_serving_and_returns_0_after_a_clean_stop(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = serve_config(tmp_path)
    stop = asyncio.Event()
    caplog.set_level(logging.INFO, logger="fleetsuit.dht")
    task = asyncio.ensure_future(serve(config, shutdown=stop))
    try:
        async with grpc.aio.insecure_channel(config.listen) as channel:
            health = health_pb2_grpc.HealthStub(channel)

            async def serving() -> bool | None:
                reply = await health.Check(
                    health_pb2.HealthCheckRequest(service="fleetsuit.v1.Dht"), timeout=1
                )
                return True if reply.status == health_pb2.HealthCheckResponse.SERVING else None

            await wait_for(serving, 30, "the Dht service SERVING")
    finally:
        stop.set()
    assert await asyncio.wait_for(task, 30) == EXIT_OK
    ours = [r.getMessage() for r in caplog.records if r.name.startswith("fleetsuit.dht")]
    assert ours[0].startswith("starting dht version=")


@pytest.mark.asyncio
async def test_serve_returns_3_when_the_store_is_held_by_another(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = serve_config(tmp_path)
    os.makedirs(config.data_dir)
    held = RocksKeyValue(config.store_path)  # as a second process on the same data would
    try:
        with caplog.at_level(logging.ERROR, logger="fleetsuit.dht"):
            assert await serve(config, shutdown=asyncio.Event()) == EXIT_CANNOT_START
        assert any(
            "cannot start" in r.getMessage() and config.store_path in r.getMessage()
            for r in caplog.records
        )
    finally:
        held.close()
