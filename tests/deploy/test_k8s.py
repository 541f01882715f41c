"""The Kubernetes base (deploy/k8s): every manifest validates against the
Kubernetes schemas offline (kubernetes-validate, strict: an unknown field
is refused), the kustomization lists every file, and the recipe holds
together: the etcd-style peers Service and quorum budget, the image's user,
the probes on each service's own port, the client and scrape ports, the
keys Secret. The custom resources (ServiceMonitor, PrometheusRule) have no
bundled schema: they are checked here field by field instead.

Each container's command is resolved as it runs: the pod's environment as
Kubernetes expands it, the ConfigMap's node.toml, the keys Secret made by
the commands secret.yaml documents, through the node's own configuration
code (launcher/node/config.py) and then the service's own parser."""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from launcher.layout import GATEWAY_HTTP_OFFSET, SERVICES
from launcher.main import build_parser
from launcher.main import main as fleetsuit
from launcher.node.config import KINDS, NodeConfig
from launcher.node.config import parse as parse_node_config
from launcher.observe import JOB_PREFIX
from services.consensus.ledger.certify import Anchors, NodeKey
from tests.support.k8s import K8S, documented_commands, kubelet_env

ROOT = Path(__file__).resolve().parents[2]
# A recent Kubernetes: the newest schemas kubernetes-validate 1.37 bundles.
KUBERNETES_VERSION = "1.37"
CUSTOM = {"ServiceMonitor", "PrometheusRule"}
MONITORING = "monitoring.coreos.com/v1"
SERVICE_NAMES = [spec.name for spec in SERVICES]
CLIENT_PORTS = {*SERVICE_NAMES, "downloads"}
LOCAL_CONFIG = "config.kubernetes.io/local-config"
KUBECTL = shutil.which("kubectl")


def _kustomization() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    return doc


def _resources() -> list[tuple[str, dict[str, Any]]]:
    """(file, object) of every object of every file the kustomization lists."""
    out = []
    for name in _kustomization()["resources"]:
        for doc in yaml.safe_load_all((K8S / name).read_text()):
            if doc:
                out.append((name, doc))
    return out


def _docs() -> dict[str, dict[str, Any]]:
    return {f"{d['kind']}/{d['metadata']['name']}": d for _, d in _resources()}


def _statefulset() -> dict[str, Any]:
    return _docs()["StatefulSet/fleetsuit"]


def _pod() -> dict[str, Any]:
    pod: dict[str, Any] = _statefulset()["spec"]["template"]["spec"]
    return pod


def _containers() -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in _pod()["containers"]}


def _node_toml() -> dict[str, Any]:
    (config,) = _pod_configmaps()
    return tomllib.loads(config["data"]["node.toml"])


def _pod_configmaps() -> list[dict[str, Any]]:
    names = {v["configMap"]["name"] for v in _pod()["volumes"] if "configMap" in v}
    return [_docs()[f"ConfigMap/{name}"] for name in sorted(names)]


def _ports(base: int) -> dict[str, int]:
    """Port name -> number of a node with this base port, as the node lays
    them out (launcher/cluster.py): the services, downloads, metrics."""
    ports = {spec.name: base + spec.port_offset for spec in SERVICES}
    ports["downloads"] = base + GATEWAY_HTTP_OFFSET
    ports.update({f"m-{spec.name}": base + spec.metrics_offset for spec in SERVICES})
    return ports


def _selected(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


# ----------------------------------------------------------- schema, kustomize


def test_the_kustomization_lists_every_manifest_and_nothing_else() -> None:
    listed = _kustomization()["resources"]
    assert len(listed) == len(set(listed)), "a file listed twice"
    on_disk = {p.name for p in K8S.iterdir() if p.suffix in (".yaml", ".yml")}
    assert set(listed) == on_disk - {"kustomization.yaml"}


def test_the_kustomization_sets_the_image_of_every_container_and_keeps_selectors() -> None:
    kustomization = _kustomization()
    assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert kustomization["kind"] == "Kustomization"
    (image,) = kustomization["images"]
    assert image["newTag"]
    for container in _pod()["containers"]:
        assert container["image"].rpartition(":")[0] == image["name"], container["name"]
    # Labels added to selectors would change the StatefulSet's, which is immutable.
    for entry in kustomization.get("labels", []):
        assert entry.get("includeSelectors") is False
    assert "commonLabels" not in kustomization
    # Pods find each other by these names: a prefix or suffix would break it.
    assert "namePrefix" not in kustomization and "nameSuffix" not in kustomization


@pytest.mark.parametrize(
    "where, doc",
    [pytest.param(f, d, id=f"{f}:{d['kind']}/{d['metadata']['name']}") for f, d in _resources()
     if d["kind"] not in CUSTOM],
)
def test_every_manifest_validates_against_the_kubernetes_schemas(where: str, doc: dict[str, Any]) -> None:
    assert kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True) == KUBERNETES_VERSION


def test_only_the_prometheus_operator_resources_go_without_a_schema() -> None:
    kinds = {(d["apiVersion"], d["kind"]) for _, d in _resources() if d["kind"] in CUSTOM}
    assert kinds == {(MONITORING, "ServiceMonitor"), (MONITORING, "PrometheusRule")}
    for api_version, kind in kinds:
        with pytest.raises(kubernetes_validate.SchemaNotFoundError):
            kubernetes_validate.validate({"apiVersion": api_version, "kind": kind, "metadata": {}},
                                         KUBERNETES_VERSION, strict=True)


def test_the_validation_is_strict_and_would_catch_a_wrong_field() -> None:
    statefulset = copy.deepcopy(_statefulset())
    statefulset["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(statefulset, KUBERNETES_VERSION, strict=True)
    pdb = copy.deepcopy(_docs()["PodDisruptionBudget/fleetsuit"])
    pdb["spec"]["minAvailable"] = [2]
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(pdb, KUBERNETES_VERSION, strict=True)


@pytest.mark.skipif(KUBECTL is None, reason="kubectl (with its built-in kustomize) is not installed")
def test_an_overlay_builds_with_kustomize_and_sets_the_image_and_namespace(tmp_path: Path) -> None:
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    image = {"name": _kustomization()["images"][0]["name"], "newName": "registry.example/fleetsuit",
             "newTag": "9.9.9"}
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "namespace": "fleet", "resources": [os.path.relpath(K8S, overlay)], "images": [image],
    }))
    built = subprocess.run([str(KUBECTL), "kustomize", str(overlay)], capture_output=True, text=True,
                           timeout=60, check=False)
    assert built.returncode == 0, built.stderr
    docs = [d for d in yaml.safe_load_all(built.stdout) if d]
    # Everything but the documented keys Secret, which is never applied.
    applied = {name for name, d in _docs().items()
               if LOCAL_CONFIG not in d["metadata"].get("annotations", {})}
    assert {f"{d['kind']}/{d['metadata']['name']}" for d in docs} == applied
    assert applied == set(_docs()) - {"Secret/fleetsuit-keys"}
    for doc in docs:
        assert doc["metadata"]["namespace"] == "fleet"
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "fleetsuit"
        if doc["kind"] not in CUSTOM:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        if doc["kind"] == "StatefulSet":
            images = {c["image"] for c in doc["spec"]["template"]["spec"]["containers"]}
            assert images == {"registry.example/fleetsuit:9.9.9"}


def test_every_selector_selects_the_pods_and_every_object_names_the_app() -> None:
    pod_labels = _statefulset()["spec"]["template"]["metadata"]["labels"]
    app = _statefulset()["metadata"]["labels"]["app.kubernetes.io/name"]
    for _, doc in _resources():
        assert doc["metadata"]["labels"]["app.kubernetes.io/name"] == app, doc["kind"]
        spec = doc.get("spec", {})
        if doc["kind"] == "Service":
            assert _selected(spec["selector"], pod_labels), doc["metadata"]["name"]
        elif doc["kind"] in ("StatefulSet", "PodDisruptionBudget"):
            assert _selected(spec["selector"]["matchLabels"], pod_labels), doc["kind"]


# ------------------------------------------------------------- etcd's recipe


def test_the_quorum_disruption_budget_is_an_integer_majority() -> None:
    bootstrap = _node_toml()["statefulset"]["bootstrap_replicas"]
    assert _statefulset()["spec"]["replicas"] == bootstrap
    budget = _docs()["PodDisruptionBudget/fleetsuit"]["spec"]
    assert isinstance(budget["minAvailable"], int) and "maxUnavailable" not in budget
    assert budget["minAvailable"] == bootstrap // 2 + 1


def test_peers_find_each_other_before_they_are_ready() -> None:
    spec = _statefulset()["spec"]
    peers = _docs()[f"Service/{spec['serviceName']}"]["spec"]
    assert peers["clusterIP"] == "None" and peers["publishNotReadyAddresses"] is True
    assert spec["podManagementPolicy"] == "Parallel"
    # The node derives its peers from the same Service and set names.
    statefulset = _node_toml()["statefulset"]
    assert statefulset["enabled"] is True and statefulset["service"] == spec["serviceName"]
    assert "{pod}" in statefulset["address_template"] and "{service}" in statefulset["address_template"]
    anti = _pod()["affinity"]["podAntiAffinity"]
    (rule,) = anti["requiredDuringSchedulingIgnoredDuringExecution"]
    assert rule["topologyKey"] == "kubernetes.io/hostname"


def test_a_stopping_pod_has_time_for_the_node_to_stop_gracefully() -> None:
    stop_grace_s = _node_toml()["node"]["stop_grace_ms"] / 1000
    # Room beyond the children's grace for a leader to hand over first.
    assert _pod()["terminationGracePeriodSeconds"] >= stop_grace_s + 10


# ------------------------------------------------------------------ security


def test_the_pods_run_as_the_image_user_who_can_write_the_data_volume() -> None:
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    users = re.findall(r"^USER (\d+):(\d+)\s*$", dockerfile, re.M)
    assert users
    uid, gid = (int(x) for x in users[-1])
    security = _pod()["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] == uid and security["runAsGroup"] == gid
    assert security["fsGroup"] == gid
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}


def test_every_container_is_locked_down() -> None:
    pod = _pod()
    assert pod["automountServiceAccountToken"] is False
    # Service links would put FLEETSUIT_API_* variables in the FLEETSUIT_
    # namespace the node and the services read settings from.
    assert pod["enableServiceLinks"] is False
    volumes = {v["name"]: v for v in pod["volumes"]}
    for container in pod["containers"]:
        security = container["securityContext"]
        assert security["allowPrivilegeEscalation"] is False, container["name"]
        assert security["readOnlyRootFilesystem"] is True, container["name"]
        assert security["capabilities"] == {"drop": ["ALL"]}, container["name"]
        assert "privileged" not in security and "runAsUser" not in security
        # A read-only root needs a writable /tmp; the data volume is the claim.
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        assert "emptyDir" in volumes[mounts["/tmp"]], container["name"]
        data = mounts[_node_toml()["node"]["data"]]
        assert data in {t["metadata"]["name"] for t in _statefulset()["spec"]["volumeClaimTemplates"]}


_QUANTITY = re.compile(r"^(\d+(?:\.\d+)?)(m|Ki|Mi|Gi)?$")
_UNITS = {None: 1.0, "m": 1e-3, "Ki": 2.0**10, "Mi": 2.0**20, "Gi": 2.0**30}


def _quantity(text: str | int) -> float:
    match = _QUANTITY.match(str(text))
    assert match is not None, f"quantity {text!r}"
    return float(match[1]) * _UNITS[match[2]]


def test_every_container_requests_and_limits_cpu_and_memory() -> None:
    for container in _pod()["containers"]:
        resources = container["resources"]
        for kind in ("cpu", "memory"):
            request = _quantity(resources["requests"][kind])
            limit = _quantity(resources["limits"][kind])
            assert 0 < request <= limit, f"{container['name']} {kind}"


# ----------------------------------------------------------- ports and probes


def test_every_container_runs_its_service_under_the_node_command() -> None:
    (config,) = _pod_configmaps()
    assert list(config["data"]) == ["node.toml"]
    config_volume = next(v["name"] for v in _pod()["volumes"] if "configMap" in v)
    assert sorted(_containers()) == sorted(SERVICE_NAMES)
    for name, container in _containers().items():
        mount = next(m for m in container["volumeMounts"] if m["name"] == config_volume)
        assert mount["readOnly"] is True
        assert "command" not in container, "the image's entrypoint is the fleetsuit command"
        assert container["args"] == ["node", "--config", f"{mount['mountPath']}/node.toml",
                                     "--service", name]


def test_the_fleetsuit_command_accepts_every_container_s_arguments() -> None:
    for name, container in _containers().items():
        args = build_parser().parse_args(container["args"])
        assert args.command == "node" and args.service == name and not args.check


def test_every_container_exposes_its_service_and_metrics_ports() -> None:
    ports = _ports(_node_toml()["node"]["base_port"])
    for name, container in _containers().items():
        exposed = {p["name"]: p["containerPort"] for p in container["ports"]}
        wanted = {name: ports[name], f"m-{name}": ports[f"m-{name}"]}
        if name == "gateway":
            wanted["downloads"] = ports["downloads"]
        assert exposed == wanted, name


def test_the_image_exposes_the_ports_of_the_pod() -> None:
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    exposed = {int(p) for line in re.findall(r"^EXPOSE (.+)$", dockerfile, re.M) for p in line.split()}
    assert exposed == set(_ports(_node_toml()["node"]["base_port"]).values())


def test_every_container_probes_its_own_grpc_port_natively() -> None:
    for name, container in _containers().items():
        own = next(p["containerPort"] for p in container["ports"] if p["name"] == name)
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"]["port"] == own, f"{name} {probe}"
        # Readiness asks the whole server; only consensus reports NOT_SERVING
        # while it runs (no leader), so its liveness asks a name that is
        # SERVING while the process runs.
        assert "service" not in container["readinessProbe"]["grpc"]
        expected = "liveness" if name == "consensus" else None
        assert container["livenessProbe"]["grpc"].get("service") == expected, name
        assert container["startupProbe"]["grpc"].get("service") == expected, name


def test_the_headless_service_publishes_every_port_of_the_pod() -> None:
    peers = _docs()["Service/fleetsuit"]["spec"]["ports"]
    exposed = {p["name"]: p["containerPort"] for c in _pod()["containers"] for p in c["ports"]}
    assert {p["name"]: p["port"] for p in peers} == exposed
    for port in peers:
        assert port["targetPort"] == port["name"]


def test_the_client_service_lists_every_client_facing_service() -> None:
    api = _docs()["Service/fleetsuit-api"]["spec"]
    assert api.get("type", "ClusterIP") == "ClusterIP" and "publishNotReadyAddresses" not in api
    exposed = {p["name"]: p["containerPort"] for c in _pod()["containers"] for p in c["ports"]}
    ports = {p["name"]: p for p in api["ports"]}
    assert set(ports) == CLIENT_PORTS
    for name, port in ports.items():
        assert port["targetPort"] == name and port["port"] == exposed[name], name


# ------------------------------------------------------------ the keys Secret


def test_the_keys_secret_is_documented_never_applied_and_holds_nothing() -> None:
    secret = _docs()["Secret/fleetsuit-keys"]
    # kustomize drops a local-config object from what it applies: the real
    # Secret, made with `kubectl create secret`, is never overwritten.
    assert secret["metadata"]["annotations"][LOCAL_CONFIG] == "true"
    assert not secret.get("data") and not secret.get("stringData")
    volume = next(v for v in _pod()["volumes"] if "secret" in v)
    assert volume["secret"]["secretName"] == secret["metadata"]["name"]
    assert volume["secret"]["defaultMode"] == 0o440
    mounted = [c["name"] for c in _pod()["containers"]
               if any(m["name"] == volume["name"] for m in c["volumeMounts"])]
    assert mounted == ["consensus"], "only the consensus container needs the keys"


# ------------------------------------------------------------------- metrics


def test_the_service_monitor_scrapes_every_metrics_port_of_the_headless_service() -> None:
    monitor = _docs()["ServiceMonitor/fleetsuit"]
    assert monitor["apiVersion"] == MONITORING and monitor["kind"] == "ServiceMonitor"
    spec = monitor["spec"]
    selector = spec["selector"]["matchLabels"]
    services = {name: d for name, d in _docs().items() if name.startswith("Service/")}
    chosen = [name for name, d in services.items() if _selected(selector, d["metadata"]["labels"])]
    assert chosen == ["Service/fleetsuit"]
    headless = {p["name"] for p in services["Service/fleetsuit"]["spec"]["ports"]}
    endpoints = {e["port"]: e for e in spec["endpoints"]}
    assert set(endpoints) == {f"m-{name}" for name in SERVICE_NAMES}
    for name in SERVICE_NAMES:
        endpoint = endpoints[f"m-{name}"]
        assert endpoint["port"] in headless
        assert endpoint["path"] == "/metrics"
        relabel = {r["targetLabel"]: r for r in endpoint["relabelings"]}
        # The local cluster's job and node labels (launcher/observe.py).
        assert relabel["job"]["replacement"] == f"{JOB_PREFIX}{name}"
        assert "sourceLabels" not in relabel["job"]
        assert relabel["node"]["sourceLabels"] == ["__meta_kubernetes_pod_name"]
        for rule in endpoint["relabelings"]:
            assert rule["action"] == "replace"


def test_the_prometheus_rule_is_well_formed() -> None:
    rule = _docs()["PrometheusRule/fleetsuit"]
    assert rule["apiVersion"] == MONITORING and rule["kind"] == "PrometheusRule"
    groups = rule["spec"]["groups"]
    assert groups and len({g["name"] for g in groups}) == len(groups)
    for group in groups:
        assert group["rules"]
        for rule_ in group["rules"]:
            # The Rule fields of the Prometheus Operator's CRD.
            assert set(rule_) <= {"alert", "record", "expr", "for", "keep_firing_for", "labels",
                                  "annotations"}, rule_
            assert ("alert" in rule_) != ("record" in rule_), rule_
            assert rule_["expr"].strip()


# ------------------------------------------- each container's command, resolved

NAMESPACE = "fleet"
# Pods of the bootstrap (0..2) and one a scale-up adds (4: joins as a learner).
ORDINALS = [0, 1, 2, 4]
@pytest.fixture
def secret_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The keys Secret's files, made by the documented commands."""
    monkeypatch.chdir(tmp_path)
    commands = documented_commands()
    assert [c[1:3] for c in commands] == [["cluster", "keys"], ["manifest", "keygen"]]
    for command in commands:
        assert fleetsuit(command[1:]) == 0, command
    out = next(c[c.index("--out") + 1] for c in commands if "--out" in c)
    # The Secret is made from that directory (the documented kubectl command).
    assert f"--from-file={out}" in (K8S / "secret.yaml").read_text()
    return tmp_path / out


def _keys_mount(container: dict[str, Any]) -> str | None:
    keys = next(v["name"] for v in _pod()["volumes"] if "secret" in v)
    return next((m["mountPath"] for m in container["volumeMounts"] if m["name"] == keys), None)


def _resolve(name: str, pod: str, secret: Path) -> tuple[NodeConfig, dict[str, str]]:
    """The node config container ``name`` of ``pod`` resolves, with the keys
    Secret's files at ``secret`` where the container mounts them."""
    container = _containers()[name]
    env = kubelet_env(container.get("env", []), pod, NAMESPACE)
    text = _pod_configmaps()[0]["data"]["node.toml"]
    mount = _keys_mount(container)
    if mount is not None:
        env = {k: v.replace(f"{mount}/", f"{secret}/") for k, v in env.items()}
    for key, value in env.items():
        assert "$(" not in value, f"{name}: {key}={value} is not expanded"
    return parse_node_config(text, env), env


def test_the_documented_keys_commands_make_every_file_the_pods_read(secret_dir: Path) -> None:
    made = {p.name for p in secret_dir.iterdir()}
    consensus = _containers()["consensus"]
    for ordinal in ORDINALS:
        env = kubelet_env(consensus.get("env", []), f"fleetsuit-{ordinal}", NAMESPACE)
        mount = _keys_mount(consensus)
        for key in ("FLEETSUIT_CONSENSUS_KEY_FILE", "FLEETSUIT_CONSENSUS_TRUST_ANCHORS"):
            path = Path(env[key])
            assert path.parent == Path(str(mount)) and path.name in made, (key, sorted(made))
    anchors = Anchors.from_json((secret_dir / "anchors.json").read_text())
    bootstrap = _node_toml()["statefulset"]["bootstrap_replicas"]
    assert anchors.cluster_id == _node_toml()["node"]["cluster_id"]
    assert sorted(anchors.keys) == [f"fleetsuit-{i}" for i in range(bootstrap)]


@pytest.mark.parametrize("ordinal", ORDINALS)
@pytest.mark.parametrize("name", SERVICE_NAMES)
def test_every_container_command_resolves_to_a_valid_service_config(
    name: str, ordinal: int, secret_dir: Path
) -> None:
    pod = f"fleetsuit-{ordinal}"
    config, env = _resolve(name, pod, secret_dir)
    assert config.node.id == pod and config.plan is not None and config.plan.ordinal == ordinal
    child = config.children[name]
    assert child.command[1:3] == ("-m", KINDS[name].module)
    # What the child process itself parses: the same command and environment.
    reparsed = KINDS[name].config_cls.from_args(list(child.command[3:]), {**env, **child.env})
    assert reparsed == child.settings
    settings = child.settings
    container = _containers()[name]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert settings.node_id == pod
    assert settings.listen == f"0.0.0.0:{ports[name]}"
    # Metrics bound to every interface, on the port the Service and the ServiceMonitor name.
    assert settings.metrics_host == "0.0.0.0" and settings.metrics_port == ports[f"m-{name}"]
    if hasattr(settings, "data_dir"):
        data = next(m["mountPath"] for m in container["volumeMounts"] if m["name"] == "data")
        assert Path(settings.data_dir).is_relative_to(data), settings.data_dir


@pytest.mark.parametrize("ordinal", ORDINALS)
def test_the_consensus_container_bootstraps_or_joins_by_its_ordinal(ordinal: int, secret_dir: Path) -> None:
    pod = f"fleetsuit-{ordinal}"
    config, _ = _resolve("consensus", pod, secret_dir)
    settings = config.children["consensus"].settings
    bootstrap = _node_toml()["statefulset"]["bootstrap_replicas"]
    members = {f"fleetsuit-{i}": f"fleetsuit-{i}.fleetsuit:7101" for i in range(bootstrap)}
    joining = ordinal >= bootstrap
    assert settings.join is joining
    assert ("--join" in config.children["consensus"].command) is joining
    expected = {**members, pod: f"{pod}.fleetsuit:7101"}
    assert settings.peer_addresses == expected
    # Its own key from the Secret; a bootstrap member's is in the anchors.
    assert Path(settings.key_path) == secret_dir / f"{pod}.key"
    assert Path(settings.key_path).is_file()
    key = NodeKey.load_or_create(Path(settings.key_path))
    anchors = Anchors.from_json((secret_dir / "anchors.json").read_text())
    assert (anchors.keys.get(pod) == key.public) is not joining
    assert settings.cluster_id == anchors.cluster_id
    # The publishers' key, read from its file in the Secret.
    (anchor,) = settings.anchors()
    assert anchor.public_key_pem.strip() == (secret_dir / "publisher.pub.pem").read_bytes().strip()


@pytest.mark.parametrize("ordinal", ORDINALS)
def test_the_pod_advertises_its_stable_name_not_the_wildcard(ordinal: int, secret_dir: Path) -> None:
    pod = f"fleetsuit-{ordinal}"
    host = f"{pod}.fleetsuit.{NAMESPACE}.svc"
    dht, _ = _resolve("dht", pod, secret_dir)
    settings = dht.children["dht"].settings
    assert settings.advertise == f"{host}:7102"
    bootstrap = _node_toml()["statefulset"]["bootstrap_replicas"]
    others = [f"fleetsuit-{i}.fleetsuit:7102" for i in range(bootstrap) if i != ordinal]
    assert list(settings.seeds) == others
    gateway, _ = _resolve("gateway", pod, secret_dir)
    settings = gateway.children["gateway"].settings
    assert settings.advertise == f"{host}:7104" and settings.advertise_http == f"{host}:7105"
    # The gateway's ledger and payloads: this pod's own consensus and dht.
    assert settings.consensus_endpoint == f"{host}:7101" and settings.dht_endpoint == f"{host}:7102"
    consensus, _ = _resolve("consensus", pod, secret_dir)
    assert consensus.children["consensus"].settings.gateway_endpoint == settings.advertise
