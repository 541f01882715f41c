"""The consensus process: the node, its gRPC server (the RaftPeer service
between members, ``peer_api.py``; the public Ledger API, ``ledger_api.py``,
with its checks of a release before proposal, ``release_check.py``; the
Releases API, ``releases_api.py``; the Devices API, ``devices_api.py``),
health, reflection and metrics — the shape every fleetsuit service has —
and, while it runs, the bootstrap of the
configured trust anchors into the ledger (``anchors.py``).

``build_node(config, deps)`` wires the runtime to its ports;
``build_server(config, deps)`` binds and returns ``(server, port)`` so tests
can listen on port 0; ``serve(config, shutdown=...)`` runs until the event is
set (SIGINT/SIGTERM in ``__main__``), then hands leadership over and drains.

Health (``grpc.health.v1``) is SERVING only while the node can do its job:
it knows a leader (so it has a quorum behind it: a leader without one steps
down, Raft's check-quorum) and its loop has not stopped on a storage
failure. Probes and load balancers see NOT_SERVING otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2

from fleetsuit import __version__
from fleetsuit.logs import log_start
from fleetsuit.metrics import new_registry, serve_metrics
from fleetsuit.rpc import add_health_and_reflection, bind, graceful_stop, new_server, set_serving
from fleetsuit.settings import ConfigError
from fleetsuit.v1 import consensus_pb2 as pb
from fleetsuit.v1 import consensus_pb2_grpc as pb_grpc

from . import release_check
from .anchors import bootstrap_anchors
from .config import ConsensusConfig
from .convert import ERRORS
from .devices_api import DevicesServicer
from .ledger.certify import NodeKey
from .ledger_api import LedgerServicer
from .metrics import ConsensusMetrics
from .peer_api import RaftPeerServicer
from .release_check import ReleaseChecker
from .releases_api import ReleasesServicer
from .runtime import ConsensusNode
from .storage import FileSnapshotStore, NodeStorage, RocksStorage
from .synchronizer import advertised_address, plan_rejoin, rejoin
from .transport import GrpcTransport

log = logging.getLogger(__name__)

SERVICE_NAMES = (
    pb.DESCRIPTOR.services_by_name["Ledger"].full_name,
    pb.DESCRIPTOR.services_by_name["RaftPeer"].full_name,
    pb.DESCRIPTOR.services_by_name["Releases"].full_name,
    pb.DESCRIPTOR.services_by_name["Devices"].full_name,
)
HEALTH_INTERVAL_S = 0.1
LIVENESS = "liveness"  # a health service name that is SERVING while the process runs


@dataclass
class Deps:
    """What a consensus node is built from; ``serve`` makes the real ones."""

    storage: NodeStorage
    metrics: ConsensusMetrics
    rng: random.Random
    node_key: NodeKey | None = None
    snapshots: FileSnapshotStore | None = None
    # Filled in by build_node and build_server.
    node: ConsensusNode | None = field(default=None)
    transport: GrpcTransport | None = field(default=None)
    health: health.aio.HealthServicer | None = field(default=None)
    # Its channels to the node's manifest and dht are closed by ``close``.
    release_check: ReleaseChecker | None = field(default=None)

    async def close(self) -> None:
        """Close what build_server opened besides the server (the release
        checker's channels)."""
        if self.release_check is not None:
            await self.release_check.close()


def build_node(
    config: ConsensusConfig, deps: Deps, on_fatal: Callable[[BaseException], None] | None = None
) -> tuple[ConsensusNode, GrpcTransport]:
    """The node and its peer transport, from ``deps`` (and into it)."""
    addresses = config.peer_addresses
    addresses.setdefault(config.node_id, config.listen)
    transport = GrpcTransport(
        config.node_id, config.cluster_id, addresses, deps.metrics,
        unreachable_after_s=config.election_timeout_s,
    )
    node = ConsensusNode(
        config.runtime(), deps.storage, transport, deps.metrics, deps.rng,
        node_key=deps.node_key, snapshots=deps.snapshots, addresses=addresses, on_fatal=on_fatal,
    )
    deps.node, deps.transport = node, transport
    return node, transport


def build_server(config: ConsensusConfig, deps: Deps) -> tuple[grpc.aio.Server, int]:
    """The gRPC server of the node (``build_node`` made it, or made here),
    bound to ``config.listen``; its health servicer goes into ``deps.health``,
    its release checker (channels to the node's manifest and dht, closed by
    ``deps.close()``) into ``deps.release_check``."""
    node = deps.node if deps.node is not None else build_node(config, deps)[0]
    server, health_servicer = new_server("consensus", ERRORS, deps.metrics.registry)
    checker = release_check.connect(
        node, deps.metrics.release_checks, timeout_s=config.submit_timeout_s,
        manifest_endpoint=config.manifest_endpoint, dht_endpoint=config.dht_endpoint,
        skip=config.unsafe_skip_release_checks,
    )
    deps.release_check = checker
    pb_grpc.add_RaftPeerServicer_to_server(RaftPeerServicer(node, config.cluster_id), server)
    pb_grpc.add_LedgerServicer_to_server(LedgerServicer(node, config, release_check=checker, metrics=deps.metrics), server)
    pb_grpc.add_ReleasesServicer_to_server(ReleasesServicer(node, config, deps.metrics), server)
    pb_grpc.add_DevicesServicer_to_server(DevicesServicer(node, config, deps.metrics), server)
    add_health_and_reflection(server, health_servicer, SERVICE_NAMES)
    deps.health = health_servicer
    return server, bind(server, config.listen)


def can_serve(node: ConsensusNode) -> bool:
    """A node that knows a leader and whose loop still runs."""
    return node.fatal is None and bool(node.leader_id)


async def watch_health(node: ConsensusNode, servicer: health.aio.HealthServicer) -> None:
    """Keep grpc.health.v1 in step with ``can_serve``."""
    serving: bool | None = None
    while True:
        now = can_serve(node)
        if now != serving:
            await set_serving(servicer, SERVICE_NAMES, now)
            if serving is not None:
                log.info("health: %s", "SERVING" if now else "NOT_SERVING (no leader known)")
            serving = now
        await asyncio.sleep(HEALTH_INTERVAL_S)


async def serve(config: ConsensusConfig, *, shutdown: asyncio.Event | None = None) -> int:
    """Run the node until ``shutdown`` is set; returns a process exit code
    (2: a trust anchor file that no longer loads)."""
    log_start(
        log, service="consensus", version=__version__, cluster_id=config.cluster_id, node_id=config.node_id,
        data_dir=config.data_dir,
        addresses={"listen": config.listen,
                   "metrics": f"{config.metrics_address}:{config.metrics_port}" if config.metrics_port else "off",
                   **{name: address for name, address in config.services().items() if name != "consensus"}},
    )
    try:
        anchors = config.anchors()  # validated already; read again, as used
    except ConfigError as exc:
        log.error("bad configuration: %s", exc)
        return 2
    storage = RocksStorage(
        os.path.join(config.data_dir, "consensus"), node_id=config.node_id, cluster_id=config.cluster_id
    )
    metrics = ConsensusMetrics(new_registry("consensus", config.node_id))
    snapshots = FileSnapshotStore(
        os.path.join(config.data_dir, "snapshots"),
        max_snapshot_bytes=config.max_snapshot_bytes,
        max_chunk_bytes=max(config.snapshot_chunk_bytes, 4 * 1024 * 1024),
    )
    deps = Deps(
        storage=storage, metrics=metrics, rng=random.Random(),
        node_key=NodeKey.load_or_create(Path(config.key_path)), snapshots=snapshots,
    )
    rejoining = False
    advertise = advertised_address(config)
    if storage.is_blank():
        # Synchronizer: a wiped node of a running cluster comes back as a
        # learner and has itself removed and added again (see synchronizer.py).
        voters = await plan_rejoin(config)
        if voters is not None:
            log.info("data directory is empty but the cluster knows this node: rejoining")
            config = dataclasses.replace(config, join=True, peers=voters)
            rejoining = True
    stop = shutdown or asyncio.Event()
    fatal: list[BaseException] = []

    def on_fatal(exc: BaseException) -> None:
        fatal.append(exc)
        stop.set()

    node, transport = build_node(config, deps, on_fatal)
    server, port = build_server(config, deps)
    assert deps.health is not None
    if config.metrics_port:
        serve_metrics(metrics.registry, config.metrics_address, config.metrics_port)
    await server.start()
    await set_serving(deps.health, SERVICE_NAMES, False)
    # Liveness apart from readiness: the process answers, whatever its role.
    await deps.health.set(LIVENESS, health_pb2.HealthCheckResponse.SERVING)
    transport.start()
    node.start()
    tasks = [asyncio.create_task(watch_health(node, deps.health), name="health")]
    if anchors:
        tasks.append(asyncio.create_task(
            bootstrap_anchors(node, anchors, config.submit_timeout_s), name="trust-anchors"))
    if rejoining:
        tasks.append(asyncio.create_task(rejoin(config, advertise, node), name="rejoin"))
    log.info("consensus %s serving on port %d, voters %s", config.node_id, port,
             ",".join(f"{n}={a}" for n, a in config.voters))
    try:
        await stop.wait()
        if not fatal and await node.hand_over_leadership(timeout_s=config.election_timeout_s):
            log.info("leadership handed over before shutdown")
    finally:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await graceful_stop(server, deps.health, grace_s=1.0)
        await deps.close()
        await node.stop()
        await transport.stop()
        storage.close()
    if fatal:
        log.error("node %s stopped: %s", config.node_id, fatal[0])
        return 3
    return 0
