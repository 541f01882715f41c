"""The node config file (``launcher/node/config.py``): one test per rule —
what is refused and how it is named, the precedence of the environment
over the file over what the node derives, the wiring between a node's
services, the example config, and the commands the supervisor will run
(each parsed by the service's own config class). No process is started."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from fleetsuit.cli import EXIT_USAGE
from fleetsuit.settings import ConfigError
from launcher.cluster import node_tables, plan_nodes
from launcher.node import cli as node_cli
from launcher.node.config import (
    KINDS,
    NodeConfig,
    identity_variables,
    keys_from_flags,
    parse,
    render,
)
from launcher.node.supervisor import Backoff
from services.consensus.config import ConsensusConfig
from services.dht.config import DhtConfig
from services.gateway.config import GatewayConfig
from services.manifest.config import ManifestConfig

CLASSES: dict[str, type[Any]] = {
    "consensus": ConsensusConfig, "dht": DhtConfig, "manifest": ManifestConfig, "gateway": GatewayConfig,
}


def _refused(text: str, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        parse(text, env={} if env is None else env)
    return str(caught.value)


# ------------------------------------------------------------ refusals


@pytest.mark.parametrize("table", ["gateways", "nodes", "etcd"])
def test_an_unknown_table_is_refused_naming_it(table: str) -> None:
    message = _refused(f"[{table}]\nx = 1\n")
    assert f"[{table}]: unknown table" in message


def test_a_key_outside_any_table_is_refused() -> None:
    assert "id: a key outside any table" in _refused('id = "n1"\n')


@pytest.mark.parametrize("table", ["node", "statefulset", "consensus", "dht", "manifest", "gateway"])
def test_an_unknown_key_is_refused_naming_table_and_key(table: str) -> None:
    message = _refused(f"[{table}]\nbogus_key = 1\n")
    assert message.startswith(f"[{table}] bogus_key: unknown key"), message


def test_a_misspelt_key_gets_a_suggestion() -> None:
    assert "did you mean election_ticks?" in _refused("[consensus]\nelection_tick = 12\n")


@pytest.mark.parametrize(
    ("table", "key", "value", "why"),
    [
        ("consensus", "election_ticks", '"abc"', "invalid literal"),
        ("consensus", "election_ticks", "true", "expected an integer"),
        ("consensus", "election_ticks", "1", "greater than heartbeat_ticks"),
        ("gateway", "heartbeat_interval_ms", "-5", "must be positive"),
        ("gateway", "consensus_endpoint", '"nowhere"', "is not HOST:PORT"),
        ("dht", "k", "50", "must not exceed bucket_size"),
        ("manifest", "max_envelope_bytes", "0", "must be positive"),
        ("consensus", "join", '"maybe"', "not a boolean"),
        ("consensus", "peers", '["n1=127.0.0.1:1", "n2"]', "not of the form id=host:port"),
        ("node", "base_port", "70000", "must be between 1 and"),
        ("node", "restart_backoff_max_ms", "10", "must not be below restart_backoff_initial_ms"),
        ("node", "health_port", '"eighty"', "invalid literal"),
        ("statefulset", "bootstrap_replicas", "0", "at least 1"),
    ],
)
def test_a_bad_value_is_refused_naming_table_and_key(table: str, key: str, value: str, why: str) -> None:
    message = _refused(f"[{table}]\n{key} = {value}\n")
    assert f"[{table}] {key}" in message and why in message, message


def test_a_bad_value_from_the_environment_names_the_variable_and_the_key() -> None:
    message = _refused("", {"FLEETSUIT_CONSENSUS_ELECTION_TICKS": "abc"})
    assert "FLEETSUIT_CONSENSUS_ELECTION_TICKS ([consensus] election_ticks)" in message
    message = _refused("", {"FLEETSUIT_GATEWAY_HEARTBEAT_INTERVAL_MS": "-5"})
    assert "[gateway] heartbeat_interval_ms" in message and "FLEETSUIT_GATEWAY_HEARTBEAT_INTERVAL_MS" in message


@pytest.mark.parametrize("variable", ["FLEETSUIT_GATEWAY_HEARTBEAT_INTERVAL", "FLEETSUIT_NODE_BASEPORT"])
def test_an_unknown_variable_of_a_known_prefix_is_refused(variable: str) -> None:
    assert f"{variable}: unknown environment variable" in _refused("", {variable: "1"})


def test_a_file_that_is_not_toml_is_refused() -> None:
    assert "is not valid TOML" in _refused("[node\n")


# ------------------------------------------------------------ precedence


def test_the_environment_beats_the_file_which_beats_what_the_node_derives() -> None:
    text = "[node]\nbase_port = 8000\n[gateway]\nconsensus_endpoint = \"10.0.0.9:7101\"\n"
    derived = parse("[node]\nbase_port = 8000\n", env={})
    assert derived.children["gateway"].settings.consensus_endpoint == "127.0.0.1:8001"

    from_file = parse(text, env={})
    assert from_file.children["gateway"].settings.consensus_endpoint == "10.0.0.9:7101"
    assert "--consensus-endpoint=10.0.0.9:7101" in from_file.children["gateway"].command

    env = {"FLEETSUIT_GATEWAY_CONSENSUS_ENDPOINT": "10.0.0.7:7101", "FLEETSUIT_NODE_BASE_PORT": "9000"}
    from_env = parse(text, env=env)
    assert from_env.children["gateway"].settings.consensus_endpoint == "10.0.0.7:7101"
    assert "--consensus-endpoint=10.0.0.7:7101" in from_env.children["gateway"].command
    assert from_env.base_port == 9000  # [node] keys too
    assert from_env.children["dht"].settings.listen == "127.0.0.1:9002"


def test_a_service_default_is_left_to_the_service() -> None:
    config = parse("", env={})
    assert config.children["consensus"].settings.tick_ms == ConsensusConfig().tick_ms
    assert not any(arg.startswith("--tick-ms") for arg in config.children["consensus"].command)


def test_typed_and_string_values_give_the_same_setting() -> None:
    typed = parse("[gateway]\nheartbeat_interval_ms = 1500\n[dht]\nseeds = [\"a:1\", \"b:2\"]\n", env={})
    text = parse("[gateway]\nheartbeat_interval_ms = \"1500\"\n[dht]\nseeds = \"a:1,b:2\"\n", env={})
    assert typed.children == text.children
    assert typed.children["dht"].settings.seeds == ("a:1", "b:2")


# ------------------------------------------------------------ derived wiring


def test_the_node_wires_its_services_together() -> None:
    config = parse('[node]\nid = "edge-7"\ncluster_id = "fs-test"\ndata = "/srv/fs"\nbase_port = 7200\n'
                   'host = "edge-7.example"\nlisten_host = "0.0.0.0"\n', env={})
    consensus = config.children["consensus"].settings
    dht = config.children["dht"].settings
    manifest = config.children["manifest"].settings
    gateway = config.children["gateway"].settings
    for settings in (consensus, dht, manifest, gateway):
        assert settings.node_id == "edge-7" and settings.cluster_id == "fs-test"
    assert consensus.data_dir == dht.data_dir == gateway.data_dir == "/srv/fs"
    # Each service binds listen_host at base_port + its offset ...
    assert (consensus.listen, dht.listen, manifest.listen, gateway.listen) == (
        "0.0.0.0:7201", "0.0.0.0:7202", "0.0.0.0:7203", "0.0.0.0:7204")
    assert gateway.http_listen == "0.0.0.0:7205"
    assert [s.metrics_port for s in (consensus, dht, manifest, gateway)] == [7206, 7207, 7208, 7209]
    # ... and is reached at host: the addresses the others are given.
    assert consensus.peers == (("edge-7", "edge-7.example:7201"),)
    assert consensus.dht_endpoint == "edge-7.example:7202" == gateway.dht_endpoint
    assert consensus.manifest_endpoint == "edge-7.example:7203"
    assert consensus.gateway_endpoint == "edge-7.example:7204" == gateway.advertise
    assert gateway.consensus_endpoint == "edge-7.example:7201"
    assert gateway.advertise_http == "edge-7.example:7205" == config.downloads
    assert dht.advertise == "edge-7.example:7202"
    assert {n: c.endpoint for n, c in config.children.items()} == {
        "consensus": "edge-7.example:7201", "dht": "edge-7.example:7202",
        "manifest": "edge-7.example:7203", "gateway": "edge-7.example:7204"}
    # The supervisor asks health over loopback when the services bind every address.
    assert config.children["dht"].probe == "127.0.0.1:7202"
    assert config.health_url == "http://edge-7.example:7200/healthz"


def test_each_command_is_what_the_service_itself_parses() -> None:
    config = parse("[consensus]\ntick_ms = 10\n[gateway]\nheartbeat_interval_ms = 1000\n", env={})
    for name, child in config.children.items():
        assert child.command[1:3] == ("-m", KINDS[name].module)
        assert CLASSES[name].from_args(list(child.command[3:]), {}) == child.settings


def test_health_port_can_be_moved_or_turned_off() -> None:
    assert parse("[node]\nhealth_port = 9999\n", env={}).health_url == "http://127.0.0.1:9999/healthz"
    assert parse("[node]\nhealth_port = 0\n", env={}).health_url is None


# ------------------------------------------------------------ the example config


def test_the_example_config_parses_back_to_the_defaults() -> None:
    text = node_cli.example_config()
    assert parse(text, env={}) == parse("", env={})


def test_the_example_config_documents_every_key_with_its_variable() -> None:
    text = node_cli.example_config()
    for table in ("[node]", "[statefulset]", "[consensus]", "[dht]", "[manifest]", "[gateway]"):
        assert table in text
    for name in KINDS:
        for field in CLASSES[name].__dataclass_fields__.values():
            assert re.search(rf"^# {field.name} = ", text, re.M), f"[{name}] {field.name} missing"
    assert "FLEETSUIT_NODE_BASE_PORT" in text and "FLEETSUIT_GATEWAY_HEARTBEAT_INTERVAL_MS" in text
    assert "derived: [node] host:base_port+1" in text


# ------------------------------------------------------------ a local cluster's nodes


def test_a_local_clusters_node_files_give_the_unsupervised_ports_and_peers(tmp_path: Path) -> None:
    nodes = plan_nodes(3, tmp_path, 7100)
    text = render(node_tables(nodes[1], nodes, "fs-x", extra_args={"gateway": ["--heartbeat-interval-ms", "700"]}))
    config = parse(text, env={})
    consensus = config.children["consensus"].settings
    assert consensus.node_id == "n2" and consensus.listen == "127.0.0.1:7111"
    assert consensus.peers == (("n1", "127.0.0.1:7101"), ("n2", "127.0.0.1:7111"), ("n3", "127.0.0.1:7121"))
    assert config.children["dht"].settings.seeds == ("127.0.0.1:7102", "127.0.0.1:7122")
    assert config.children["gateway"].settings.heartbeat_interval_ms == 700
    assert config.health_url == "http://127.0.0.1:7110/healthz"
    assert config.log_dir == tmp_path / "n2"


def test_flags_become_keys_of_their_table() -> None:
    assert keys_from_flags("gateway", ["--heartbeat-interval-ms", "700", "--grace-ms=5"]) == {
        "heartbeat_interval_ms": "700", "grace_ms": "5"}
    assert keys_from_flags("consensus", ["--join", "--trust-anchor", "a.pem", "--trust-anchor", "b.pem"]) == {
        "join": True, "trust_anchors": ["a.pem", "b.pem"]}
    with pytest.raises(ValueError, match="no flag --nope"):
        keys_from_flags("dht", ["--nope", "1"])


def test_cluster_up_keeps_per_node_variables_from_its_supervisors() -> None:
    hidden = identity_variables()
    assert {"FLEETSUIT_NODE_ID", "FLEETSUIT_NODE_BASE_PORT", "FLEETSUIT_PEERS", "FLEETSUIT_CLUSTER_ID",
            "FLEETSUIT_GATEWAY_CONSENSUS_ENDPOINT"} <= hidden
    assert "FLEETSUIT_CONSENSUS_TICK_MS" not in hidden  # tuning passes through


# ------------------------------------------------------------ [statefulset]


def _statefulset(env: dict[str, str], extra: str = "") -> NodeConfig:
    pytest.importorskip("launcher.statefulset")
    text = ("[node]\nbase_port = 7100\n[statefulset]\nenabled = true\nbootstrap_replicas = 3\n"
            'address_template = "127.0.0.1:{ordinal_port}"\n' + extra)
    return parse(text, env=env)


def test_a_statefulset_pod_takes_its_name_and_peers_from_its_ordinal() -> None:
    config = _statefulset({"HOSTNAME": "fleetsuit-1"})
    consensus = config.children["consensus"].settings
    assert config.node.id == "fleetsuit-1" and consensus.node_id == "fleetsuit-1"
    assert config.base_port == 7110  # {ordinal_port}: pods on one host, 10 ports apart
    assert consensus.listen == "127.0.0.1:7111" and not consensus.join
    assert dict(consensus.peers) == {"fleetsuit-0": "127.0.0.1:7101", "fleetsuit-1": "127.0.0.1:7111",
                                     "fleetsuit-2": "127.0.0.1:7121"}
    assert config.children["dht"].settings.seeds == ("127.0.0.1:7102", "127.0.0.1:7122")


def test_a_statefulset_pod_beyond_the_bootstrap_ordinals_joins() -> None:
    config = _statefulset({"FLEETSUIT_NODE_ID": "fleetsuit-4"})
    consensus = config.children["consensus"].settings
    assert consensus.join and "--join" in config.children["consensus"].command
    assert dict(consensus.peers)["fleetsuit-4"] == "127.0.0.1:7141"
    assert config.plan is not None and config.plan.join


def test_a_pod_name_without_an_ordinal_is_refused() -> None:
    message = str(pytest.raises(ConfigError, _statefulset, {"HOSTNAME": "laptop"}).value)
    assert message.startswith("[statefulset]") and "laptop" in message


# ------------------------------------------------------------ the command line


def test_check_prints_the_four_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "node.toml"
    path.write_text(f'[node]\ndata = "{tmp_path}"\nbase_port = 7300\n')
    assert node_cli.main(["--config", str(path), "--check"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in out[1:]] == ["consensus", "dht", "manifest", "gateway"]
    assert "services.gateway" in out[4] and "--consensus-endpoint=127.0.0.1:7301" in out[4]
    assert not (tmp_path / "node.json").exists()


def test_a_bad_config_exits_2_naming_the_key_before_anything_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "node.toml"
    path.write_text(f'[node]\ndata = "{tmp_path}"\n[gateway]\nheartbeat_interval_ms = -5\n')
    assert node_cli.main(["--config", str(path)]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "[gateway] heartbeat_interval_ms" in err and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == [path]
    assert node_cli.main(["--config", str(tmp_path / "missing.toml")]) == EXIT_USAGE
    assert "cannot read" in capsys.readouterr().err


# ------------------------------------------------------------ restart delays


def test_restart_delays_double_up_to_the_cap_and_reset_after_a_stable_run() -> None:
    backoff = Backoff(initial_ms=100, max_ms=1000, stable_after_ms=5000)
    assert [backoff.after_exit(10) for _ in range(6)] == [100, 200, 400, 800, 1000, 1000]
    assert backoff.after_exit(5000) == 100  # ran long enough: the first delay again
    assert backoff.after_exit(10) == 200
