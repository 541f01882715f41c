"""The Kubernetes manifest follows etcd's recipe for a Raft cluster and
starts each service with flags its own parser accepts, as the image runs it
(``python -m`` + args, with the pod's environment)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.consensus.config import ConsensusConfig, parse_peers
from services.dht.config import DhtConfig
from services.gateway.config import GatewayConfig
from services.manifest.__main__ import parse_config as manifest_args

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def _docs() -> dict[str, dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all((DEPLOY / "k8s" / "fleetsuit.yaml").read_text()) if d]
    return {f"{d['kind']}/{d['metadata']['name']}": d for d in docs}


def _statefulset() -> dict[str, Any]:
    return _docs()["StatefulSet/fleetsuit"]


def _container(name: str) -> dict[str, Any]:
    return next(c for c in _statefulset()["spec"]["template"]["spec"]["containers"] if c["name"] == name)


def _env(container: dict[str, Any], pod_name: str) -> dict[str, str]:
    env = {}
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = str(item["value"])
        elif item.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.name":
            env[item["name"]] = pod_name
    return env


def _args(container: dict[str, Any], env: dict[str, str]) -> list[str]:
    """The container's args after Kubernetes' $(VAR) expansion, without the module."""
    args = [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], a) for a in container["args"]]
    return args[1:]


def test_the_quorum_disruption_budget_is_an_integer_majority() -> None:
    replicas = _statefulset()["spec"]["replicas"]
    budget = _docs()["PodDisruptionBudget/fleetsuit"]["spec"]
    assert isinstance(budget["minAvailable"], int) and "maxUnavailable" not in budget
    assert budget["minAvailable"] == replicas // 2 + 1


def test_peers_find_each_other_before_they_are_ready() -> None:
    peers_service = _docs()["Service/fleetsuit"]["spec"]
    assert peers_service["clusterIP"] == "None" and peers_service["publishNotReadyAddresses"] is True
    spec = _statefulset()["spec"]
    assert spec["serviceName"] == "fleetsuit" and spec["podManagementPolicy"] == "Parallel"
    anti = spec["template"]["spec"]["affinity"]["podAntiAffinity"]
    (rule,) = anti["requiredDuringSchedulingIgnoredDuringExecution"]
    assert rule["topologyKey"] == "kubernetes.io/hostname"


def test_the_image_user_can_write_the_data_volume() -> None:
    user = re.search(r"^USER (\d+):(\d+)", (DEPLOY / "Dockerfile").read_text(), re.M)
    assert user is not None
    pod = _statefulset()["spec"]["template"]["spec"]
    assert pod["securityContext"]["fsGroup"] == int(user.group(2))


def test_every_container_probes_its_own_grpc_port() -> None:
    for container in _statefulset()["spec"]["template"]["spec"]["containers"]:
        ports = {p["containerPort"] for p in container["ports"]}
        probe = container["readinessProbe"]["grpc"]["port"]
        assert probe in ports, container["name"]
        assert any(a.endswith(f":{probe}") for a in container["args"]), container["name"]


@pytest.mark.parametrize("ordinal", [0, 1, 2])
def test_the_consensus_container_starts_with_a_valid_configuration(ordinal: int) -> None:
    pod = f"fleetsuit-{ordinal}"
    container = _container("consensus")
    env = _env(container, pod)
    config = ConsensusConfig.from_args(_args(container, env), env)
    config.validate()
    peers = dict(parse_peers(env["FLEETSUIT_PEERS"]))
    replicas = _statefulset()["spec"]["replicas"]
    assert sorted(peers) == [f"fleetsuit-{i}" for i in range(replicas)]
    assert config.node_id == pod and peers[pod] == f"{pod}.fleetsuit:7101"


def test_the_dht_and_manifest_containers_start_with_valid_configurations() -> None:
    dht = _container("dht")
    env = _env(dht, "fleetsuit-1")
    config = DhtConfig.from_args(_args(dht, env), env)
    assert config.node_id == "fleetsuit-1" and len(config.seeds) == _statefulset()["spec"]["replicas"]
    manifest = _container("manifest")
    env = _env(manifest, "fleetsuit-1")
    assert manifest_args(_args(manifest, env)).node_id == "fleetsuit-1"


def test_the_gateway_container_starts_with_a_valid_configuration_and_its_node_names_it() -> None:
    gateway = _container("gateway")
    env = _env(gateway, "fleetsuit-2")
    config = GatewayConfig.from_args(_args(gateway, env), env)
    config.validate()
    assert config.node_id == "fleetsuit-2" and config.advertise == "fleetsuit-2.fleetsuit:7104"
    assert config.consensus_endpoint == "127.0.0.1:7101" and config.dht_endpoint == "127.0.0.1:7102"
    # The node's Status names its gateway at the address the other gateways dial.
    consensus = _container("consensus")
    cenv = _env(consensus, "fleetsuit-2")
    assert ConsensusConfig.from_args(_args(consensus, cenv), cenv).gateway_endpoint == config.advertise
