"""Observability of a cluster: the Prometheus scrape configuration
(``launcher/observe.py``), the alert rules (``deploy/prometheus/rules.yml``
and the same groups in ``deploy/k8s/prometheusrule.yaml``) and the Grafana
dashboard (``deploy/grafana/fleetsuit.json``).

Static: the files load and agree with each other and with the metrics the
services export; ``promtool`` (Debian's ``prometheus`` package) checks the
rules, a generated configuration and every dashboard query, and runs unit
tests of the alerts on synthetic series.

Live: a real Prometheus scrapes a running 3-node cluster (devices in session
through the gateways, a release installed by some and failed by others,
ledger entries appended), and every dashboard query and every alert
expression (as ``(<query>) <op> bool <number>``) returns series.

Without the binaries these tests skip, unless FLEETSUIT_REQUIRE_PROMETHEUS=1
(``make test``, which installs the package first): then they fail."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest

from agent.enrol import fleet_public_pems
from agent.simulator import Simulator, SimulatorConfig
from fleetsuit.client import FleetClient
from fleetsuit.device_admin import DeviceAdmin
from fleetsuit.metrics import new_registry
from fleetsuit.rpc import RpcMetrics
from fleetsuit.v1 import consensus_pb2 as pb
from fleetsuit.v1 import consensus_pb2_grpc as pb_grpc
from launcher.node.supervisor import NodeMetrics
from launcher.observe import (
    ObserveError,
    load_rules,
    local_plan_doc,
    metrics_addresses,
    prometheus_rule,
    scrape_config,
    scrape_config_doc,
    write_scrape_config,
)
from launcher.observe import main as observe_main
from services.consensus.metrics import PROPOSAL_FAILURE_REASONS, ConsensusMetrics, TableGauge
from services.dht.metrics import REPAIR_KINDS, DhtMetrics
from services.gateway.cache import CacheMetrics
from services.gateway.http import HttpMetrics
from services.gateway.metrics import GatewayMetrics
from services.manifest.server import ManifestMetrics
from suit.keys import KeyAlgorithm, generate, private_pem, public_pem
from tests.support.cluster import LocalCluster
from tests.support.fleet import gateways_serving
from tests.support.ports import free_port
from tests.support.procs import stop_processes
from tests.support.wait import wait_until

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
RULES = DEPLOY / "prometheus" / "rules.yml"
DASHBOARD = DEPLOY / "grafana" / "fleetsuit.json"
REQUIRE_ENV = "FLEETSUIT_REQUIRE_PROMETHEUS"
# The dashboard's template variables, as Grafana would fill them in.
VARIABLES = {"$__rate_interval": "30s", "$node": ".*"}
ALERTS = {
    "FleetsuitNoLeader", "FleetsuitFrequentLeaderChanges", "FleetsuitProposalsFailing",
    "FleetsuitDhtReplicasMissing", "FleetsuitRolloutHalted", "FleetsuitGatewayWithoutSessions",
}
# What the issue asks the dashboard to show, by the series it reads.
DASHBOARD_SERIES = {
    "fleetsuit_server_term", "fleetsuit_server_commit_index", "fleetsuit_server_leader_changes_seen_total",
    "fleetsuit_server_proposals_committed_total", "fleetsuit_server_proposals_failed_total",
    "fleetsuit_disk_wal_fsync_duration_seconds_bucket", "fleetsuit_network_peer_round_trip_time_seconds_bucket",
    "fleetsuit_dht_replicas_missing", "fleetsuit_dht_repair_actions_total", "fleetsuit_gateway_sessions",
    "fleetsuit_devices_by_version", "fleetsuit_gateway_devices_by_version", "fleetsuit_release_outcomes",
    "fleetsuit_gateway_download_bytes_total", "fleetsuit_node_child_restarts_total",
}
COMPARISON = re.compile(r"^(?P<query>.*\S)\s*(?P<op>==|!=|>=|<=|>|<)\s*(?P<number>-?[0-9]+(?:\.[0-9]+)?)$")
METRIC_NAME = re.compile(r"\bfleetsuit_[a-z0-9_]+\b")
SUFFIXES = ("_total", "_created", "_bucket", "_count", "_sum")


# ---------------------------------------------------------------- helpers


def binary(name: str) -> str:
    """The path of ``name``; skip without it, or fail when it is required."""
    path = shutil.which(name)
    if path is None:
        message = (f"{name} is not installed: Debian's `prometheus` package provides it "
                   "(`make prometheus`, or apt-get install prometheus)")
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{message}; {REQUIRE_ENV}=1 requires it")
        pytest.skip(message)
    return path


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title and refId, query with the template variables filled in)."""
    out = []
    for panel in dashboard()["panels"]:
        for target in panel["targets"]:
            expr = target["expr"]
            for name, value in VARIABLES.items():
                expr = expr.replace(name, value)
            out.append((f"{panel['title']} {target['refId']}", expr))
    return out


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in load_rules(RULES.read_text())["groups"] for rule in group["rules"]]


def alert_queries() -> list[tuple[str, str]]:
    """(alert, ``(<query>) <op> bool <number>``): a series whatever the value."""
    out = []
    for rule in alert_rules():
        m = COMPARISON.match(rule["expr"].strip())
        assert m, f"{rule['alert']}: the expression is not `<query> <op> <number>`: {rule['expr']}"
        out.append((rule["alert"], f"({m['query']}) {m['op']} bool {m['number']}"))
    return out


def exported_families() -> set[str]:
    """The metric families every service's registries export."""
    registry = new_registry("test", "n1")
    ConsensusMetrics(registry)
    DhtMetrics(registry)
    GatewayMetrics(registry)
    HttpMetrics(registry)
    CacheMetrics(registry)
    ManifestMetrics(registry)
    RpcMetrics(registry)
    NodeMetrics(registry, ["consensus"])
    return {family.name for family in registry.collect()}


def family_of(name: str, families: set[str]) -> str | None:
    if name in families:
        return name
    for suffix in SUFFIXES:
        if name.endswith(suffix) and name[: -len(suffix)] in families:
            return name[: -len(suffix)]
    return None


def cluster_doc(supervised: bool) -> dict[str, Any]:
    """A cluster.json document as start_cluster writes one (the fields read)."""
    nodes = []
    for i, node_id in enumerate(("n1", "n2")):
        base = 20_000 + 10 * i
        node: dict[str, Any] = {"id": node_id, "metrics": {
            "gateway": f"10.0.0.{i + 1}:{base + 9}", "consensus": f"10.0.0.{i + 1}:{base + 6}"}}
        if supervised:
            node["health"] = f"http://10.0.0.{i + 1}:{base}/healthz"
        nodes.append(node)
    return {"cluster_id": "fs-test", "nodes": nodes}


# ---------------------------------------------------------------- the scrape configuration


def test_the_committed_scrape_config_is_the_one_of_make_runs_cluster() -> None:
    committed = (DEPLOY / "prometheus" / "prometheus.yml").read_text()
    assert committed == scrape_config(local_plan_doc(3, 7100)), (
        "deploy/prometheus/prometheus.yml is stale: run `python -m launcher.observe --deploy deploy`")
    config = yaml.safe_load(committed)
    assert config["rule_files"] == ["rules.yml"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert list(jobs) == ["fleetsuit-consensus", "fleetsuit-dht", "fleetsuit-manifest", "fleetsuit-gateway",
                          "fleetsuit-node"]
    assert [(s["targets"], s["labels"]) for s in jobs["fleetsuit-consensus"]["static_configs"]] == [
        (["127.0.0.1:7106"], {"node": "n1"}), (["127.0.0.1:7116"], {"node": "n2"}),
        (["127.0.0.1:7126"], {"node": "n3"})]
    assert [s["targets"] for s in jobs["fleetsuit-node"]["static_configs"]] == [
        ["127.0.0.1:7100"], ["127.0.0.1:7110"], ["127.0.0.1:7120"]]


@pytest.mark.parametrize("supervised", [False, True])
def test_a_cluster_document_gives_one_job_per_service_with_the_node_on_each_target(supervised: bool) -> None:
    doc = cluster_doc(supervised)
    config = scrape_config_doc(doc, interval_s=0.5, rule_files=())
    assert config["global"] == {"scrape_interval": "500ms", "evaluation_interval": "500ms"}
    assert config["rule_files"] == []
    jobs = {job["job_name"]: [(s["targets"][0], s["labels"]["node"]) for s in job["static_configs"]]
            for job in config["scrape_configs"]}
    expected = {
        "fleetsuit-consensus": [("10.0.0.1:20006", "n1"), ("10.0.0.2:20016", "n2")],
        "fleetsuit-gateway": [("10.0.0.1:20009", "n1"), ("10.0.0.2:20019", "n2")],
    }
    if supervised:
        expected["fleetsuit-node"] = [("10.0.0.1:20000", "n1"), ("10.0.0.2:20010", "n2")]
    assert jobs == expected
    assert list(jobs)[:2] == ["fleetsuit-consensus", "fleetsuit-gateway"]  # SERVICES order
    addresses = metrics_addresses(doc)
    assert addresses[:2] == [("n1", "consensus", "http://10.0.0.1:20006/metrics"),
                             ("n1", "gateway", "http://10.0.0.1:20009/metrics")]
    assert (("n2", "node", "http://10.0.0.2:20010/metrics") in addresses) is supervised
    assert yaml.safe_load(scrape_config(doc, interval_s=0.5, rule_files=())) == config


@pytest.mark.parametrize(("doc", "named"), [
    ({}, "nodes"),
    ({"nodes": []}, "nodes"),
    ({"nodes": [{"metrics": {"dht": "h:1"}}]}, "nodes[0].id"),
    ({"nodes": [{"id": "n1", "metrics": {}}]}, "nodes[0].metrics"),
    ({"nodes": [{"id": "n1", "metrics": {"dht": "h"}}]}, "nodes[0].metrics.dht"),
    ({"nodes": [{"id": "n1", "metrics": {"dht": "h:x"}}]}, "nodes[0].metrics.dht"),
    ({"nodes": [{"id": "n1", "metrics": {"dht": ":70"}}]}, "nodes[0].metrics.dht"),
    ({"nodes": [{"id": "n1", "metrics": {"dht": "h:70000"}}]}, "nodes[0].metrics.dht"),
    ({"nodes": [{"id": "n1", "metrics": {"dht": "h:1"}, "health": "http://h/healthz"}]}, "nodes[0].health"),
    ({"nodes": [{"id": "n1", "metrics": {"dht": "h:1"}}, {"id": "n1", "metrics": {"dht": "h:2"}}]}, "nodes[1].id"),
])
def test_a_bad_cluster_document_is_refused_naming_the_field(doc: dict[str, Any], named: str) -> None:
    with pytest.raises(ObserveError) as caught:
        scrape_config(doc)
    assert str(caught.value).startswith(f"{named}:")


@pytest.mark.parametrize("interval_s", [0.0, -1.0, 0.0001])
def test_an_interval_prometheus_cannot_take_is_refused(interval_s: float) -> None:
    with pytest.raises(ObserveError, match="interval_s"):
        scrape_config(cluster_doc(False), interval_s=interval_s)


def test_the_command_writes_a_running_clusters_config_and_refuses_a_bad_document(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "cluster.json").write_text(json.dumps(cluster_doc(True)))
    out = tmp_path / "prometheus" / "prometheus.yml"
    args = ["--cluster", str(tmp_path / "cluster.json"), "--rules", "alerts/rules.yml", "-o", str(out)]
    assert observe_main(args) == 0
    assert out.read_text() == scrape_config(cluster_doc(True), rule_files=("alerts/rules.yml",))
    (tmp_path / "bad.json").write_text(json.dumps({"nodes": [{"id": "n1", "metrics": {"dht": "x"}}]}))
    assert observe_main(["--cluster", str(tmp_path / "bad.json")]) == 2
    assert "nodes[0].metrics.dht: expected HOST:PORT" in capsys.readouterr().err


# ---------------------------------------------------------------- rules and dashboard, statically


def test_the_prometheus_rule_holds_exactly_the_groups_of_rules_yml() -> None:
    resource = yaml.safe_load((DEPLOY / "k8s" / "prometheusrule.yaml").read_text())
    rules = load_rules(RULES.read_text())
    assert resource["kind"] == "PrometheusRule" and resource["apiVersion"] == "monitoring.coreos.com/v1"
    assert resource["spec"]["groups"] == rules["groups"], (
        "deploy/k8s/prometheusrule.yaml is stale: run `python -m launcher.observe --deploy deploy`")
    assert resource == prometheus_rule(rules)


def test_every_alert_has_a_duration_a_severity_a_summary_a_description_and_a_comparison() -> None:
    rules = alert_rules()
    assert {rule["alert"] for rule in rules} == ALERTS
    for rule in rules:
        assert re.fullmatch(r"[0-9]+[smh]", str(rule.get("for", ""))), rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]
    assert len(alert_queries()) == len(ALERTS)


def test_the_dashboard_reads_prometheus_through_an_input_and_every_panel_has_queries() -> None:
    data = dashboard()
    assert [i["name"] for i in data["__inputs"]] == ["DS_PROMETHEUS"]
    assert data["__inputs"][0]["pluginId"] == "prometheus"
    assert data["schemaVersion"] >= 36 and data["uid"]
    source = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
    for variable in data["templating"]["list"]:
        assert variable["datasource"] == source
    panels = data["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        assert panel["datasource"] == source, panel["title"]
        assert panel["targets"], f"{panel['title']} has no query"
        for target in panel["targets"]:
            assert target["datasource"] == source and target["expr"].strip(), panel["title"]
        g = panel["gridPos"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not mine & cells and max(x for x, _ in mine) < 24, f"{panel['title']} overlaps another panel"
        cells |= mine
    used = {name for _, query in dashboard_queries() for name in METRIC_NAME.findall(query)}
    assert used >= DASHBOARD_SERIES, f"the dashboard does not show {sorted(DASHBOARD_SERIES - used)}"
    for _, query in dashboard_queries():
        assert "$" not in query, f"an unfilled variable in {query}"


def test_every_metric_the_dashboard_and_the_alerts_name_is_exported_by_a_service() -> None:
    families = exported_families()
    queries = dashboard_queries() + [(rule["alert"], rule["expr"]) for rule in alert_rules()]
    unknown = {name for _, query in queries for name in METRIC_NAME.findall(query)
               if family_of(name, families) is None}
    assert not unknown, f"no service exports {sorted(unknown)}"


def test_closed_label_sets_start_at_zero_and_cover_what_the_code_counts() -> None:
    registry = CollectorRegistry()
    ConsensusMetrics(registry)
    DhtMetrics(registry)
    text = generate_latest(registry).decode()
    for reason in PROPOSAL_FAILURE_REASONS:
        assert f'fleetsuit_server_proposals_failed_total{{reason="{reason}"}} 0.0' in text
    for kind in REPAIR_KINDS:
        assert f'fleetsuit_dht_repair_actions_total{{kind="{kind}"}} 0.0' in text
    counted = re.findall(r'proposals_failed\.labels\("(\w+)"\)',
                         (ROOT / "services/consensus/runtime/submissions.py").read_text())
    assert counted and set(counted) <= set(PROPOSAL_FAILURE_REASONS)
    repaired = re.findall(r'repair_actions\.labels\("(\w+)"\)', (ROOT / "services/dht/node.py").read_text())
    assert repaired and set(repaired) <= set(REPAIR_KINDS)


def test_a_table_gauge_has_the_series_its_reader_returns_when_scraped() -> None:
    registry = CollectorRegistry()
    gauge = TableGauge("fleetsuit_test_table", "A table.", ["release", "outcome"], registry)
    assert "fleetsuit_test_table{" not in generate_latest(registry).decode()
    table: dict[tuple[str, ...], float] = {("r@1", "installed"): 3.0}
    gauge.bind(lambda: table)
    table[("r@1", "failed")] = 1.0  # read at scrape, not at bind
    text = generate_latest(registry).decode()
    assert 'fleetsuit_test_table{outcome="installed",release="r@1"} 3.0' in text
    assert 'fleetsuit_test_table{outcome="failed",release="r@1"} 1.0' in text


def test_promtool_accepts_the_rules_a_generated_config_and_every_dashboard_query(tmp_path: Path) -> None:
    promtool = binary("promtool")
    shutil.copy(RULES, tmp_path / "rules.yml")
    config = write_scrape_config(cluster_doc(True), tmp_path / "prometheus.yml", interval_s=1.0)
    # Each query as a recording rule: promtool parses every expression.
    queries = dashboard_queries() + alert_queries()
    recorded = {"groups": [{"name": "queries", "rules": [
        {"record": f"fleetsuit_query:{i}", "expr": query} for i, (_, query) in enumerate(queries)]}]}
    (tmp_path / "queries.yml").write_text(yaml.safe_dump(recorded))
    for args in (["check", "rules", str(RULES)], ["check", "config", str(config)],
                 ["check", "rules", str(tmp_path / "queries.yml")]):
        out = subprocess.run([promtool, *args], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, f"promtool {' '.join(args)}:\n{out.stdout}\n{out.stderr}"


# ---------------------------------------------------------------- the alerts fire when they should


def _series(name: str, labels: dict[str, str], values: str) -> dict[str, str]:
    inner = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return {"series": f"{name}{{{inner}}}", "values": values}


def _firing(alert: str, at: str, labels: list[dict[str, str]]) -> dict[str, Any]:
    """The ALERTS series of ``alert`` firing at ``at``, one per labels."""
    return {"expr": f'ALERTS{{alertname="{alert}",alertstate="firing"}}', "eval_time": at,
            "exp_samples": [{"labels": "ALERTS{" + ",".join(
                f'{k}="{v}"' for k, v in {"alertname": alert, "alertstate": "firing", **lab}.items()) + "}",
                "value": 1} for lab in labels]}


def test_each_alert_fires_on_the_series_it_watches_and_not_on_a_healthy_cluster(tmp_path: Path) -> None:
    promtool = binary("promtool")
    n1 = {"job": "fleetsuit-consensus", "node": "n1"}
    n2 = {"job": "fleetsuit-consensus", "node": "n2"}
    g1, g2 = ({"job": "fleetsuit-gateway", "node": n} for n in ("n1", "n2"))
    d1 = {"job": "fleetsuit-dht", "node": "n1"}
    series = [
        _series("fleetsuit_server_has_leader", n1, "1 0x10"), _series("fleetsuit_server_has_leader", n2, "1x10"),
        # n1 sees a change a minute; n2 one in all.
        _series("fleetsuit_server_leader_changes_seen_total", n1, "0+1x30"),
        _series("fleetsuit_server_leader_changes_seen_total", n2, "0 1x30"),
        _series("fleetsuit_server_proposals_failed_total", {**n1, "reason": "no_leader"}, "0+10x30"),
        _series("fleetsuit_server_proposals_failed_total", {**n2, "reason": "no_leader"}, "0x30"),
        _series("fleetsuit_dht_replicas_missing", d1, "2x30"),
        _series("fleetsuit_releases", {**n1, "state": "halted"}, "0 0 1x10"),
        _series("fleetsuit_releases", {**n2, "state": "halted"}, "0 0 1x10"),
        _series("fleetsuit_gateway_sessions", g1, "0x30"), _series("fleetsuit_gateway_sessions", g2, "40x30"),
    ]
    healthy = [
        _series("fleetsuit_server_has_leader", n1, "1x30"),
        _series("fleetsuit_server_leader_changes_seen_total", n1, "1x30"),
        _series("fleetsuit_server_proposals_failed_total", {**n1, "reason": "no_leader"}, "0x30"),
        _series("fleetsuit_dht_replicas_missing", d1, "0x30"),
        _series("fleetsuit_releases", {**n1, "state": "halted"}, "0x30"),
        _series("fleetsuit_gateway_sessions", g1, "0x30"), _series("fleetsuit_gateway_sessions", g2, "0x30"),
    ]
    n1_only = {k: n1[k] for k in ("job", "node")}
    checks = [
        _firing("FleetsuitNoLeader", "5m", [{**n1_only, "severity": "critical"}]),
        _firing("FleetsuitFrequentLeaderChanges", "25m", [{**n1_only, "severity": "warning"}]),
        _firing("FleetsuitProposalsFailing", "25m", [{**n1_only, "severity": "warning"}]),
        _firing("FleetsuitDhtReplicasMissing", "25m", [{**d1, "severity": "warning"}]),
        _firing("FleetsuitRolloutHalted", "5m", [{"severity": "warning"}]),
        _firing("FleetsuitGatewayWithoutSessions", "25m", [{**g1, "severity": "warning"}]),
    ]
    quiet: list[dict[str, Any]] = [{"expr": 'ALERTS{alertstate="firing"}', "eval_time": at, "exp_samples": []} for at in ("5m", "25m")]
    tests = {"rule_files": [str(RULES)], "evaluation_interval": "1m", "tests": [
        {"interval": "1m", "input_series": series, "promql_expr_test": checks},
        {"interval": "1m", "input_series": healthy, "promql_expr_test": quiet},
    ]}
    assert {c["expr"].split('"')[1] for c in checks} == ALERTS
    (tmp_path / "alerts_test.yml").write_text(yaml.safe_dump(tests, sort_keys=False))
    out = subprocess.run([promtool, "test", "rules", str(tmp_path / "alerts_test.yml")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"{out.stdout}\n{out.stderr}"


# ---------------------------------------------------------------- a real Prometheus, a running cluster

DEVICES = 24
SEED = "observability"
PREFIX = "obs-"
NODES = ("n1", "n2", "n3")
SCRAPE_S = 1.0
TARGETS_UP_S = 60.0
QUERIES_S = 120.0
POLL_S = 1.0  # between rounds of queries: a scrape interval


class Prometheus:
    """``prometheus`` on a free loopback port, its data and log under ``root``."""

    def __init__(self, root: Path, config: Path) -> None:
        self.port = free_port()
        self.log = root / "prometheus.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [binary("prometheus"), f"--config.file={config}", f"--storage.tsdb.path={root / 'tsdb'}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
                stdout=log, stderr=subprocess.STDOUT)

    def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/PATH; the ``data`` of a successful answer."""
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                body = json.loads(resp.read())
        except urllib.error.HTTPError as exc:  # a bad query: 400 with the parser's message
            body = json.loads(exc.read())
        if body.get("status") != "success":
            raise AssertionError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.api("query", query=expr)["result"]
        return result

    def close(self) -> None:
        stop_processes([self.proc])


def _append(endpoint: str, count: int) -> None:
    with grpc.insecure_channel(endpoint) as channel:
        stub = pb_grpc.LedgerStub(channel)
        for i in range(count):
            entry = pb.LedgerEntry(client_id="observability-test", request_id=i + 1,
                                   app=pb.AppEntry(payload=f"entry {i}".encode()))
            stub.Submit(pb.SubmitRequest(entry=entry), timeout=30)


def _all_targets_up(prom: Prometheus, expected: int) -> list[dict[str, Any]] | None:
    targets: list[dict[str, Any]] = prom.api("targets", state="active")["activeTargets"]
    return targets if len(targets) == expected and all(t["health"] == "up" for t in targets) else None


def _value(prom: Prometheus, expr: str) -> float | None:
    result = prom.query(expr)
    return float(result[0]["value"][1]) if len(result) == 1 else None


@pytest.mark.slow
@pytest.mark.asyncio
async def test_a_real_prometheus_scraping_a_cluster_has_series_for_every_dashboard_query_and_alert(
    tmp_path: Path,
) -> None:
    binary("prometheus")  # before anything starts
    key = generate(KeyAlgorithm.ED25519)  # a CI publisher's, its public key the cluster's trust anchor
    key_pem, anchor = private_pem(key), tmp_path / "ci.pub.pem"
    anchor.write_bytes(public_pem(key.public_key()))
    gateway_flags = ["--heartbeat-interval-ms", "2000", "--offer-lead-ms", "1000",
                     "--directory-refresh-ms", "1000"]
    # Supervised nodes, as `cluster up` and `make run` start them: the node
    # supervisors' metrics (child restarts) are scraped too.
    cluster = LocalCluster(3, tmp_path / "data", trust_anchors=[anchor], extra_args={"gateway": gateway_flags},
                           supervised=True)
    client = FleetClient(cluster.endpoint("n1"))
    prom: Prometheus | None = None
    stop = asyncio.Event()
    task: asyncio.Task[dict[str, Any]] | None = None
    try:
        await asyncio.to_thread(wait_until, lambda: gateways_serving(cluster, NODES), 60, "every gateway answering")
        await asyncio.to_thread(wait_until, lambda: client.status().leader_id, 60, "a leader")
        admin = DeviceAdmin(client)
        for device_id, pem in fleet_public_pems(DEVICES, SEED, PREFIX).items():
            await asyncio.to_thread(admin.enroll, device_id, "default", pem)
        # A fleet whose health check fails on a quarter of the devices: the
        # release is installed by some, failed by the others.
        sim = Simulator(SimulatorConfig(
            count=DEVICES, gateways=tuple(cluster.endpoint(n, "gateway") for n in NODES),
            trust_anchor_paths=(anchor,), seed=SEED, id_prefix=PREFIX, components=("firmware",),
            fail_fraction=0.25, duration_s=600.0, summary_interval_s=60.0))
        task = asyncio.create_task(sim.run(stop))
        release = (await asyncio.to_thread(
            client.push_release, b"firmware 1 " * 4096, component="firmware", sequence=1, key_pem=key_pem)).release_id

        def every_outcome() -> Any:
            summary = admin.summary()
            outcome = next((o for o in summary.outcomes if o.release_id == release), None)
            done = outcome is not None and outcome.installed + outcome.failed == DEVICES
            return summary if done else None

        summary = await asyncio.to_thread(wait_until, every_outcome, 120, "every device's outcome in the ledger")
        outcome = next(o for o in summary.outcomes if o.release_id == release)
        assert outcome.installed and outcome.failed, f"{outcome}: want both outcomes"
        await asyncio.to_thread(_append, cluster.endpoint("n2"), 3)

        root = tmp_path / "prometheus"
        root.mkdir()
        shutil.copy(RULES, root / "rules.yml")
        config = write_scrape_config(cluster.doc, root / "prometheus.yml", interval_s=SCRAPE_S)
        prom = Prometheus(root, config)
        jobs = ("consensus", "dht", "manifest", "gateway", "node")
        targets = await asyncio.to_thread(
            wait_until, lambda: _all_targets_up(prom, len(jobs) * len(NODES)), TARGETS_UP_S, "every target up")
        assert sorted((t["labels"]["job"], t["labels"]["node"]) for t in targets) == sorted(
            (f"fleetsuit-{s}", n) for s in jobs for n in NODES)

        # Every query and alert expression, until each has a series (rates
        # need two scrapes); what still has none at the deadline fails.
        pending = {f"dashboard {name}": q for name, q in dashboard_queries()}
        pending.update({f"alert {name}": q for name, q in alert_queries()})
        errors: dict[str, str] = {}
        deadline = time.monotonic() + QUERIES_S
        while pending and time.monotonic() < deadline:
            for name, query in list(pending.items()):
                try:
                    if await asyncio.to_thread(prom.query, query):
                        del pending[name]
                except AssertionError as exc:
                    errors[name] = str(exc)
            if pending:
                await asyncio.sleep(POLL_S)  # the next scrape
        assert not pending, "no series for:\n" + "\n".join(
            f"  {name}: {q}  {errors.get(name, '')}" for name, q in pending.items())

        # The ledger's gauges say what the ledger says; the gateways hold every device.
        version = release  # a release id names its component (firmware@1)
        expected = {
            f'max(fleetsuit_devices_by_version{{version="{version}"}})': summary.devices_by_version[version],
            f'max(fleetsuit_release_outcomes{{release="{release}",outcome="installed"}})': outcome.installed,
            f'max(fleetsuit_release_outcomes{{release="{release}",outcome="failed"}})': outcome.failed,
            "sum(fleetsuit_gateway_sessions)": DEVICES,
            'max(fleetsuit_devices{state="accepted"})': DEVICES,
        }

        def agree() -> bool:
            return all(_value(prom, q) == float(v) for q, v in expected.items())

        await asyncio.to_thread(wait_until, agree, 30, f"Prometheus' values {expected}", POLL_S)
        # Prometheus loaded every alert and evaluated each without error.
        def evaluated() -> list[dict[str, Any]] | None:
            rules = [r for g in prom.api("rules", type="alert")["groups"] for r in g["rules"]]
            return rules if all(r["health"] == "ok" for r in rules) else None

        rules = await asyncio.to_thread(wait_until, evaluated, 30, "every alert rule evaluated", POLL_S)
        assert {r["name"] for r in rules} == ALERTS
    finally:
        if task is not None:
            stop.set()
            await asyncio.wait_for(task, 60)
        if prom is not None:
            prom.close()
        client.close()
        cluster.close()
