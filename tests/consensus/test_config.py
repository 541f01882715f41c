"""Consensus settings from flags and the environment: the log's byte bound."""

from __future__ import annotations

import pytest

from fleetsuit.settings import ConfigError
from services.consensus.config import ConsensusConfig


def test_the_log_byte_bound_comes_from_a_flag_or_the_environment() -> None:
    assert ConsensusConfig.from_args(["--node-id", "n1", "--data", "d"], env={}).compact_log_bytes == 128 * 1024 * 1024
    env = {"FLEETSUIT_CONSENSUS_COMPACT_LOG_BYTES": str(8 * 1024 * 1024)}
    assert ConsensusConfig.from_args(["--node-id", "n1", "--data", "d"], env=env).compact_log_bytes == 8 * 1024 * 1024
    flag = ["--node-id", "n1", "--data", "d", "--compact-log-bytes", str(4 * 1024 * 1024)]
    assert ConsensusConfig.from_args(flag, env=env).compact_log_bytes == 4 * 1024 * 1024


def test_a_log_byte_bound_below_one_mib_is_refused() -> None:
    with pytest.raises(ConfigError, match="compact_log_bytes must be at least 1 MiB"):
        ConsensusConfig.from_args(["--node-id", "n1", "--data", "d", "--compact-log-bytes", "4096"], env={})
