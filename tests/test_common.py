"""The common package's shape pieces: settings, logs."""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass

import pytest

from fleetsuit.logs import RateLimitedLog, log_start, setup_logging
from fleetsuit.settings import ConfigError, document, parse_config, setting


@dataclass(frozen=True)
class _Config:
    name: str = setting("n1", "a name")
    count: int = setting(3, "how many")
    seeds: tuple[str, ...] = setting((), "a list")
    fast: bool = setting(False, "a switch")
    shared: str = setting("x", "a shared one", env="SHARED_NAME", flag="--shared-flag")

    def validate(self) -> None:
        if self.count < 1:
            raise ConfigError("count must be >= 1")


def test_a_flag_beats_the_environment_which_beats_the_default() -> None:
    assert parse_config(_Config, [], {}, prog="t", env_prefix="T_") == _Config()
    env = {"T_COUNT": "5", "T_SEEDS": "a:1, b:2", "T_FAST": "yes", "SHARED_NAME": "y"}
    got = parse_config(_Config, [], env, prog="t", env_prefix="T_")
    assert (got.count, got.seeds, got.fast, got.shared) == (5, ("a:1", "b:2"), True, "y")
    got = parse_config(_Config, ["--count", "7", "--no-fast", "--shared-flag", "z"], env, prog="t", env_prefix="T_")
    assert (got.count, got.fast, got.shared) == (7, False, "z")


@pytest.mark.parametrize(
    ("argv", "env", "named"),
    [
        ([], {"T_COUNT": "many"}, "T_COUNT"),
        (["--count", "x"], {}, "--count"),
        ([], {"T_COUNTS": "1"}, "T_COUNTS"),
        ([], {"T_FAST": "maybe"}, "T_FAST"),
        (["--count", "0"], {}, "count must be"),
    ],
)
def test_a_bad_value_or_an_unknown_variable_is_refused_by_name(
    argv: list[str], env: dict[str, str], named: str
) -> None:
    with pytest.raises(ConfigError, match=named):
        parse_config(_Config, argv, env, prog="t", env_prefix="T_")


@dataclass(frozen=True)
class _Repeated:
    keys: tuple[str, ...] = setting((), "keys", parse=lambda raw: tuple(raw.split(";")), repeat=";")


def test_a_repeatable_flag_joins_its_values_as_the_variable_holds_them() -> None:
    got = parse_config(_Repeated, ["--keys", "a.pem", "--keys", "b.pem:classes=x"], {}, prog="t", env_prefix="R_")
    assert got.keys == ("a.pem", "b.pem:classes=x")
    from_env = parse_config(_Repeated, [], {"R_KEYS": "a.pem;b.pem"}, prog="t", env_prefix="R_")
    assert from_env.keys == ("a.pem", "b.pem")
    assert parse_config(_Repeated, ["--keys", "c.pem"], {"R_KEYS": "a.pem"}, prog="t", env_prefix="R_").keys == (
        "c.pem",)


def test_every_setting_is_documented_with_its_default_and_variable() -> None:
    assert document(_Config, "T_") == [
        ("--name", "T_NAME", "n1", "a name"),
        ("--count", "T_COUNT", "3", "how many"),
        ("--seeds", "T_SEEDS", "none", "a list"),
        ("--fast", "T_FAST", "False", "a switch"),
        ("--shared-flag", "SHARED_NAME", "x", "a shared one"),
    ]


def _capture(log_format: str) -> tuple[io.StringIO, logging.Logger]:
    logger = setup_logging("svc", "n7", "INFO", log_format)
    stream = io.StringIO()
    handler = logging.getLogger().handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(stream)
    return stream, logger


def test_json_log_lines_carry_time_level_service_and_node() -> None:
    stream, logger = _capture("json")
    log_start(logger, service="svc", version="1.2", cluster_id="c9", node_id="n7", data_dir="/d",
              addresses={"listen": "127.0.0.1:1"})
    doc = json.loads(stream.getvalue().splitlines()[0])
    assert doc["level"] == "INFO" and doc["service"] == "svc" and doc["node"] == "n7"
    assert doc["time"].endswith("Z") and "T" in doc["time"]
    assert "version=1.2" in doc["msg"] and "cluster=c9" in doc["msg"] and "listen=127.0.0.1:1" in doc["msg"]


def test_text_log_lines_name_service_and_node() -> None:
    stream, logger = _capture("text")
    logger.warning("careful")
    line = stream.getvalue().strip()
    assert " WARNING svc[n7] " in line and line.endswith("careful")


def test_an_unknown_log_format_is_refused() -> None:
    with pytest.raises(ValueError, match="xml"):
        setup_logging("svc", "n7", "INFO", "xml")


def test_a_repeated_line_is_rate_limited_and_counted() -> None:
    stream, logger = _capture("text")
    limited = RateLimitedLog(logger, interval_s=3600)
    assert limited.log("peer-a", logging.WARNING, "peer %s down", "a")
    assert not limited.log("peer-a", logging.WARNING, "peer %s down", "a")
    assert limited.log("peer-b", logging.WARNING, "peer %s down", "b")
    assert stream.getvalue().count("peer a down") == 1 and "peer b down" in stream.getvalue()
