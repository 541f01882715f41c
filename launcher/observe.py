"""Prometheus for a fleetsuit cluster: the scrape configuration of a
cluster.json document (``launcher/cluster.py``), the metrics addresses it
lists, and the PrometheusRule of ``deploy/k8s`` made from
``deploy/prometheus/rules.yml`` (the alert rules live once, in rules.yml).

Jobs: one per service, ``fleetsuit-consensus``, ``fleetsuit-dht``,
``fleetsuit-manifest``, ``fleetsuit-gateway``, and ``fleetsuit-node`` for
the node supervisors' ``/metrics`` when the nodes are supervised (the
document names each node's ``health`` URL); every target carries the label
``node`` = the node id. The Kubernetes ServiceMonitor gives the same job
names and labels by relabelling, so one dashboard and one set of rules serve
both.

``python -m launcher.observe`` prints the configuration of ``make run``'s
cluster (3 nodes from port 7100); ``--cluster FILE`` that of a running
cluster; ``--deploy DIR`` rewrites ``DIR/prometheus/prometheus.yml`` and
``DIR/k8s/prometheusrule.yaml``. Nothing here starts Prometheus or reads a
metric."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from .cluster import plan_nodes
from .layout import HEALTH_OFFSET, SERVICES

JOB_PREFIX = "fleetsuit-"
SUPERVISOR = "node"  # the job fleetsuit-node: each node supervisor's /metrics
METRICS_PATH = "/metrics"
RULES_FILE = "rules.yml"
DEFAULT_NODES = 3
DEFAULT_BASE_PORT = 7100
# `make run` starts supervised nodes (`fleetsuit cluster up`): each node's
# supervisor serves /healthz and /metrics on its base port.
DEFAULT_SUPERVISED = True
DEFAULT_INTERVAL_S = 5.0
HEADER = (
    "# Prometheus scrape configuration for {what}.\n"
    "# Written by `python -m launcher.observe` (launcher/observe.py); do not edit by hand.\n"
)
RULE_HEADER = (
    "# The alert rules of deploy/prometheus/rules.yml as a PrometheusRule (Prometheus Operator).\n"
    "# Written by `python -m launcher.observe --deploy deploy`: edit rules.yml, not this file.\n"
)


class ObserveError(ValueError):
    """A cluster document or a rules file that cannot be turned into a
    scrape configuration or a PrometheusRule; the message names the field."""


def _host_port(value: object, where: str) -> tuple[str, int]:
    if not isinstance(value, str) or ":" not in value:
        raise ObserveError(f"{where}: expected HOST:PORT, got {value!r}")
    host, _, port_text = value.rpartition(":")
    try:
        port = int(port_text)
    except ValueError:
        raise ObserveError(f"{where}: port {port_text!r} is not a number") from None
    if not host or not 0 < port < 65536:
        raise ObserveError(f"{where}: expected HOST:PORT with a port in 1..65535, got {value!r}")
    return host, port


def _supervisor_target(health: object, where: str) -> str:
    """HOST:PORT of a supervisor from its health URL (``http://h:p/healthz``)."""
    if not isinstance(health, str):
        raise ObserveError(f"{where}: expected the supervisor's health URL, got {health!r}")
    parts = urlsplit(health if "//" in health else f"http://{health}")
    host, port = _host_port(parts.netloc, where)
    return f"{host}:{port}"


def _service_order(name: str) -> tuple[int, str]:
    names = [spec.name for spec in SERVICES]
    return (names.index(name), name) if name in names else (len(names), name)


def _targets(doc: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """(node id, service, HOST:PORT) of every metrics endpoint, in node
    order, each node's services in ``SERVICES`` order, the supervisor last."""
    nodes = doc.get("nodes") if isinstance(doc, Mapping) else None
    if not isinstance(nodes, list) or not nodes:
        raise ObserveError("nodes: expected a non-empty list of nodes")
    out: list[tuple[str, str, str]] = []
    seen: set[str] = set()
    for i, node in enumerate(nodes):
        if not isinstance(node, Mapping):
            raise ObserveError(f"nodes[{i}]: expected an object, got {type(node).__name__}")
        node_id = node.get("id")
        if not isinstance(node_id, str) or not node_id:
            raise ObserveError(f"nodes[{i}].id: expected a node id, got {node_id!r}")
        if node_id in seen:
            raise ObserveError(f"nodes[{i}].id: node {node_id!r} appears twice")
        seen.add(node_id)
        metrics = node.get("metrics")
        if not isinstance(metrics, Mapping) or not metrics:
            raise ObserveError(f"nodes[{i}].metrics: expected service -> HOST:PORT, got {metrics!r}")
        for service in sorted(metrics, key=_service_order):
            if service == SUPERVISOR:
                raise ObserveError(f"nodes[{i}].metrics: {SUPERVISOR!r} is the supervisor's job, not a service")
            host, port = _host_port(metrics[service], f"nodes[{i}].metrics.{service}")
            out.append((node_id, service, f"{host}:{port}"))
        if node.get("health") is not None:
            out.append((node_id, SUPERVISOR, _supervisor_target(node["health"], f"nodes[{i}].health")))
    return out


def metrics_addresses(doc: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(node id, service, ``http://host:port/metrics``) of every process of
    the cluster that serves metrics; service ``node`` is a node's supervisor."""
    return [(node_id, service, f"http://{target}{METRICS_PATH}") for node_id, service, target in _targets(doc)]


def _duration(seconds: float) -> str:
    """A Prometheus duration: whole seconds as ``5s``, else milliseconds."""
    if not seconds > 0:
        raise ObserveError(f"interval_s: expected a positive number of seconds, got {seconds!r}")
    ms = round(seconds * 1000)
    if ms < 1:
        raise ObserveError(f"interval_s: {seconds!r} is below Prometheus' resolution of 1 ms")
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


def scrape_config_doc(
    doc: dict[str, Any], *, interval_s: float = DEFAULT_INTERVAL_S, rule_files: Sequence[str] = (RULES_FILE,)
) -> dict[str, Any]:
    """The configuration as data (what :func:`scrape_config` writes)."""
    interval = _duration(interval_s)
    jobs: dict[str, list[dict[str, Any]]] = {}
    for node_id, service, target in _targets(doc):
        jobs.setdefault(service, []).append({"targets": [target], "labels": {"node": node_id}})
    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": list(rule_files),
        "scrape_configs": [
            {"job_name": JOB_PREFIX + service, "metrics_path": METRICS_PATH, "static_configs": static}
            for service, static in sorted(jobs.items(), key=lambda item: _service_order(item[0]))
        ],
    }


def _dump(data: Any) -> str:
    text: str = yaml.safe_dump(data, sort_keys=False, default_flow_style=False, width=1000, allow_unicode=True)
    return text


def scrape_config(
    doc: dict[str, Any], *, interval_s: float = DEFAULT_INTERVAL_S, rule_files: Sequence[str] = (RULES_FILE,)
) -> str:
    """prometheus.yml text for a cluster.json document. ``rule_files`` are
    relative to the file's folder (Prometheus reads them from there)."""
    data = scrape_config_doc(doc, interval_s=interval_s, rule_files=rule_files)
    return HEADER.format(what=_describe(doc)) + _dump(data)


def _describe(doc: Mapping[str, Any]) -> str:
    cluster, base_port = doc.get("cluster_id"), doc.get("base_port")
    count = len(doc["nodes"])
    nodes = f"{count} node{'' if count == 1 else 's'}"
    if cluster:
        return f"the fleetsuit cluster {cluster} ({nodes})"
    if isinstance(base_port, int):
        return f"a local fleetsuit cluster of {nodes} from port {base_port}"
    return f"a fleetsuit cluster of {nodes}"


def write_scrape_config(doc: dict[str, Any], path: Path, *, interval_s: float = DEFAULT_INTERVAL_S) -> Path:
    """Write :func:`scrape_config` of ``doc`` to ``path`` (its folder made)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(scrape_config(doc, interval_s=interval_s))
    return path


def local_plan_doc(
    nodes: int = DEFAULT_NODES, base_port: int = DEFAULT_BASE_PORT, *, supervised: bool = DEFAULT_SUPERVISED
) -> dict[str, Any]:
    """The part of cluster.json that :func:`scrape_config` reads, for a local
    cluster of ``nodes`` nodes from ``base_port`` not started yet (the
    addresses ``launcher.cluster.start_cluster`` gives them)."""
    if nodes < 1:
        raise ObserveError(f"nodes: expected at least 1, got {nodes}")
    out = []
    for node in plan_nodes(nodes, Path("."), base_port):
        entry: dict[str, Any] = {
            "id": node.node_id,
            "metrics": {spec.name: f"127.0.0.1:{node.base + spec.metrics_offset}" for spec in SERVICES},
        }
        if supervised:
            entry["health"] = f"http://127.0.0.1:{node.base + HEALTH_OFFSET}/healthz"
        out.append(entry)
    return {"base_port": base_port, "nodes": out}


def load_rules(text: str, where: str = RULES_FILE) -> dict[str, Any]:
    """A Prometheus rules file as data; ObserveError when it has no groups."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ObserveError(f"{where}: not YAML ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("groups"), list) or not data["groups"]:
        raise ObserveError(f"{where}: expected a mapping with a non-empty list 'groups'")
    return data


def prometheus_rule(rules: Mapping[str, Any], name: str = "fleetsuit") -> dict[str, Any]:
    """The PrometheusRule custom resource holding ``rules``' groups unchanged."""
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": name,
            "labels": {"app.kubernetes.io/name": "fleetsuit", "app.kubernetes.io/component": "alerts"},
        },
        "spec": {"groups": rules["groups"]},
    }


def write_deploy(deploy: Path) -> list[Path]:
    """Rewrite ``deploy/prometheus/prometheus.yml`` (``make run``'s cluster:
    :func:`local_plan_doc` with its defaults) and ``deploy/k8s/prometheusrule.yaml``."""
    rules_path = deploy / "prometheus" / RULES_FILE
    rules = load_rules(rules_path.read_text(), str(rules_path))
    config = deploy / "prometheus" / "prometheus.yml"
    config.write_text(scrape_config(local_plan_doc()))
    resource = deploy / "k8s" / "prometheusrule.yaml"
    resource.write_text(RULE_HEADER + _dump(prometheus_rule(rules)))
    return [config, resource]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m launcher.observe",
        description="Prometheus scrape configuration for a fleetsuit cluster.",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--cluster", type=Path, metavar="FILE", help="a running cluster's cluster.json")
    source.add_argument("--deploy", type=Path, metavar="DIR",
                        help="rewrite DIR/prometheus/prometheus.yml and DIR/k8s/prometheusrule.yaml")
    parser.add_argument("--nodes", type=int, default=DEFAULT_NODES, help="nodes of a planned local cluster")
    parser.add_argument("--base-port", type=int, default=DEFAULT_BASE_PORT, help="its base port")
    parser.add_argument("--unsupervised", action="store_true", help="its nodes have no supervisor to scrape")
    parser.add_argument("--interval-s", type=float, default=DEFAULT_INTERVAL_S, help="scrape interval")
    parser.add_argument("--rules", default=RULES_FILE, metavar="FILE",
                        help="the alert rules the configuration names, relative to its folder "
                             "(default: %(default)s; deploy/prometheus/rules.yml holds them)")
    parser.add_argument("-o", "--out", type=Path, metavar="FILE", help="write here instead of stdout")
    args = parser.parse_args(argv)
    try:
        if args.deploy is not None:
            for path in write_deploy(args.deploy):
                print(f"wrote {path}")
            return 0
        if args.cluster is not None:
            doc = json.loads(args.cluster.read_text())
        else:
            doc = local_plan_doc(args.nodes, args.base_port, supervised=not args.unsupervised)
        text = scrape_config(doc, interval_s=args.interval_s, rule_files=(args.rules,))
    except (ObserveError, OSError, json.JSONDecodeError) as exc:
        print(f"observe: {exc}", file=sys.stderr)
        return 2
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
