"""The layout of a node, shared by everything that starts, checks or
describes one (the local cluster, the node config, the preflight checks,
the StatefulSet plan, the scrape configuration): the services a node runs
and in which order, their ports as offsets from the node's base port, and
the names of the files a cluster and a node keep. Imports nothing of the
launcher."""

from __future__ import annotations

import sys
from dataclasses import dataclass

NODE_PORT_SPAN = 10  # node i's ports are base_port + 10*i + offset
GATEWAY_HTTP_OFFSET = 5  # the gateway's payload downloads (HTTP), beside its gRPC port
HEALTH_OFFSET = 0  # a supervised node's /healthz and /metrics: its base port
CLUSTER_FILE = "cluster.json"
ANCHORS_FILE = "anchors.json"
NODE_CONFIG_FILE = "node.toml"  # a supervised node's config, in its data directory
# How a node supervisor is started: this, then its config file.
SUPERVISOR_COMMAND = (sys.executable, "-m", "launcher", "node", "--config")


@dataclass(frozen=True)
class ServiceSpec:
    """One service of a node: its module (``python -m``) and its ports."""

    name: str
    module: str
    port_offset: int
    metrics_offset: int
    stores_data: bool = True  # takes --data (the manifest service is stateless)
    takes_trust_anchors: bool = False  # takes --trust-anchor SPEC, once per anchor


# In start order.
SERVICES: tuple[ServiceSpec, ...] = (
    ServiceSpec("consensus", "services.consensus", 1, 6, takes_trust_anchors=True),
    ServiceSpec("dht", "services.dht", 2, 7),
    ServiceSpec("manifest", "services.manifest", 3, 8, stores_data=False),
    ServiceSpec("gateway", "services.gateway", 4, 9),
)
HIGHEST_OFFSET = max(max(s.port_offset, s.metrics_offset) for s in SERVICES)
