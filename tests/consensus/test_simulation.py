"""Deterministic whole-cluster simulation of the Raft core (tests/consensus/sim).

Each seed is one test: a chaos phase (drops, delays, duplicates, reordering,
partitions, crashes, restarts, leadership transfers) with every safety
invariant checked after every step, then healing and a liveness bound.
Even seeds run 3 nodes, odd seeds 5.

FLEETSUIT_SIM_SEEDS=N runs seeds 0..N-1 (default 500); FLEETSUIT_SIM_SEED=N
runs exactly seed N.
"""

from __future__ import annotations

import os

import pytest

from .sim.scenario import Plan, run

_DEFAULT_SEEDS = 500


def _seeds() -> list[int]:
    one = os.environ.get("FLEETSUIT_SIM_SEED")
    if one is not None:
        return [int(one)]
    return list(range(int(os.environ.get("FLEETSUIT_SIM_SEEDS", _DEFAULT_SEEDS))))


def plan_for(seed: int) -> Plan:
    # Half the seeds read from the leader lease (3 and 5 nodes alike).
    return Plan(size=3 if seed % 2 == 0 else 5, lease_reads=seed % 4 >= 2)


@pytest.mark.parametrize("seed", _seeds())
def test_simulation_seed(seed: int) -> None:
    try:
        run(seed, plan_for(seed))
    except AssertionError as e:
        replay = f"FLEETSUIT_SIM_SEED={seed} .venv/bin/pytest tests/consensus/test_simulation.py -q"
        raise AssertionError(
            f"seed {seed} ({plan_for(seed).size} nodes): {e}\nreplay: {replay}"
        ) from e
