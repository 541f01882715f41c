"""Deterministic simulation of whole consensus nodes (tests/consensus/nodesim):
the runtime, the ledger machine, certification, compaction and snapshots,
over a fake network, a virtual clock and in-memory storage.

Each seed is one test: chaos (drops, delays, duplicates, partitions,
crashes in the middle of the loop, restarts, snapshots for nodes that were
away) with the invariants checked throughout, then healing and a
convergence bound (one chain everywhere, every acknowledged entry in it,
every block certified). Three seeds in four run 3 nodes, the fourth 5.
Release entries are part of the workload (``nodesim/releases.py``): trust
anchors, releases of two components (some that must be refused on apply),
revocations, rollout pauses, resumptions and halts, device enrolments and
reports of installed and failed releases; every answer must carry
the outcome the release rules give it, and at convergence every node's
release state (and every state a node held right after a restart or a
snapshot install) must be the one a fresh ledger machine derives from the
chain's entries, and the rules'.

FLEETSUIT_NODESIM_SEEDS=N runs seeds 0..N-1 (default 300);
FLEETSUIT_NODESIM_SEED=N runs exactly seed N (a failure prints the command).

Two deterministic scenarios (``nodesim/outcomes.py``, a few seeds each)
pin down what a failed submission's answer promises: a follower cut off
right after it forwarded a submission that then commits answers
OUTCOME_UNKNOWN, never NO_LEADER, and a resubmission anywhere answers the one
application; a submission that never left its node answers a definite
NO_LEADER and never commits. A third (``nodesim/catchup.py``) wipes a
follower's data directory while release entries come in, brings it back the
way the Synchronizer does (a learner, removed and added again) and requires
it to catch up through a snapshot to the very release state of the others.

The last tests inject a bug into the ledger machine, into certification,
into the runtime's outcome tracking, into the release checks of one node and
into what a snapshot carries, and require the simulation to catch each: a
simulation that cannot fail proves nothing.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import replace

import pytest

from .nodesim import catchup, outcomes
from .nodesim.invariants import InvariantViolation
from .nodesim.scenario import Plan, Stats, run

OUTCOME_SEEDS = range(4)
CATCHUP_SEEDS = range(4)

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
    away, and commit entries (else the invariants would hold vacuously); the
    release entries get every outcome the workload aims at, and some
    snapshots carry release state to the nodes that install them."""
    stats = [_run(seed) for seed in range(8)]
    assert sum(s.crashes for s in stats) >= 8
    assert sum(s.snapshots_installed for s in stats) >= 1
    assert min(s.acknowledged for s in stats) >= 10
    assert sum(s.outcome_unknown for s in stats) >= 1
    assert min(s.release_acknowledged for s in stats) >= 5
    assert sum(s.releases for s in stats) >= 20
    assert sum(s.snapshots_with_releases for s in stats) >= 2
    assert sum(s.release_checkpoints for s in stats) >= 3 * len(stats)  # the restarts at healing, at least
    outcomes = Counter[str]()
    for s in stats:
        outcomes.update(s.release_outcomes)
    assert set(outcomes) >= {"", "NO_TRUST_ANCHORS", "ANCHORS_REFUSED", "UNTRUSTED_KEY", "STALE_SEQUENCE",
                             "DIGEST_MISMATCH", "DUPLICATE_RELEASE", "REVOKED", "UNKNOWN_RELEASE",
                             "INVALID_TRANSITION", "DEVICE_EXISTS", "DEVICE_UNKNOWN"}, outcomes
    assert sum(s.devices for s in stats) >= 8 and sum(s.device_outcomes for s in stats) >= 8
    assert sum(s.release_resubmitted for s in stats) >= 1  # an entry the chaos left unanswered


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


@pytest.mark.parametrize("seed", CATCHUP_SEEDS)
def test_a_wiped_follower_catches_up_to_the_release_state(seed: int) -> None:
    """Issue 11: a follower loses its data directory while releases are
    published, refused, revoked, paused and halted; brought back as a
    learner, removed and added again, it catches up through a snapshot, and
    its release state is the others', the one the chain's entries give."""
    outcomes.run(seed, catchup.wiped_follower_catches_up)


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


def test_an_injected_release_bug_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """One node skips the stale-sequence check when it applies a release
    (it reads every component's sequence number as 0): a release older than
    the component's current one takes effect there, and there only."""
    from services.consensus.ledger.releases import ReleaseState

    from .nodesim.scenario import SimStorage

    real_sequence = ReleaseState.sequence

    def sequence(self: ReleaseState, component: str) -> int:
        store = self._store  # noqa: SLF001
        if isinstance(store, SimStorage) and store.node_id == "n1":
            return 0
        return real_sequence(self, component)

    monkeypatch.setattr(ReleaseState, "sequence", sequence)
    failure = _first_failure(range(10))
    assert isinstance(failure, InvariantViolation), failure
    assert "the release rules say STALE_SEQUENCE" in str(failure) or "n1's release state differs" in str(failure)


def test_an_injected_snapshot_bug_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """Snapshots leave out the release tables (a state view that copies the
    member keys and addresses but forgets the release state): a node that
    installs one loses every release, anchor and refusal, in the chaos runs
    and when a wiped node catches up."""
    from services.consensus.storage.node_storage import NodeStorage, StateView

    real_view = NodeStorage.state_view

    def state_view(self: NodeStorage) -> StateView:
        view = real_view(self)
        return replace(view, small=[(k, v) for k, v in view.small if not k.startswith(b"t/")])

    monkeypatch.setattr(NodeStorage, "state_view", state_view)
    failure = _first_failure(range(10))
    assert isinstance(failure, InvariantViolation), failure
    assert "release state" in str(failure) or "release rules say" in str(failure), failure
    with pytest.raises(InvariantViolation, match="release state after a snapshot install"):
        outcomes.run(CATCHUP_SEEDS[0], catchup.wiped_follower_catches_up)


def test_an_injected_device_bug_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """One node counts a device's repeated outcome for a release again (it
    forgets the device's earlier outcome): its outcome counts drift from
    the other nodes' and from the rules'."""
    from services.consensus.ledger.devices import DeviceState

    from .nodesim.scenario import SimStorage

    real_outcome = DeviceState.outcome

    def outcome(self: DeviceState, release_id: str, device_id: str) -> str:
        store = self._store  # noqa: SLF001
        if isinstance(store, SimStorage) and store.node_id == "n1":
            return ""
        return real_outcome(self, release_id, device_id)

    monkeypatch.setattr(DeviceState, "outcome", outcome)
    failure = _first_failure(range(10))
    assert isinstance(failure, InvariantViolation), failure
    assert "n1's release state differs" in str(failure) or "release state after" in str(failure), failure
