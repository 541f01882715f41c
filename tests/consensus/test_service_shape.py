"""The consensus service in the shape every service has: health that tells
probes the truth, errors mapped by the one interceptor, the standard
metrics, a configuration that refuses what it does not know. Real gRPC
servers on 127.0.0.1:0."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import generate_latest

from fleetsuit.grpcutil import insecure_channel
from fleetsuit.metrics import new_registry
from fleetsuit.settings import ConfigError
from fleetsuit.v1 import consensus_pb2 as pb
from fleetsuit.v1 import consensus_pb2_grpc as pb_grpc
from services.consensus.config import ConsensusConfig
from services.consensus.ledger.certify import NodeKey
from services.consensus.metrics import ConsensusMetrics
from services.consensus.server import Deps, build_node, build_server, watch_health
from services.consensus.storage import FileSnapshotStore, RocksStorage
from services.consensus.transport import CLUSTER_HEADER


@asynccontextmanager
async def running(tmp_path: Path, peers: str) -> AsyncIterator[tuple[str, Deps]]:
    config = ConsensusConfig.from_args(
        ["--node-id", "n1", "--listen", "127.0.0.1:0", "--peers", peers, "--data", str(tmp_path),
         "--cluster-id", "shape"], env={},
    )
    storage = RocksStorage(str(tmp_path / "db"), node_id="n1", cluster_id="shape")
    deps = Deps(
        storage=storage, metrics=ConsensusMetrics(new_registry("consensus", "n1")), rng=random.Random(1),
        node_key=NodeKey.load_or_create(tmp_path / "node.key"), snapshots=FileSnapshotStore(tmp_path / "snap"),
    )
    node, transport = build_node(config, deps)
    server, port = build_server(config, deps)
    assert deps.health is not None
    await server.start()
    transport.start()
    node.start()
    watcher = asyncio.create_task(watch_health(node, deps.health))
    try:
        yield f"127.0.0.1:{port}", deps
    finally:
        watcher.cancel()
        await server.stop(None)
        await node.stop()
        await transport.stop()
        storage.close()


async def _health(address: str) -> int:
    async with insecure_channel(address) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
        return int(reply.status)


async def _eventually(probe: object, want: object, timeout_s: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    got = None
    while asyncio.get_running_loop().time() < deadline:
        got = await probe()  # type: ignore[operator]
        if got == want:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"still {got}, wanted {want}")


@pytest.mark.asyncio
async def test_health_is_not_serving_without_a_leader(tmp_path: Path) -> None:
    # One voter of three, the other two never started: no election can win.
    async with running(tmp_path, "n1=127.0.0.1:0,n2=127.0.0.1:1,n3=127.0.0.1:2") as (address, _):
        await asyncio.sleep(1.0)  # several election timeouts
        assert await _health(address) == health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.mark.asyncio
async def test_health_turns_serving_once_a_leader_is_known(tmp_path: Path) -> None:
    async with running(tmp_path, "n1=127.0.0.1:0") as (address, _):
        await _eventually(lambda: _health(address), health_pb2.HealthCheckResponse.SERVING)


@pytest.mark.asyncio
async def test_errors_carry_their_status_and_stable_code_and_are_counted(tmp_path: Path) -> None:
    async with running(tmp_path, "n1=127.0.0.1:0") as (address, deps):
        async with insecure_channel(address) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await pb_grpc.LedgerStub(channel).GetBlock(pb.GetBlockRequest(height=99), timeout=2)
            assert caught.value.code() == grpc.StatusCode.NOT_FOUND
            assert (caught.value.details() or "").startswith("BLOCK_NOT_FOUND: ")
            trailing = dict(caught.value.trailing_metadata() or ())
            assert trailing.get("fleetsuit-error-code") == "BLOCK_NOT_FOUND"
            # A peer that names another cluster is refused with its own code.
            with pytest.raises(grpc.aio.AioRpcError) as foreign:
                await pb_grpc.RaftPeerStub(channel).Ping(
                    pb.PeerAck(), timeout=2, metadata=((CLUSTER_HEADER, "another"),)
                )
            assert foreign.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert (foreign.value.details() or "").startswith("WRONG_CLUSTER: ")
        text = generate_latest(deps.metrics.registry).decode()
        assert 'fleetsuit_build_info{' in text and 'service="consensus"' in text
        assert "process_resident_memory_bytes" in text
        assert ('fleetsuit_grpc_server_handled_total{grpc_code="NOT_FOUND",grpc_method="GetBlock",'
                'grpc_service="fleetsuit.v1.Ledger"} 1.0') in text


def test_every_setting_has_help_a_default_and_a_variable() -> None:
    from fleetsuit.settings import document

    rows = document(ConsensusConfig, "FLEETSUIT_CONSENSUS_")
    assert len(rows) >= 20
    for flag, env, default, help_text in rows:
        assert flag.startswith("--") and env.startswith("FLEETSUIT_") and default and help_text, flag


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"FLEETSUIT_CONSENSUS_TICK_MS": "fast"}, "FLEETSUIT_CONSENSUS_TICK_MS"),
        ({"FLEETSUIT_CONSENSUS_TICKS_MS": "25"}, "FLEETSUIT_CONSENSUS_TICKS_MS"),
        ({"FLEETSUIT_CONSENSUS_LOG_FORMAT": "xml"}, "log_format"),
        ({"FLEETSUIT_CONSENSUS_ELECTION_TICKS": "1"}, "election_ticks"),
    ],
)
def test_a_bad_or_unknown_setting_is_refused_by_name(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        ConsensusConfig.from_args(["--node-id", "n1", "--data", "d"], env=env)


def test_derived_durations_are_computed_in_one_place() -> None:
    config = ConsensusConfig.from_args(["--node-id", "n1", "--data", "d", "--tick-ms", "10",
                                        "--election-ticks", "20"], env={})
    runtime = config.runtime()
    assert config.election_timeout_s == pytest.approx(0.2) == runtime.election_timeout_s
    assert runtime.stale_after_s == pytest.approx(0.4)
