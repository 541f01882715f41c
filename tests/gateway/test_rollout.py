"""The rollout decision (issue 12 §3), one test per rule, then properties:
against a reference model written here from the rules, order independence,
monotonic admission, and nothing changing before ``next_change_at``."""

from __future__ import annotations

import hashlib
import random
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from services.gateway.rollout import (
    FACTORY,
    Action,
    Decision,
    DeviceView,
    Installed,
    InvalidDevice,
    InvalidPolicy,
    Policy,
    ReleaseView,
    bucket,
    decide,
    device_stage,
    next_change_at,
    open_percent,
    stage_opens_at,
)

START = 1_700_000_000_000
HOUR = 3_600_000
DEVICES = [f"device-{i:04d}" for i in range(1000)]


def rel(
    release_id: str,
    seq: int,
    *,
    state: str = "active",
    component: str = "fw",
    classes: tuple[str, ...] = ("cam",),
    **policy: object,
) -> ReleaseView:
    return ReleaseView(release_id, component, classes, seq, state, Policy(**policy))  # type: ignore[arg-type]


def dev(
    device_id: str = "d1", *installed: Installed, cls: str = "cam", group: str = ""
) -> DeviceView:
    return DeviceView(device_id, cls, group, installed)


def on(release_id: str, seq: int, known_good: str = "", known_good_seq: int = 0) -> Installed:
    return Installed("fw", release_id, seq, known_good, known_good_seq)


def fw(decisions: dict[str, Decision]) -> tuple[Action, str, int]:
    d = decisions["fw"]
    return d.action, d.release_id, d.switch_at_unix_ms


def admitted(releases: list[ReleaseView], devices: list[str], now: int, **kw: int) -> set[str]:
    return {
        d for d in devices
        if decide(releases, dev(d, on(FACTORY, 0)), now, **kw)["fw"].action is Action.INSTALL
    }


# ------------------------------------------------------------------ policy


@pytest.mark.parametrize(
    "stages",
    [(0, 100), (50,), (50, 50, 100), (60, 40, 100), (10, 101), (-5, 100), (100, 100)],
)
def test_a_policy_with_bad_stages_is_refused(stages: tuple[int, ...]) -> None:
    with pytest.raises(InvalidPolicy):
        Policy(stages=stages)


@pytest.mark.parametrize(
    "field", ["start_at_unix_ms", "end_at_unix_ms", "stage_interval_ms"]
)
def test_a_policy_with_negative_times_is_refused(field: str) -> None:
    with pytest.raises(InvalidPolicy, match=field):
        Policy(**{field: -1})  # type: ignore[arg-type]


def test_no_stages_means_one_stage_of_the_whole_fleet() -> None:
    assert Policy(stages=()).stages == (100,)
    assert Policy(stages=(1, 100)).stages == (1, 100)


def test_bucket_is_the_pinned_hash_of_the_pair() -> None:
    # SHA-256(device NUL release), first 8 bytes big-endian, mod 10,000: every
    # gateway version must compute the same admission.
    digest = hashlib.sha256(b"device-0000\0fw@1").digest()
    assert bucket("device-0000", "fw@1") == int.from_bytes(digest[:8], "big") % 10_000 == 6281
    assert bucket("d", "r") == 345
    assert all(0 <= bucket(d, "fw@1") < 10_000 for d in DEVICES)


@pytest.mark.parametrize(
    ("now", "expected"),
    [(START - 1, 0), (START, 10), (START + HOUR - 1, 10), (START + HOUR, 50), (START + 5 * HOUR, 100)],
)
def test_open_percent(now: int, expected: int) -> None:
    policy = Policy(start_at_unix_ms=START, stages=(10, 50, 100), stage_interval_ms=HOUR)
    assert open_percent(policy, now) == expected


# --------------------------------------------------------- staged admission


def test_a_ten_percent_stage_admits_ten_percent_the_same_ones_every_time() -> None:
    staged = rel("fw@2", 2, start_at_unix_ms=START, stages=(10, 50, 100), stage_interval_ms=HOUR)
    other = rel("cfg@7", 7, component="cfg", start_at_unix_ms=START)
    first = admitted([staged, other], DEVICES, START)
    assert 80 <= len(first) <= 120, len(first)
    assert admitted([staged, other], DEVICES, START) == first
    assert admitted([other, staged], DEVICES, START) == first
    assert admitted([staged, other], DEVICES, START + HOUR - 1) == first
    assert first == {d for d in DEVICES if device_stage(staged.policy, d, "fw@2") == 0}


def test_stage_k_devices_switch_at_its_opening_never_before_the_start() -> None:
    staged = rel("fw@2", 2, start_at_unix_ms=START, stages=(10, 50, 100), stage_interval_ms=HOUR)
    seen = set()
    for d in DEVICES:
        stage = device_stage(staged.policy, d, "fw@2")
        assert stage is not None
        action, release_id, switch_at = fw(decide([staged], dev(d, on("fw@1", 1)), START + 9 * HOUR))
        assert (action, release_id) == (Action.INSTALL, "fw@2")
        assert switch_at == START + stage * HOUR == stage_opens_at(staged.policy, stage)
        assert switch_at >= START
        seen.add(stage)
    assert seen == {0, 1, 2}


def test_lead_offers_early_but_the_switch_time_holds() -> None:
    lead = 60_000
    release = rel("fw@2", 2, start_at_unix_ms=START)
    device = dev("d1", on("fw@1", 1))
    assert fw(decide([release], device, START - lead - 1, lead_ms=lead))[0] is Action.STAY
    assert fw(decide([release], device, START - lead, lead_ms=lead)) == (Action.INSTALL, "fw@2", START)
    assert fw(decide([release], device, START - 1, lead_ms=lead)) == (Action.INSTALL, "fw@2", START)
    assert fw(decide([release], device, START - 1))[0] is Action.STAY
    staged = rel("fw@3", 3, start_at_unix_ms=START, stages=(10, 50, 100), stage_interval_ms=HOUR)
    at = START + HOUR - lead  # stage 1 is offered a lead early, switching at its opening
    for d in DEVICES:
        decision = decide([staged], dev(d, on("fw@1", 1)), at, lead_ms=lead)["fw"]
        stage = device_stage(staged.policy, d, "fw@3")
        if stage == 2:
            assert decision.action is Action.STAY
        else:
            assert decision.action is Action.INSTALL
            assert decision.switch_at_unix_ms == START + (stage or 0) * HOUR


def test_a_late_registering_device_still_gets_the_release() -> None:
    release = rel("fw@5", 5, start_at_unix_ms=START, stages=(10, 100), stage_interval_ms=HOUR)
    late = START + 30 * 24 * HOUR
    for d in DEVICES[:50]:
        action, release_id, switch_at = fw(decide([release], dev(d, on("fw@2", 2)), late))
        assert (action, release_id) == (Action.INSTALL, "fw@5")
        assert switch_at in (START, START + HOUR)  # in the past: switch at once


def test_a_device_without_the_component_is_never_offered_it() -> None:
    """Its manifest could only be refused there: a device reports every
    component it has (the factory image included)."""
    release = rel("fw@1", 1)
    assert decide([release], dev("d1"), START) == {}
    assert fw(decide([release], dev("d1", Installed("fw", FACTORY, 0)), START)) == (Action.INSTALL, "fw@1", 0)


# -------------------------------------------------------- install decisions


@pytest.mark.parametrize(
    ("releases", "installed", "expected"),
    [
        ([rel("fw@3", 3)], on("fw@3", 3), (Action.STAY, "fw@3", 0)),
        ([rel("fw@3", 3)], on("fw@4", 4), (Action.STAY, "fw@4", 0)),
        ([rel("fw@3", 3)], on("fw@2", 2), (Action.INSTALL, "fw@3", 0)),
        ([rel("fw@2", 2), rel("fw@4", 4), rel("fw@3", 3)], on("fw@1", 1), (Action.INSTALL, "fw@4", 0)),
        ([rel("fw@4", 4, state="paused"), rel("fw@3", 3)], on("fw@1", 1), (Action.INSTALL, "fw@3", 0)),
        ([rel("fw@4", 4, state="halted")], on("fw@1", 1), (Action.STAY, "fw@1", 0)),
        ([rel("fw@4", 4, state="paused")], on("fw@1", 1), (Action.STAY, "fw@1", 0)),
        ([rel("fw@4", 4, state="revoked")], on("fw@1", 1), (Action.STAY, "fw@1", 0)),
        ([rel("fw@4", 4, state="ended")], on("fw@1", 1), (Action.STAY, "fw@1", 0)),
        ([rel("fw@4", 4, end_at_unix_ms=START)], on("fw@1", 1), (Action.STAY, "fw@1", 0)),
        ([rel("fw@4", 4, end_at_unix_ms=START + 1)], on("fw@1", 1), (Action.INSTALL, "fw@4", 0)),
        ([rel("fw@4", 4, state="paused")], on("fw@4", 4), (Action.STAY, "fw@4", 0)),
        ([rel("fw@4", 4, state="halted")], on("fw@4", 4), (Action.STAY, "fw@4", 0)),
        ([rel("fw@2", 2)], on("", 0), (Action.INSTALL, "fw@2", 0)),
        ([], on("", 0), (Action.STAY, FACTORY, 0)),
    ],
    ids=[
        "same", "older-offered", "newer", "highest-wins", "paused-newest-skipped", "halted",
        "paused", "revoked", "stored-ended", "past-end", "before-end", "on-paused", "on-halted",
        "factory", "nothing",
    ],
)
def test_install_rules(
    releases: list[ReleaseView], installed: Installed, expected: tuple[Action, str, int]
) -> None:
    assert fw(decide(releases, dev("d1", installed), START)) == expected


def test_the_highest_admissible_sequence_wins_when_several_are_open() -> None:
    open_to_all = rel("fw@3", 3, start_at_unix_ms=START)
    staged = rel("fw@4", 4, start_at_unix_ms=START, stages=(10, 100), stage_interval_ms=HOUR)
    for d in DEVICES[:200]:
        got = fw(decide([staged, open_to_all], dev(d, on("fw@1", 1)), START))
        if device_stage(staged.policy, d, "fw@4") == 0:
            assert got == (Action.INSTALL, "fw@4", START)
        else:
            assert got == (Action.INSTALL, "fw@3", START)


@pytest.mark.parametrize(
    ("cls", "group", "classes", "groups", "targeted"),
    [
        ("cam", "", ("cam",), (), True),
        ("cam", "lab", ("cam", "hub"), (), True),
        ("hub", "", ("cam",), (), False),
        ("cam", "lab", ("cam",), ("lab", "beta"), True),
        ("cam", "field", ("cam",), ("lab",), False),
        ("cam", "", ("cam",), ("lab",), False),
        ("hub", "lab", ("cam",), ("lab",), False),
    ],
)
def test_class_and_group_targeting(
    cls: str, group: str, classes: tuple[str, ...], groups: tuple[str, ...], targeted: bool
) -> None:
    release = rel("fw@2", 2, classes=classes, groups=groups)
    decisions = decide([release], dev("d1", on("fw@1", 1), cls=cls, group=group), START)
    assert (fw(decisions)[0] is Action.INSTALL) == targeted
    from_factory = decide([release], dev("d1", Installed("fw", FACTORY, 0), cls=cls, group=group), START)
    assert (fw(from_factory)[0] is Action.INSTALL) == targeted


@pytest.mark.parametrize(
    ("device_vendor", "release_vendor", "targeted"),
    [
        ("acme.example", "acme.example", True),
        ("acme.example", "other.example", False),  # the same class name under another vendor
        ("", "other.example", True),  # a device that does not say its vendor: by class alone
        ("acme.example", "", True),
    ],
)
def test_a_class_name_means_something_only_under_its_vendor(
    device_vendor: str, release_vendor: str, targeted: bool
) -> None:
    release = replace(rel("fw@2", 2), vendor_domain=release_vendor)
    device = replace(dev("d1", on("fw@1", 1)), vendor_domain=device_vendor)
    assert (fw(decide([release], device, START))[0] is Action.INSTALL) == targeted


def test_one_decision_per_component() -> None:
    releases = [rel("fw@2", 2), rel("cfg@1", 1, component="cfg"), rel("os@9", 9, component="os", classes=("hub",))]
    device = dev("d1", on("fw@2", 2), Installed("boot", FACTORY, 0), Installed("cfg", FACTORY, 0))
    decisions = decide(releases, device, START)
    assert sorted(decisions) == ["boot", "cfg", "fw"]  # not "os": the device has none
    assert {c: d.component for c, d in decisions.items()} == {c: c for c in decisions}
    assert decisions["cfg"].action is Action.INSTALL
    assert decisions["boot"].action is decisions["fw"].action is Action.STAY


def test_a_component_reported_twice_is_refused() -> None:
    with pytest.raises(InvalidDevice):
        decide([], dev("d1", on("fw@1", 1), on("fw@2", 2)), START)


# --------------------------------------------------------------- switch back

END = START + 24 * HOUR
EXPERIMENTAL: dict[str, Any] = {"start_at_unix_ms": START, "end_at_unix_ms": END, "experimental": True}


@pytest.mark.parametrize(
    ("releases", "installed", "now", "expected"),
    [
        (  # experimental ended, the known-good is the newest non-experimental
            [rel("fw@3", 3), rel("fw@5", 5, **EXPERIMENTAL)],
            on("fw@5", 5, "fw@3", 3), END, (Action.SWITCH_BACK, "fw@3", END),
        ),
        (  # still running: nothing to do
            [rel("fw@3", 3), rel("fw@5", 5, **EXPERIMENTAL)],
            on("fw@5", 5, "fw@3", 3), END - 1, (Action.STAY, "fw@5", 0),
        ),
        (  # an experimental release paused or halted still ends
            [rel("fw@3", 3, state="ended"), rel("fw@5", 5, state="halted", **EXPERIMENTAL)],
            on("fw@5", 5, "fw@3", 3), END + HOUR, (Action.SWITCH_BACK, "fw@3", END),
        ),
        (  # revoked: back at once
            [rel("fw@3", 3), rel("fw@5", 5, state="revoked")],
            on("fw@5", 5, "fw@3", 3), START, (Action.SWITCH_BACK, "fw@3", START),
        ),
        (  # no non-experimental release at all: the factory image
            [rel("fw@5", 5, **EXPERIMENTAL)],
            on("fw@5", 5, FACTORY, 0), END, (Action.SWITCH_BACK, FACTORY, END),
        ),
        (  # revoked releases are not a target
            [rel("fw@3", 3, state="revoked"), rel("fw@5", 5, state="revoked")],
            on("fw@5", 5, FACTORY, 0), START, (Action.SWITCH_BACK, FACTORY, START),
        ),
        (  # experimental releases are not a target either
            [rel("fw@2", 2), rel("fw@4", 4, **EXPERIMENTAL), rel("fw@5", 5, state="revoked")],
            on("fw@5", 5, "fw@2", 2), START, (Action.SWITCH_BACK, "fw@2", START),
        ),
        (  # the target is newer than the known-good: stay, cannot roll back past 5
            [rel("fw@2", 2), rel("fw@3", 3, state="paused"), rel("fw@5", 5, **EXPERIMENTAL)],
            on("fw@5", 5, "fw@2", 2), END, (Action.STAY, "fw@5", 0),
        ),
        (  # nothing verified in the other slot
            [rel("fw@3", 3), rel("fw@5", 5, state="revoked")],
            on("fw@5", 5), START, (Action.STAY, "fw@5", 0),
        ),
        (  # a newer admissible release is offered instead
            [rel("fw@3", 3), rel("fw@5", 5, **EXPERIMENTAL), rel("fw@6", 6)],
            on("fw@5", 5, "fw@3", 3), END, (Action.INSTALL, "fw@6", 0),
        ),
        (  # an ended non-experimental release is left alone
            [rel("fw@3", 3), rel("fw@5", 5, end_at_unix_ms=END)],
            on("fw@5", 5, "fw@3", 3), END + 1, (Action.STAY, "fw@5", 0),
        ),
        (  # a target of another class does not count
            [rel("fw@3", 3), rel("fw@4", 4, classes=("hub",)), rel("fw@5", 5, state="revoked")],
            on("fw@5", 5, "fw@3", 3), START, (Action.SWITCH_BACK, "fw@3", START),
        ),
    ],
    ids=[
        "experimental-ended", "experimental-running", "halted-experimental-ended", "revoked",
        "factory", "revoked-not-target", "experimental-not-target", "target-above-known-good",
        "no-known-good", "newer-offered", "plain-ended", "other-class",
    ],
)
def test_switch_back_rules(
    releases: list[ReleaseView], installed: Installed, now: int, expected: tuple[Action, str, int]
) -> None:
    decision = decide(releases, dev("d1", installed), now)["fw"]
    assert (decision.action, decision.release_id, decision.switch_at_unix_ms) == expected
    assert decision.reason


def test_a_stay_instead_of_switch_back_says_why() -> None:
    releases = [rel("fw@3", 3), rel("fw@5", 5, state="revoked")]
    reason = decide(releases, dev("d1", on("fw@5", 5, "fw@2", 2)), START)["fw"].reason
    assert "fw@5 was revoked" in reason and "fw@3" in reason and "fw@2" in reason


# ---------------------------------------------------------- next_change_at


@pytest.mark.parametrize(
    ("releases", "now", "lead", "expected"),
    [
        ([], START, 0, None),
        ([rel("fw@2", 2, start_at_unix_ms=START)], START - 1, 0, START),
        ([rel("fw@2", 2, start_at_unix_ms=START)], START - 11, 10, START - 10),
        ([rel("fw@2", 2, start_at_unix_ms=START)], START - 10, 10, None),
        ([rel("fw@2", 2, start_at_unix_ms=START)], START, 0, None),
        ([rel("fw@2", 2, start_at_unix_ms=START, stages=(10, 50, 100), stage_interval_ms=HOUR)],
         START, 0, START + HOUR),
        ([rel("fw@2", 2, start_at_unix_ms=START, stages=(10, 50, 100), stage_interval_ms=HOUR)],
         START + HOUR, 5, START + 2 * HOUR - 5),
        ([rel("fw@2", 2, start_at_unix_ms=START, stages=(10, 50, 100), stage_interval_ms=HOUR)],
         START + 2 * HOUR, 0, None),
        ([rel("fw@2", 2, state="paused", start_at_unix_ms=START, stages=(10, 100), stage_interval_ms=HOUR)],
         START, 0, None),
        ([rel("fw@2", 2, state="paused", **EXPERIMENTAL)], START, 0, END),
        ([rel("fw@2", 2, state="revoked", **EXPERIMENTAL)], START - 1, 0, None),
        ([rel("fw@2", 2, **EXPERIMENTAL)], START, 0, END),
        ([rel("fw@2", 2, **EXPERIMENTAL)], END, 0, None),
        # a stage that would open after the end admits no one: only the end counts
        ([rel("fw@2", 2, start_at_unix_ms=START, end_at_unix_ms=START + HOUR, stages=(10, 100),
              stage_interval_ms=2 * HOUR)], START, 0, START + HOUR),
        ([rel("fw@2", 2, start_at_unix_ms=START + 5), rel("cfg@1", 1, component="cfg", start_at_unix_ms=START + 3)],
         START, 0, START + 3),
    ],
)
def test_next_change_at(
    releases: list[ReleaseView], now: int, lead: int, expected: int | None
) -> None:
    assert next_change_at(releases, now, lead_ms=lead) == expected


# ------------------------------------------------------------- properties

COMPONENTS = ("fw", "cfg")
CLASSES = ("cam", "hub")
GROUPS = ("", "lab", "field")
STATES = ("active", "active", "paused", "halted", "revoked")
STAGE_SETS = ((100,), (10, 100), (10, 50, 100), (1, 2, 99, 100), (33, 66, 100))


@st.composite
def policies(draw: st.DrawFn) -> Policy:
    start = draw(st.sampled_from([0, 1000, 5000]))
    end = draw(st.sampled_from([0, 0, start + 2500, start + 8000]))
    return Policy(
        start_at_unix_ms=start,
        end_at_unix_ms=end,
        experimental=bool(end) and draw(st.booleans()),
        stages=draw(st.sampled_from(STAGE_SETS)),
        stage_interval_ms=draw(st.sampled_from([0, 700, 2000])),
        groups=tuple(draw(st.sets(st.sampled_from(GROUPS[1:]), max_size=2))),
    )


@st.composite
def worlds(draw: st.DrawFn) -> tuple[list[ReleaseView], DeviceView, int, int]:
    releases = []
    for i in range(draw(st.integers(0, 6))):
        component = draw(st.sampled_from(COMPONENTS))
        seq = draw(st.integers(1, 6))
        releases.append(
            ReleaseView(
                f"{component}@{seq}.{i}", component,
                tuple(draw(st.sets(st.sampled_from(CLASSES), min_size=1))), seq,
                draw(st.sampled_from(STATES)), draw(policies()),
            )
        )
    installed = []
    for component in COMPONENTS:
        mine = [r for r in releases if r.component == component]
        choice = draw(st.sampled_from(["none", "factory", *[r.release_id for r in mine]]))
        if choice == "none":
            continue
        seq = next((r.sequence_number for r in mine if r.release_id == choice), 0)
        good = draw(st.sampled_from(["", FACTORY, *[r.release_id for r in mine]]))
        good_seq = next((r.sequence_number for r in mine if r.release_id == good), 0)
        installed.append(Installed(component, FACTORY if choice == "factory" else choice, seq, good, good_seq))
    device = DeviceView(
        draw(st.text(min_size=1, max_size=8)), draw(st.sampled_from(CLASSES)),
        draw(st.sampled_from(GROUPS)), tuple(installed),
    )
    return releases, device, draw(st.integers(0, 12_000)), draw(st.sampled_from([0, 0, 300, 1500]))


def reference(
    releases: list[ReleaseView], device: DeviceView, now: int, lead: int
) -> dict[str, tuple[Action, str, int]]:
    """The rules of issue 12 §3 written out plainly, without the module's helpers."""

    def reaches(r: ReleaseView) -> bool:
        same_vendor = device.vendor_domain in ("", r.vendor_domain) or not r.vendor_domain
        return same_vendor and device.device_class in r.device_classes and (
            len(r.policy.groups) == 0 or device.group in r.policy.groups
        )

    def over(r: ReleaseView, t: int) -> bool:
        return r.policy.end_at_unix_ms != 0 and t >= r.policy.end_at_unix_ms

    out: dict[str, tuple[Action, str, int]] = {}
    components = {i.component for i in device.installed}
    for c in components:
        mine = [i for i in device.installed if i.component == c]
        inst = mine[0] if mine else None
        have = inst.sequence_number if inst else 0
        offers = []
        for r in releases:
            if r.component != c or not reaches(r) or r.state != "active" or over(r, now):
                continue
            if r.sequence_number <= have:
                continue
            h = int(hashlib.sha256(f"{device.device_id}\x00{r.release_id}".encode()).hexdigest()[:16], 16)
            k = [i for i, p in enumerate(r.policy.stages) if h % 10000 < 100 * p][0]
            opens = r.policy.start_at_unix_ms + k * r.policy.stage_interval_ms
            if opens <= now + lead:
                offers.append((r.sequence_number, r.release_id, opens))
        if offers:
            _, rid, opens = max(offers)
            out[c] = (Action.INSTALL, rid, opens)
            continue
        running = "" if inst is None else (inst.release_id or FACTORY)
        cur = [r for r in releases if r.release_id == running and r.component == c]
        if inst is not None and cur:
            r = cur[0]
            if r.state == "revoked" or (r.policy.experimental and over(r, now)):
                back = [x for x in releases if x.component == c and reaches(x)
                        and not x.policy.experimental and x.state != "revoked"]
                target = max((x.sequence_number, x.release_id) for x in back)[1] if back else FACTORY
                if target == inst.known_good_release_id:
                    at = now if r.state == "revoked" else r.policy.end_at_unix_ms
                    out[c] = (Action.SWITCH_BACK, target, at)
                    continue
        out[c] = (Action.STAY, running, 0)
    return out


def plain(decisions: dict[str, Decision]) -> dict[str, tuple[Action, str, int]]:
    return {c: (d.action, d.release_id, d.switch_at_unix_ms) for c, d in decisions.items()}


@given(worlds())
@settings(max_examples=1000, deadline=None)
def test_decide_matches_the_reference_model(world: tuple[list[ReleaseView], DeviceView, int, int]) -> None:
    releases, device, now, lead = world
    assert plain(decide(releases, device, now, lead_ms=lead)) == reference(releases, device, now, lead)


@given(worlds(), st.randoms(use_true_random=False))
@settings(max_examples=300, deadline=None)
def test_decide_does_not_depend_on_release_order(
    world: tuple[list[ReleaseView], DeviceView, int, int], rnd: random.Random
) -> None:
    releases, device, now, lead = world
    shuffled = list(releases)
    rnd.shuffle(shuffled)
    assert decide(shuffled, device, now, lead_ms=lead) == decide(releases, device, now, lead_ms=lead)


@given(worlds())
@settings(max_examples=300, deadline=None)
def test_an_install_is_never_older_never_early_always_targeted(
    world: tuple[list[ReleaseView], DeviceView, int, int],
) -> None:
    releases, device, now, lead = world
    by_id = {r.release_id: r for r in releases}
    have = {i.component: i.sequence_number for i in device.installed}
    for component, d in decide(releases, device, now, lead_ms=lead).items():
        if d.action is not Action.INSTALL:
            continue
        r = by_id[d.release_id]
        assert r.sequence_number > have.get(component, 0)
        assert d.switch_at_unix_ms >= r.policy.start_at_unix_ms
        assert d.switch_at_unix_ms <= now + lead
        assert device.device_class in r.device_classes
        assert not r.policy.groups or device.group in r.policy.groups


@given(st.text(max_size=10), st.text(min_size=1, max_size=10), policies(), st.integers(0, 20_000),
       st.integers(0, 20_000), st.sampled_from([0, 300]))
@settings(max_examples=300, deadline=None)
def test_admission_is_monotonic_until_the_end(
    device_id: str, release_id: str, policy: Policy, t1: int, dt: int, lead: int
) -> None:
    t2 = t1 + dt
    assume(not policy.end_at_unix_ms or t2 < policy.end_at_unix_ms)
    release = ReleaseView(release_id, "fw", ("cam",), 9, "active", replace(policy, groups=()))
    device = dev(device_id, on(FACTORY, 0))
    first = decide([release], device, t1, lead_ms=lead)["fw"]
    later = decide([release], device, t2, lead_ms=lead)["fw"]
    if first.action is Action.INSTALL:
        assert later == first
    assert open_percent(policy, t1) <= open_percent(policy, t2)


@given(worlds(), st.integers(0, 20_000))
@settings(max_examples=300, deadline=None)
def test_no_decision_changes_before_next_change_at(
    world: tuple[list[ReleaseView], DeviceView, int, int], offset: int
) -> None:
    releases, device, now, lead = world
    nxt = next_change_at(releases, now, lead_ms=lead)
    assert nxt is None or nxt > now
    later = now + offset if nxt is None else min(now + offset, nxt - 1)

    revoked = {r.release_id for r in releases if r.state == "revoked"}
    running = {i.component: i.release_id for i in device.installed}

    def stable(t: int) -> dict[str, tuple[Action, str, int]]:
        # Leaving a revoked release is due "at once": its switch time is now.
        return {
            c: (a, r, 0 if a is Action.SWITCH_BACK and running[c] in revoked else at)
            for c, (a, r, at) in plain(decide(releases, device, t, lead_ms=lead)).items()
        }

    assert stable(later) == stable(now)


def test_a_ten_percent_stage_is_near_ten_percent_for_many_release_ids() -> None:
    # Wider tolerance than the 1,000-device check: spread over 20 releases.
    for n in range(20):
        policy = Policy(start_at_unix_ms=START, stages=(10, 100), stage_interval_ms=HOUR)
        share = sum(device_stage(policy, d, f"fw@{n}") == 0 for d in DEVICES)
        assert 60 <= share <= 140, (n, share)
