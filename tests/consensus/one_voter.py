"""A one-voter consensus node wired as server.py wires it (RocksDB, the
node's key, snapshots, the gRPC server on 127.0.0.1:0, the trust-anchor
bootstrap), for the service tests of its APIs; everything stopped by the
caller's exit stack."""

from __future__ import annotations

import asyncio
import random
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

import grpc

from fleetsuit import grpcutil
from fleetsuit.metrics import new_registry
from services.consensus.anchors import bootstrap_anchors
from services.consensus.config import ConsensusConfig
from services.consensus.ledger.certify import NodeKey
from services.consensus.metrics import ConsensusMetrics
from services.consensus.runtime import ConsensusNode
from services.consensus.server import Deps, build_node, build_server
from services.consensus.storage import FileSnapshotStore, RocksStorage
from tests.support.wait import ready, wait_for

LEADER_S = 10.0


@dataclass
class Started:
    node: ConsensusNode
    metrics: ConsensusMetrics
    channel: grpc.aio.Channel
    port: int


async def start_one_voter(stack: AsyncExitStack, tmp_path: Path, args: list[str], cluster_id: str) -> Started:
    """Start the node ``args`` configure (its data under ``tmp_path``) and
    wait for it to lead; the anchors it was given are being bootstrapped."""
    config = ConsensusConfig.from_args(args, env={})
    storage = RocksStorage(str(tmp_path / "db"), node_id="n1", cluster_id=cluster_id)
    stack.callback(storage.close)
    metrics = ConsensusMetrics(new_registry("consensus", "n1"))
    deps = Deps(storage=storage, metrics=metrics, rng=random.Random(1),
                node_key=NodeKey.load_or_create(tmp_path / "node.key"),
                snapshots=FileSnapshotStore(tmp_path / "snap"))
    node, transport = build_node(config, deps)
    server, port = build_server(config, deps)
    await server.start()
    transport.start()
    node.start()
    stack.push_async_callback(transport.stop)
    stack.push_async_callback(node.stop)
    stack.push_async_callback(deps.close)
    stack.push_async_callback(server.stop, None)
    bootstrap = asyncio.create_task(bootstrap_anchors(node, config.anchors(), 2.0, retry_s=0.05))
    stack.callback(bootstrap.cancel)
    channel = grpcutil.insecure_channel(f"127.0.0.1:{port}")
    stack.push_async_callback(channel.close)
    await wait_for(lambda: ready(bool(node.leader_id)), LEADER_S, "a leader")
    return Started(node, metrics, channel, port)
