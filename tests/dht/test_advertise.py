"""The contact a dht node hands its peers (``advertise``) and /metrics on
every interface (``metrics_host = 0.0.0.0``), as a container needs them.

A node in a pod listens on 0.0.0.0, which no peer can dial: it advertises
the address peers reach it at, and every peer (the one that seeded through
it and the ones that only heard of it) records and dials that address.
Real gRPC servers on loopback."""

from __future__ import annotations

import pathlib
import random

import grpc
import pytest
from prometheus_client import CollectorRegistry

from fleetsuit.settings import ConfigError
from fleetsuit.v1 import dht_pb2, dht_pb2_grpc
from services.dht.config import DhtConfig, is_wildcard
from services.dht.kv import MemoryKeyValue
from services.dht.metrics import DhtMetrics
from services.dht.node import DhtNode
from services.dht.server import DhtDeps, build_server, serve
from services.dht.store import BlobStore
from tests.dht.test_service import CHUNK, payload, put
from tests.support.metrics import answers_elsewhere
from tests.support.ports import free_port
from tests.support.wait import wait_for

DISK = 64 * 1024 * 1024


# ---------------------------------------------------------------- settings


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        # Peers would be told to dial 0.0.0.0 (themselves).
        ({"listen": "0.0.0.0:7102", "seeds": ("10.0.0.2:7102",)}, "advertise: required"),
        ({"listen": "[::]:7102", "seeds": ("10.0.0.2:7102",)}, "advertise: required"),
        ({"advertise": "0.0.0.0:7102"}, "wildcard"),
        ({"advertise": "[::]:7102"}, "wildcard"),
        ({"advertise": "dht-0.fleetsuit:0"}, "port 0"),
        ({"advertise": "dht-0.fleetsuit"}, "advertise: 'dht-0.fleetsuit' is not HOST:PORT"),
        ({"advertise": "dht-0.fleetsuit:http"}, "advertise: port"),
        ({"metrics_host": "0.0.0.0:9102"}, "metrics_host: '0.0.0.0:9102' is not an IP address or a "
                                           "host name (a host only, without a port)"),
        ({"metrics_host": ""}, "metrics_host"),
        ({"metrics_host": "not a host"}, "metrics_host"),
    ],
)
def test_a_bad_advertise_or_metrics_host_is_refused_naming_it(
    changes: dict[str, object], named: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        DhtConfig().replace(**changes).validate()
    assert named in str(refused.value)


@pytest.mark.parametrize(
    ("changes", "contact"),
    [
        ({}, "127.0.0.1:7777"),  # the listen host, the port bound
        ({"listen": "127.0.0.1:0"}, "127.0.0.1:7777"),
        ({"listen": "0.0.0.0:7102", "advertise": "dht-0.fleetsuit:7102",
          "seeds": ("dht-1.fleetsuit:7102",)}, "dht-0.fleetsuit:7102"),
        # A lone node (no seeds) may listen on every interface unadvertised.
        ({"listen": "0.0.0.0:7102"}, "0.0.0.0:7777"),
    ],
)
def test_the_contact_is_the_advertised_address_else_the_listen_host(
    changes: dict[str, object], contact: str
) -> None:
    assert DhtConfig().replace(**changes).validate().contact_address(7777) == contact


def test_settings_come_from_flags_and_the_environment() -> None:
    config = DhtConfig.from_args(
        ["--listen", "0.0.0.0:7102", "--seeds", "dht-1.fleetsuit:7102"],
        {"FLEETSUIT_DHT_ADVERTISE": "dht-0.fleetsuit:7102", "FLEETSUIT_DHT_METRICS_HOST": "0.0.0.0"},
    )
    assert (config.advertise, config.metrics_host) == ("dht-0.fleetsuit:7102", "0.0.0.0")
    with pytest.raises(ConfigError, match="advertise"):
        DhtConfig.from_args(["--listen", "0.0.0.0:7102", "--seeds", "dht-1.fleetsuit:7102"], {})


@pytest.mark.parametrize(
    ("host", "wildcard"),
    [("0.0.0.0", True), ("::", True), ("[::]", True), ("127.0.0.1", False), ("fleetsuit-0", False)],
)
def test_wildcard_addresses(host: str, wildcard: bool) -> None:
    assert is_wildcard(host) is wildcard


# ---------------------------------------------------------------- real servers


class Nodes:
    """Dht nodes in this process over real gRPC; all stopped at close()."""

    def __init__(self) -> None:
        self.servers: list[grpc.aio.Server] = []
        self.nodes: list[DhtNode] = []

    async def add(self, name: str, listen: str, seeds: tuple[str, ...], advertise: str = "") -> DhtNode:
        config = DhtConfig(
            node_id=name, listen=listen, advertise=advertise, seeds=seeds, chunk_bytes=CHUNK,
            max_disk_bytes=DISK, repair_interval_ms=200, rpc_timeout_ms=2000,
        ).validate()  # fmt: skip
        deps = DhtDeps(
            store=BlobStore(MemoryKeyValue(), DISK), metrics=DhtMetrics(CollectorRegistry()),
            rng=random.Random(len(self.nodes)),
        )  # fmt: skip
        server, _port = build_server(config, deps)
        self.servers.append(server)
        await server.start()
        assert deps.node is not None
        self.nodes.append(deps.node)
        await deps.node.bootstrap()
        return deps.node

    async def close(self) -> None:
        for node in self.nodes:
            await node.close()
        for server in self.servers:
            await server.stop(0)


def _addresses(node: DhtNode) -> dict[str, str]:
    """node id (hex) -> the address ``node`` knows it at."""
    return {c.node_id.hex(): c.address for c in node.table.contacts()}


@pytest.mark.asyncio
async def test_a_node_listening_on_every_interface_is_found_at_its_advertised_address() -> None:
    port = free_port()
    advertised = f"127.0.0.1:{port}"
    nodes = Nodes()
    try:
        pod = await nodes.add("pod-0", f"0.0.0.0:{port}", (), advertise=advertised)
        assert pod.contact.address == advertised
        # A peer that seeds through the pod, and one that only hears of it.
        first = await nodes.add("pod-1", "127.0.0.1:0", (advertised,))
        second = await nodes.add("pod-2", "127.0.0.1:0", (first.contact.address,))
        pod_id = pod.contact.node_id.hex()
        assert _addresses(first)[pod_id] == advertised
        assert _addresses(second)[pod_id] == advertised  # learned through FindNode, then dialed
        # The pod learned its peers from their calls; nobody holds a wildcard.
        assert _addresses(pod) == {n.contact.node_id.hex(): n.contact.address for n in (first, second)}
        everyone = [a for n in nodes.nodes for a in _addresses(n).values()]
        assert not [a for a in everyone if a.startswith(("0.0.0.0", "[::]"))]

        # A blob put on the pod: the peer that only heard of it finds the pod
        # as a holder at the advertised address and reads the blob through it.
        data = payload(3 * CHUNK + 5, seed=13)
        async with grpc.aio.insecure_channel(advertised) as channel:
            cid = await put(dht_pb2_grpc.DhtStub(channel), data)
        async with grpc.aio.insecure_channel(second.contact.address) as channel:
            stub = dht_pb2_grpc.DhtStub(channel)

            async def pod_holds_it() -> bool | None:
                stat = await stub.Stat(dht_pb2.BlobStatRequest(content_id=cid, lookup=True), timeout=5)
                holders = {h.node_id.hex(): h.address for h in stat.holders}
                return True if holders.get(pod_id) == advertised else None

            await wait_for(pod_holds_it, 20, "the pod named as a holder at its advertised address")
            got = bytearray()
            async for msg in stub.Get(dht_pb2.BlobGetRequest(content_id=cid), timeout=20):
                got += msg.data
            assert bytes(got) == data
    finally:
        await nodes.close()


# ---------------------------------------------------------------- /metrics on every interface


@pytest.mark.asyncio
@pytest.mark.parametrize(("metrics_host", "elsewhere"), [("0.0.0.0", True), ("127.0.0.1", False)])
async def test_metrics_bound_to_every_interface_answer_on_another_address(
    tmp_path: pathlib.Path, metrics_host: str, elsewhere: bool
) -> None:
    """127.0.0.2 stands for a scraper's view of the pod: another address of
    the host, which only a server bound to 0.0.0.0 answers on."""
    port = free_port()
    config = DhtConfig(
        node_id="metrics", listen="127.0.0.1:0", metrics_host=metrics_host, metrics_port=port,
        data_dir=str(tmp_path / "data"),
    ).validate()  # fmt: skip
    assert await answers_elsewhere(lambda stop: serve(config, shutdown=stop), port) is elsewhere
