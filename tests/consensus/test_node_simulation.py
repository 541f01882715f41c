"""Deterministic simulation of whole consensus nodes (tests/consensus/nodesim):
the runtime, the ledger machine, certification, compaction and snapshots,
over a fake network, a virtual clock and in-memory storage.

Each seed is one test: chaos (drops, delays, duplicates, partitions,
crashes in the middle of the loop, restarts, snapshots for nodes that were
away) with the invariants checked throughout, then healing and a
convergence bound (one chain everywhere, every acknowledged entry in it,
every block certified). Three seeds in four run 3 nodes, the fourth 5.

FLEETSUIT_NODESIM_SEEDS=N runs seeds 0..N-1 (default 300);
FLEETSUIT_NODESIM_SEED=N runs exactly seed N (a failure prints the command).

Two deterministic scenarios (``nodesim/outcomes.py``, a few seeds each)
pin down what a failed submission's answer promises: a follower cut off
right after it forwarded a submission that then commits answers
OUTCOME_UNKNOWN, never NO_LEADER, and a resubmission anywhere answers the one
application; a submission that never left its node answers a definite
NO_LEADER and never commits.

The last tests inject a bug into the ledger machine, into certification and
into the runtime's outcome tracking, and require the simulation to catch
each: a simulation that cannot fail proves nothing.
"""

from __future__ import annotations

import os

import pytest

from .nodesim import outcomes
from .nodesim.invariants import InvariantViolation
from .nodesim.scenario import Plan, Stats, run

OUTCOME_SEEDS = range(4)

_DEFAULT_SEEDS = 300


def _seeds() -> list[int]:
    one = os.environ.get("FLEETSUIT_NODESIM_SEED")
    if one is not None:
        return [int(one)]
    return list(range(int(os.environ.get("FLEETSUIT_NODESIM_SEEDS", _DEFAULT_SEEDS))))


def plan_for(seed: int) -> Plan:
    if seed % 4 == 3:
        return Plan(size=5, chaos_s=2.5)
    return Plan(size=3, chaos_s=3.0)


def _run(seed: int) -> Stats:
    try:
        return run(seed, plan_for(seed))
    except AssertionError as e:
        replay = (f"FLEETSUIT_NODESIM_SEED={seed} PYTHONHASHSEED=0 "
                  ".venv/bin/pytest tests/consensus/test_node_simulation.py -q -k seed")
        raise AssertionError(f"seed {seed} ({plan_for(seed).size} nodes): {e}\nreplay: {replay}") from e


@pytest.mark.parametrize("seed", _seeds())
def test_node_simulation_seed(seed: int) -> None:
    stats = _run(seed)
    assert stats.acknowledged > 0 and stats.height > 0


def test_the_simulation_exercises_what_it_claims() -> None:
    """A few seeds together crash nodes, install snapshots on nodes that were
    away, and commit entries (else the invariants would hold vacuously)."""
    stats = [_run(seed) for seed in range(8)]
    assert sum(s.crashes for s in stats) >= 8
    assert sum(s.snapshots_installed for s in stats) >= 1
    assert min(s.acknowledged for s in stats) >= 10
    assert sum(s.outcome_unknown for s in stats) >= 1


@pytest.mark.parametrize("seed", OUTCOME_SEEDS)
def test_a_follower_cut_off_after_forwarding_answers_outcome_unknown(seed: int) -> None:
    """Issue 11: the follower forwarded the entry, was cut off the moment
    the leader had it, and the leader committed it. At its deadline the
    follower knows no leader, but must not say NO_LEADER (the entry never
    left this node): its answer is OUTCOME_UNKNOWN. After healing, the same
    key resubmitted at every node answers duplicate, with the one
    application, and every chain holds the entry once."""
    outcomes.run(seed, outcomes.forwarded_then_cut)


@pytest.mark.parametrize("seed", OUTCOME_SEEDS)
def test_a_submission_that_never_left_a_leaderless_node_fails_definitely(seed: int) -> None:
    """A follower cut off until it knows no leader: the entry is proposed to
    no one, the answer is a definite NO_LEADER, and it never commits; once
    healed, submitting it again applies it for the first time."""
    outcomes.run(seed, outcomes.never_proposed)


def _first_failure(seeds: range) -> AssertionError | None:
    for seed in seeds:
        try:
            run(seed, plan_for(seed))
        except AssertionError as e:
            return e
    return None


def test_an_injected_ledger_bug_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """The ledger machine checks a request key only against its own batch,
    not against what it applied before: a client's retry (the same key
    through another node, proposed again) is applied a second time."""
    from services.consensus.ledger.machine import LedgerMachine

    class Forgetful:
        def __init__(self, store: object) -> None:
            self._store = store

        def get_request(self, key: object) -> None:
            return None

        def __getattr__(self, name: str) -> object:
            return getattr(self._store, name)

    real_init = LedgerMachine.__init__

    def init(self: LedgerMachine, storage: object, *args: object, **kwargs: object) -> None:
        real_init(self, Forgetful(storage), *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(LedgerMachine, "__init__", init)
    failure = _first_failure(range(10))
    assert isinstance(failure, InvariantViolation), failure
    assert "applied twice" in str(failure)


def test_an_injected_certification_bug_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """Certification counts one signature as a majority of three."""
    from services.consensus.runtime import certification

    monkeypatch.setattr(certification, "quorum", lambda voters: voters // 2)
    failure = _first_failure(range(10))
    assert isinstance(failure, InvariantViolation), failure
    assert "certified with 1 valid signature" in str(failure)


def test_an_injected_outcome_bug_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """The runtime forgets that it forwarded a submission (the answer at the
    deadline then goes by whether a leader is known, as before issue 11)."""
    from services.consensus.raft.node import RaftNode
    from services.consensus.runtime.submissions import Submissions

    real_propose = Submissions.propose

    def forgetful(self: Submissions, core: RaftNode) -> None:
        real_propose(self, core)
        for waiting in self._waiting.values():  # noqa: SLF001
            waiting.proposed = False

    monkeypatch.setattr(Submissions, "propose", forgetful)
    with pytest.raises(outcomes.ScenarioFailure, match="must be OUTCOME_UNKNOWN"):
        outcomes.run(OUTCOME_SEEDS[0], outcomes.forwarded_then_cut)
