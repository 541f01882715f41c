"""The ledger's device state (ledger/devices.py through the ledger machine):
enrolment transitions and their refusals, what a device's reports do to
its record and to the outcomes of a release (counted per device), the
automatic halt at its threshold, the new rollout policy fields, and that
the state survives a restart and a snapshot identically."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleetsuit.device_auth import new_device_key, public_pem
from fleetsuit.v1 import consensus_pb2 as pb
from services.consensus.ledger.codec import encode_batch
from services.consensus.ledger.devices import MAX_DETAIL_BYTES, MAX_EVENTS, halt_due
from services.consensus.ledger.entries import Applied, InstalledVersion, RolloutPolicy
from services.consensus.ledger.keys import RequestKey
from services.consensus.ledger.machine import LedgerMachine
from services.consensus.raft.types import Entry, SnapshotMeta
from services.consensus.storage import RocksStorage
from services.consensus.storage.snapshot_format import read_snapshot, write_snapshot
from tests.support.releases import Publisher, bootstrap, publish, revoke, rollout

FIRMWARE = b"firmware image " * 100
KEY = public_pem(new_device_key())
OTHER_KEY = public_pem(new_device_key())


class Ledger:
    """A ledger machine on RocksDB with a log index of its own."""

    def __init__(self, path: Path, node_id: str = "n1") -> None:
        self.storage = RocksStorage(str(path), node_id=node_id, cluster_id="c")
        self.machine = LedgerMachine(self.storage, cluster_id="c")
        self.index = self.machine.applied_index()
        self._request = 0

    def apply(self, *payloads: bytes) -> list[Applied]:
        self.index += 1
        return self.machine.apply([Entry(term=1, index=self.index, data=encode_batch(list(payloads)))])

    def outcome(self, payload: bytes) -> str:
        [answer] = self.apply(payload)
        return answer.outcome

    def next_key(self) -> RequestKey:
        self._request += 1
        return RequestKey("test", self._request)

    def close(self) -> None:
        self.storage.close()


def enrol(ledger: Ledger, device_id: str, action: str, *, device_class: str = "board", group: str = "",
          key: bytes = KEY, reason: str = "") -> bytes:
    request = ledger.next_key()
    raw: bytes = pb.LedgerEntry(
        client_id=request.client_id, request_id=request.request_id,
        device_enrollment=pb.DeviceEnrollment(device_id=device_id, action=action, device_class=device_class,
                                              group=group, public_key_pem=key, reason=reason),
    ).SerializeToString()
    return raw


def event(device_id: str, kind: str, release_id: str = "", component: str = "fw", sequence: int = 0,
          at: int = 1_000, gateway: str = "g1", detail: bytes = b"") -> pb.DeviceEvent:
    return pb.DeviceEvent(device_id=device_id, kind=kind, release_id=release_id, at_unix_ms=at, detail=detail,
                          component=component, sequence_number=sequence, gateway_id=gateway)


def report(ledger: Ledger, *events: pb.DeviceEvent, key: RequestKey | None = None) -> bytes:
    key = key or ledger.next_key()
    raw: bytes = pb.LedgerEntry(client_id=key.client_id, request_id=key.request_id,
                                device_events=pb.DeviceEvents(events=list(events))).SerializeToString()
    return raw


def release_with(ci: Publisher, sequence: int, **policy: object) -> bytes:
    entry = pb.LedgerEntry.FromString(publish(ci, "fw", sequence, FIRMWARE))
    entry.release_published.rollout.CopyFrom(pb.RolloutPolicy(**policy))  # type: ignore[arg-type]
    raw: bytes = entry.SerializeToString()
    return raw


@pytest.fixture
def ci() -> Publisher:
    return Publisher.new(1)


@pytest.fixture
def ledger(tmp_path: Path, ci: Publisher) -> Iterator[Ledger]:
    ledger = Ledger(tmp_path / "n1")
    assert ledger.outcome(bootstrap(ci.anchor())) == ""
    yield ledger
    ledger.close()


def accepted(ledger: Ledger, *device_ids: str) -> None:
    for device_id in device_ids:
        assert ledger.outcome(enrol(ledger, device_id, "enroll")) == ""


# ---------------------------------------------------------------- enrolment

# (actions before, the action, its outcome, the device's state after it)
TRANSITIONS = [
    ((), "enroll", "", "accepted"),
    ((), "request", "", "pending"),
    ((), "accept", "DEVICE_UNKNOWN", None),
    ((), "reject", "DEVICE_UNKNOWN", None),
    ((), "revoke", "DEVICE_UNKNOWN", None),
    (("enroll",), "enroll", "DEVICE_EXISTS", "accepted"),
    (("enroll",), "request", "DEVICE_EXISTS", "accepted"),
    (("enroll",), "accept", "DEVICE_STATE", "accepted"),
    (("enroll",), "reject", "DEVICE_STATE", "accepted"),
    (("enroll",), "revoke", "", "revoked"),
    (("request",), "enroll", "", "accepted"),
    (("request",), "request", "DEVICE_EXISTS", "pending"),
    (("request",), "accept", "", "accepted"),
    (("request",), "reject", "", "rejected"),
    (("request",), "revoke", "", "revoked"),
    (("request", "reject"), "accept", "DEVICE_STATE", "rejected"),
    (("request", "reject"), "enroll", "DEVICE_EXISTS", "rejected"),
    (("request", "reject"), "revoke", "", "revoked"),
    (("enroll", "revoke"), "revoke", "DEVICE_STATE", "revoked"),
    (("enroll", "revoke"), "enroll", "DEVICE_EXISTS", "revoked"),
    (("enroll", "revoke"), "accept", "DEVICE_STATE", "revoked"),
]


@pytest.mark.parametrize(("before", "action", "code", "state"), TRANSITIONS)
def test_enrolment_transitions(
    ledger: Ledger, before: tuple[str, ...], action: str, code: str, state: str | None
) -> None:
    for earlier in before:
        assert ledger.outcome(enrol(ledger, "d1", earlier)) == ""
    height = ledger.machine.height
    [answer] = ledger.apply(enrol(ledger, "d1", action, reason="why"))
    assert answer.outcome == code, answer.message
    assert ledger.machine.height == height + 1  # recorded in a block either way
    device = ledger.machine.devices.device("d1")
    assert (device.state if device else None) == state
    refusals = ledger.machine.releases.refusals()
    if code:
        [refusal] = refusals
        assert (refusal.kind, refusal.release_id, refusal.code, refusal.block_height) == (
            "device_enrollment", "d1", code, height + 1)
        if code == "DEVICE_STATE":
            assert f"it is {state}" in answer.message
    else:
        assert refusals == []
        assert device is not None and device.index == ledger.index


def test_an_enrolled_device_holds_what_the_operator_said(ledger: Ledger) -> None:
    assert ledger.outcome(enrol(ledger, "pump-7", "enroll", device_class="pump", group="canary")) == ""
    device = ledger.machine.devices.device("pump-7")
    assert device is not None
    assert (device.state, device.device_class, device.group, device.public_key_pem) == (
        "accepted", "pump", "canary", KEY)


def test_enrolling_a_pending_device_takes_the_operators_key_class_and_group(ledger: Ledger) -> None:
    assert ledger.outcome(enrol(ledger, "d1", "request", device_class="claimed", key=OTHER_KEY)) == ""
    assert ledger.outcome(enrol(ledger, "d1", "enroll", device_class="pump", group="g", key=KEY)) == ""
    device = ledger.machine.devices.device("d1")
    assert device is not None and (device.state, device.device_class, device.group, device.public_key_pem) == (
        "accepted", "pump", "g", KEY)


def test_accept_may_set_the_group_and_reject_and_revoke_keep_their_reason(ledger: Ledger) -> None:
    for device_id in ("a", "b", "c"):
        assert ledger.outcome(enrol(ledger, device_id, "request", group="lab")) == ""
    assert ledger.outcome(enrol(ledger, "a", "accept", group="field")) == ""
    assert ledger.outcome(enrol(ledger, "b", "accept")) == ""
    assert ledger.outcome(enrol(ledger, "c", "reject", reason="not ours")) == ""
    assert ledger.outcome(enrol(ledger, "a", "revoke", reason="stolen")) == ""
    devices = {d.device_id: d for d in ledger.machine.devices.devices()}
    assert (devices["a"].state, devices["a"].group, devices["a"].state_reason) == ("revoked", "field", "stolen")
    assert (devices["b"].state, devices["b"].group) == ("accepted", "lab")
    assert (devices["c"].state, devices["c"].state_reason) == ("rejected", "not ours")
    assert [d.device_id for d in ledger.machine.devices.devices("accepted")] == ["b"]
    assert [d.device_id for d in ledger.machine.devices.devices(after="a", limit=1)] == ["b"]


@pytest.mark.parametrize(("device_id", "action", "device_class", "key", "words"), [
    ("", "enroll", "board", KEY, "device id"),
    ("d" * 129, "enroll", "board", KEY, "device id"),
    ("bad id", "enroll", "board", KEY, "device id"),
    ("d/1", "enroll", "board", KEY, "device id"),
    ("d1", "enroll", "", KEY, "class"),
    ("d1", "request", "c" * 129, KEY, "class"),
    ("d1", "enroll", "board", b"not a key", "key"),
    ("d1", "request", "board", b"", "key"),
    ("d1", "adopt", "board", KEY, "unknown action"),
])
def test_an_enrolment_that_names_no_valid_device_is_refused(
    ledger: Ledger, device_id: str, action: str, device_class: str, key: bytes, words: str
) -> None:
    [answer] = ledger.apply(enrol(ledger, device_id, action, device_class=device_class, key=key))
    assert answer.outcome == "INVALID_DEVICE" and words in answer.message, answer.message
    assert ledger.machine.devices.devices() == []


def test_device_ids_may_use_dots_colons_at_and_dashes(ledger: Ledger) -> None:
    device_id = "A-z_0.9:@" + "x" * 119
    assert len(device_id) == 128
    assert ledger.outcome(enrol(ledger, device_id, "enroll")) == ""


# ---------------------------------------------------------------- reports


def test_reports_set_installed_versions_and_the_last_event(ledger: Ledger, ci: Publisher) -> None:
    ledger.apply(publish(ci, "fw", 1, FIRMWARE), publish(ci, "fw", 2, FIRMWARE))
    accepted(ledger, "d1")
    devices = ledger.machine.devices

    def installed() -> tuple[InstalledVersion, ...]:
        device = devices.device("d1")
        assert device is not None
        return device.installed

    assert ledger.outcome(report(ledger, event("d1", "version", "", "fw", 0),
                                 event("d1", "version", "", "boot", 0))) == ""
    assert installed() == (InstalledVersion("boot", "", 0), InstalledVersion("fw", "", 0))
    assert ledger.outcome(report(ledger, event("d1", "installed", "fw@1", "fw", 1, at=5_000, gateway="g2"))) == ""
    assert installed()[1] == InstalledVersion("fw", "fw@1", 1)
    device = devices.device("d1")
    assert device is not None and (device.last_event, device.last_event_at_unix_ms, device.last_gateway_id) == (
        "installed", 5_000, "g2")
    # A failure names the release that failed; the device runs what it ran.
    assert ledger.outcome(report(ledger, event("d1", "install_failed", "fw@2", "fw", 2),
                                 event("d1", "fell_back", "fw@1", "fw", 1))) == ""
    assert installed()[1] == InstalledVersion("fw", "fw@1", 1)
    assert ledger.outcome(report(ledger, event("d1", "refused", "fw@2", "fw", 2))) == ""
    assert installed()[1] == InstalledVersion("fw", "fw@1", 1)
    assert devices.device("d1").last_event == "refused"  # type: ignore[union-attr]
    assert ledger.outcome(report(ledger, event("d1", "switched_back", "", "fw", 0))) == ""
    assert installed()[1] == InstalledVersion("fw", "", 0)
    assert (devices.outcomes("fw@1").installed, devices.outcomes("fw@2").failed) == (1, 1)
    by_state, by_version = devices.summary()
    assert by_state == {"accepted": 1} and by_version == {"boot@factory": 1, "fw@factory": 1}


@pytest.mark.parametrize(("case", "code"), [
    ("unknown device", "DEVICE_UNKNOWN"),
    ("pending device", "DEVICE_NOT_ACCEPTED"),
    ("revoked device", "DEVICE_NOT_ACCEPTED"),
    ("unknown kind", "INVALID_EVENT"),
    ("two devices", "INVALID_EVENT"),
    ("no events", "INVALID_EVENT"),
    ("too many events", "INVALID_EVENT"),
    ("too much detail", "INVALID_EVENT"),
    ("installed without a component", "INVALID_EVENT"),
    ("failure without a release", "INVALID_EVENT"),
])
def test_a_report_that_cannot_apply_is_refused_and_changes_nothing(
    ledger: Ledger, ci: Publisher, case: str, code: str
) -> None:
    ledger.apply(publish(ci, "fw", 1, FIRMWARE))
    accepted(ledger, "d1", "gone")
    assert ledger.outcome(enrol(ledger, "gone", "revoke")) == ""
    assert ledger.outcome(enrol(ledger, "waiting", "request")) == ""
    good = event("d1", "installed", "fw@1", "fw", 1)
    events = {
        "unknown device": [event("nobody", "installed", "fw@1", "fw", 1)],
        "pending device": [event("waiting", "installed", "fw@1", "fw", 1)],
        "revoked device": [event("gone", "installed", "fw@1", "fw", 1)],
        "unknown kind": [good, event("d1", "exploded")],
        "two devices": [good, event("gone", "version")],
        "no events": [],
        "too many events": [good] * (MAX_EVENTS + 1),
        "too much detail": [good, event("d1", "install_failed", "fw@1", detail=b"x" * (MAX_DETAIL_BYTES + 1))],
        "installed without a component": [event("d1", "installed", "fw@1", "", 1)],
        "failure without a release": [event("d1", "install_failed", "")],
    }[case]
    digest = ledger.machine.devices.digest()
    [answer] = ledger.apply(report(ledger, *events))
    assert answer.outcome == code, answer.message
    assert ledger.machine.devices.digest() == digest
    [refusal] = ledger.machine.releases.refusals()
    assert (refusal.kind, refusal.code) == ("device_events", code)


def test_the_largest_report_allowed_applies(ledger: Ledger, ci: Publisher) -> None:
    ledger.apply(publish(ci, "fw", 1, FIRMWARE))
    accepted(ledger, "d1")
    events = [event("d1", "install_failed", "fw@1", detail=b"x" * MAX_DETAIL_BYTES)] * MAX_EVENTS
    assert ledger.outcome(report(ledger, *events)) == ""
    assert ledger.machine.devices.outcomes("fw@1").failed == 1


def test_outcomes_count_each_device_once_its_last_outcome_standing(ledger: Ledger, ci: Publisher) -> None:
    ledger.apply(publish(ci, "fw", 1, FIRMWARE))
    accepted(ledger, "d1", "d2", "d3")
    devices = ledger.machine.devices

    def counts() -> tuple[int, int]:
        stats = devices.outcomes("fw@1")
        return stats.installed, stats.failed

    ledger.apply(report(ledger, event("d1", "install_failed", "fw@1")))
    ledger.apply(report(ledger, event("d2", "install_failed", "fw@1")))
    assert counts() == (0, 2)
    ledger.apply(report(ledger, event("d1", "install_failed", "fw@1")))  # again: still one failure
    assert counts() == (0, 2)
    ledger.apply(report(ledger, event("d1", "installed", "fw@1", "fw", 1)))  # its retry worked
    assert counts() == (1, 1)
    ledger.apply(report(ledger, event("d3", "installed", "fw@1", "fw", 1),
                        event("d3", "installed", "fw@1", "fw", 1)))
    assert counts() == (2, 1)
    assert (devices.outcome("fw@1", "d1"), devices.outcome("fw@1", "d2")) == ("installed", "failed")
    # A release the ledger does not hold is not counted.
    ledger.apply(report(ledger, event("d1", "install_failed", "fw@77")))
    assert [o.release_id for o in devices.all_outcomes()] == ["fw@1"]


def test_a_report_resubmitted_with_its_key_applies_once(ledger: Ledger, ci: Publisher) -> None:
    ledger.apply(publish(ci, "fw", 1, FIRMWARE))
    accepted(ledger, "d1")
    failed = report(ledger, event("d1", "install_failed", "fw@1"), key=RequestKey("device/d1", 1))
    [first] = ledger.apply(failed)
    installed = report(ledger, event("d1", "installed", "fw@1", "fw", 1), key=RequestKey("device/d1", 2))
    ledger.apply(installed)
    [again] = ledger.apply(failed)  # a gateway's resend after failover
    assert again.duplicate and (again.index, again.position) == (first.index, first.position)
    stats = ledger.machine.devices.outcomes("fw@1")
    assert (stats.installed, stats.failed) == (1, 0)


# ---------------------------------------------------------------- the automatic halt


@pytest.mark.parametrize(("percent", "minimum", "installed", "failed", "due"), [
    (0, 0, 0, 10, False),
    (50, 0, 0, 1, True),
    (50, 4, 0, 3, False),
    (50, 4, 2, 2, True),
    (50, 4, 3, 2, False),
    (10, 10, 9, 1, True),
    (10, 10, 10, 1, False),
    (100, 1, 0, 1, True),
    (100, 1, 1, 5, False),
])
def test_halt_is_due_at_the_threshold_once_enough_devices_reported(
    percent: int, minimum: int, installed: int, failed: int, due: bool
) -> None:
    policy = RolloutPolicy(halt_failure_percent=percent, halt_min_devices=minimum)
    assert halt_due(policy, installed, failed) is due


def test_a_release_halts_when_its_failures_cross_the_threshold_and_only_then(ledger: Ledger, ci: Publisher) -> None:
    assert ledger.outcome(release_with(ci, 1, halt_failure_percent=40, halt_min_devices=5)) == ""
    accepted(ledger, *(f"d{i}" for i in range(6)))
    releases = ledger.machine.releases

    def state() -> str:
        release = releases.release("fw@1")
        assert release is not None
        return release.state

    for i in range(3):
        ledger.apply(report(ledger, event(f"d{i}", "installed", "fw@1", "fw", 1)))
    ledger.apply(report(ledger, event("d3", "install_failed", "fw@1")))
    assert state() == "active"  # 1 of 4: not enough devices yet, nor failures
    ledger.apply(report(ledger, event("d4", "install_failed", "fw@1")))
    release = releases.release("fw@1")
    assert release is not None and (release.state, release.state_reason) == (
        "halted", "automatic halt: 2 of 5 devices failed (40% >= 40%)")
    # Not twice: later failures leave the halt as it was.
    ledger.apply(report(ledger, event("d5", "install_failed", "fw@1")))
    assert releases.release("fw@1") == release
    assert ledger.outcome(rollout("fw@1", "resume", ledger.next_key())) == "INVALID_TRANSITION"


def test_min_devices_holds_the_halt_back(ledger: Ledger, ci: Publisher) -> None:
    assert ledger.outcome(release_with(ci, 1, halt_failure_percent=10, halt_min_devices=3)) == ""
    accepted(ledger, "a", "b", "c")
    ledger.apply(report(ledger, event("a", "install_failed", "fw@1")))
    ledger.apply(report(ledger, event("b", "install_failed", "fw@1")))
    assert ledger.machine.releases.release("fw@1").state == "active"  # type: ignore[union-attr]
    ledger.apply(report(ledger, event("c", "installed", "fw@1", "fw", 1)))
    assert ledger.machine.releases.release("fw@1").state == "halted"  # type: ignore[union-attr]


def test_a_paused_release_halts_a_revoked_or_unguarded_one_does_not(ledger: Ledger, ci: Publisher) -> None:
    ledger.apply(release_with(ci, 1, halt_failure_percent=50),
                 release_with(ci, 2, halt_failure_percent=50),
                 release_with(ci, 3))
    assert ledger.outcome(rollout("fw@1", "pause", ledger.next_key())) == ""
    assert ledger.outcome(revoke("fw@2", ledger.next_key())) == ""
    accepted(ledger, "d1")
    ledger.apply(report(ledger, *(event("d1", "install_failed", f"fw@{n}") for n in (1, 2, 3))))
    states = {r.release_id: (r.state, r.state_reason) for r in ledger.machine.releases.releases()}
    assert states["fw@1"][0] == "halted"
    assert states["fw@2"] == ("revoked", "withdrawn")
    assert states["fw@3"] == ("active", "")


def test_the_halt_is_in_the_batch_of_the_report_that_crossed_it(ledger: Ledger, ci: Publisher) -> None:
    """Entries after the crossing report in the same Raft entry already see
    the release halted (the pending writes are shared by the batch)."""
    assert ledger.outcome(release_with(ci, 1, halt_failure_percent=50)) == ""
    accepted(ledger, "d1")
    answers = ledger.apply(report(ledger, event("d1", "install_failed", "fw@1")),
                           rollout("fw@1", "pause", ledger.next_key()))
    assert [a.outcome for a in answers] == ["", "INVALID_TRANSITION"]
    assert ledger.machine.releases.release("fw@1").state == "halted"  # type: ignore[union-attr]


# ---------------------------------------------------------------- the policy's new fields


def test_the_new_policy_fields_are_kept_with_the_release(ledger: Ledger, ci: Publisher) -> None:
    assert ledger.outcome(release_with(ci, 1, stages=[10, 50, 100], stage_interval_ms=600_000,
                                       groups=["canary", "lab"], halt_failure_percent=20,
                                       halt_min_devices=50)) == ""
    release = ledger.machine.releases.release("fw@1")
    assert release is not None and release.rollout == RolloutPolicy(
        0, 0, False, (10, 50, 100), 600_000, ("canary", "lab"), 20, 50)


@pytest.mark.parametrize(("policy", "words"), [
    ({"stages": [50, 10, 100]}, "ascending"),
    ({"stages": [10, 50]}, "ending at 100"),
    ({"stages": [0, 100]}, "ascending"),
    ({"stages": [10, 10, 100]}, "ascending"),
    ({"groups": [""]}, "groups"),
    ({"groups": ["g" * 129]}, "groups"),
    ({"halt_failure_percent": 101}, "between 0 and 100"),
])
def test_a_policy_that_breaks_the_rules_is_refused(
    ledger: Ledger, ci: Publisher, policy: dict[str, object], words: str
) -> None:
    [answer] = ledger.apply(release_with(ci, 1, **policy))
    assert answer.outcome == "INVALID_RELEASE" and words in answer.message, answer.message


# ---------------------------------------------------------------- restart and snapshot


def test_device_state_survives_a_restart_and_a_snapshot_identically(tmp_path: Path, ci: Publisher) -> None:
    ledger = Ledger(tmp_path / "a")
    ledger.apply(bootstrap(ci.anchor()))
    ledger.apply(release_with(ci, 1, halt_failure_percent=50, halt_min_devices=4))
    accepted(ledger, *(f"d{i}" for i in range(5)))
    ledger.apply(enrol(ledger, "p", "request"), enrol(ledger, "d0", "accept"))  # the second refused
    for i in range(4):
        kind = "installed" if i % 2 else "install_failed"
        ledger.apply(report(ledger, event(f"d{i}", kind, "fw@1", "fw", 1)))
    assert ledger.machine.releases.release("fw@1").state == "halted"  # type: ignore[union-attr]
    digests = (ledger.machine.releases.digest(), ledger.machine.devices.digest())
    applied = ledger.machine.applied_index()
    ledger.close()

    again = Ledger(tmp_path / "a")
    assert (again.machine.releases.digest(), again.machine.devices.digest()) == digests
    out = io.BytesIO()
    meta = SnapshotMeta(index=applied, term=1, voters=("n1",), learners=())
    write_snapshot(out, meta, again.storage.state_records(again.storage.state_view()))
    again.close()

    other = Ledger(tmp_path / "b", node_id="n2")
    data = out.getvalue()
    read_meta, records = read_snapshot(io.BytesIO(data), len(data))
    other.storage.install_snapshot(read_meta, records)
    other.machine.reload()
    assert (other.machine.releases.digest(), other.machine.devices.digest()) == digests
    assert other.machine.devices.outcomes("fw@1").failed == 2
    # ... and the next report applies on top of it as on the source.
    other.index = applied
    other._request = 1000
    assert other.outcome(report(other, event("d4", "installed", "fw@1", "fw", 1))) == ""
    assert other.machine.devices.outcomes("fw@1").installed == 3
    assert other.outcome(enrol(other, "p", "accept")) == ""
    other.close()
