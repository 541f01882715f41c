"""The gateway's settings: every one has help, a default and a variable;
a bad value is refused naming the setting; derived values in one place."""

from __future__ import annotations

import pytest

from fleetsuit.settings import ConfigError, document
from services.gateway.__main__ import parse_config
from services.gateway.config import ENV_PREFIX, GatewayConfig


def test_the_defaults_are_valid_and_derived_values_follow_them() -> None:
    config = GatewayConfig.from_env({})
    assert config.listen == "127.0.0.1:7404" and config.http_listen == "127.0.0.1:7405"
    assert config.heartbeat_interval_ms == 10_000 and config.missed_heartbeats == 3
    assert config.id == config.node_id  # the gateway id defaults to the node's
    assert config.cache_dir == "data/gateway/cache"
    assert config.metrics_enabled and config.grace_s == 2.0


def test_flags_then_environment_then_defaults() -> None:
    config = parse_config(
        ["--node-id", "n1", "--data", "/tmp/n1", "--heartbeat-interval-ms", "500"],
        {"FLEETSUIT_GATEWAY_OFFER_LEAD_MS": "0", "FLEETSUIT_GATEWAY_GATEWAY_ID": "gw-a",
         "FLEETSUIT_CLUSTER_ID": "fs-1", "FLEETSUIT_GATEWAY_HEARTBEAT_INTERVAL_MS": "9"},
    )  # fmt: skip
    assert config.node_id == "n1" and config.id == "gw-a" and config.cluster_id == "fs-1"
    assert config.heartbeat_interval_ms == 500 and config.offer_lead_ms == 0
    assert config.cache_dir == "/tmp/n1/cache"


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"FLEETSUIT_GATEWAY_LISTEN": "nowhere"}, "listen"),
        ({"FLEETSUIT_GATEWAY_HTTP_LISTEN": "127.0.0.1:99999"}, "http_listen"),
        ({"FLEETSUIT_GATEWAY_ADVERTISE": "host-without-port"}, "advertise"),
        ({"FLEETSUIT_GATEWAY_CONSENSUS_ENDPOINT": "localhost"}, "consensus_endpoint"),
        ({"FLEETSUIT_GATEWAY_HEARTBEAT_INTERVAL_MS": "0"}, "heartbeat_interval_ms"),
        ({"FLEETSUIT_GATEWAY_MISSED_HEARTBEATS": "-1"}, "missed_heartbeats"),
        ({"FLEETSUIT_GATEWAY_CACHE_MAX_BYTES": "0"}, "cache_max_bytes"),
        ({"FLEETSUIT_GATEWAY_OFFER_LEAD_MS": "-5"}, "offer_lead_ms"),
        ({"FLEETSUIT_GATEWAY_METRICS_PORT": "70000"}, "metrics_port"),
        ({"FLEETSUIT_GATEWAY_LOG_FORMAT": "xml"}, "log_format"),
        ({"FLEETSUIT_GATEWAY_DIRECTORY_REFRESH_MS": "abc"}, "FLEETSUIT_GATEWAY_DIRECTORY_REFRESH_MS"),
        ({"FLEETSUIT_GATEWAY_HEARTBEATS": "3"}, "FLEETSUIT_GATEWAY_HEARTBEATS"),  # unknown
    ],
)
def test_a_bad_setting_is_refused_naming_it(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        GatewayConfig.from_env(env)


def test_every_setting_has_help_a_default_and_a_variable() -> None:
    rows = document(GatewayConfig, ENV_PREFIX)
    names = {env for _flag, env, _default, _help in rows}
    for shared in ("FLEETSUIT_NODE_ID", "FLEETSUIT_CLUSTER_ID", "FLEETSUIT_METRICS_HOST"):
        assert shared in names
    for flag, env, default, help_text in rows:
        assert flag.startswith("--") and env.startswith("FLEETSUIT_") and default and help_text
    assert "--data" in {flag for flag, *_ in rows}
