"""The update procedure's transitions, table-driven: each scenario is a list
of inputs, each with the actions, report kinds and running release it must
give (sans-I/O: no network, no clock; time is the argument)."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace

import pytest

from agent.errors import DownloadFailed, Reason, Refused
from agent.model import FACTORY, Hold, Kind, SwitchBack, factory_state
from agent.procedure import (
    CancelInstall,
    Procedure,
    Ready,
    RunHealthCheck,
    StartInstall,
    Switched,
)
from agent.verify import DeviceProfile, load_trust_anchors

from .fakes import COMPONENT, Publisher, offer

PUB = Publisher.new(1)
PROFILE = DeviceProfile(load_trust_anchors([PUB.public_pem]))
PAYLOADS = {seq: f"payload {seq} ".encode() * 50 for seq in range(1, 6)}
OFFERS = {seq: offer(PUB, seq, PAYLOADS[seq], switch_at=1_000) for seq in PAYLOADS}


def rid(seq: int) -> str:
    return f"{COMPONENT}@{seq}"


@dataclass(frozen=True)
class Step:
    """One input, and what it must give."""

    do: str  # offer, installed, refused_payload, download_failed, tick, healthy, unhealthy,
    #          hold, switch_back, restart, tampered, ack
    arg: int | str = 0
    now: int = 0
    actions: tuple[type, ...] = ()
    reports: tuple[Kind, ...] = ()
    running: str | None = None  # the release the component runs after the step


def feed(p: Procedure, step: Step) -> tuple[Procedure, Ready]:
    now = step.now
    if step.do == "offer":
        return p, p.offer(OFFERS[int(step.arg)], now)
    if step.do == "offer_late":  # switch at 5_000
        return p, p.offer(replace(OFFERS[int(step.arg)], switch_at_unix_ms=5_000), now)
    if step.do == "tampered":
        return p, p.offer(offer(Publisher.new(9), int(step.arg), PAYLOADS[int(step.arg)]), now)
    if step.do == "installed":
        return p, p.install_result(COMPONENT, rid(int(step.arg)), None, now)
    if step.do == "refused_payload":
        refused = Refused(Reason.MISMATCH, "IMAGE_DIGEST_MISMATCH", "bad bytes", step="fetch")
        return p, p.install_result(COMPONENT, rid(int(step.arg)), refused, now)
    if step.do == "download_failed":
        return p, p.install_result(COMPONENT, rid(int(step.arg)), DownloadFailed("no route"), now)
    if step.do == "tick":
        return p, p.tick(now)
    if step.do in ("healthy", "unhealthy"):
        return p, p.health_result(COMPONENT, rid(int(step.arg)), step.do == "healthy", "probe", now)
    if step.do == "hold":
        return p, p.hold(Hold(COMPONENT), now)
    if step.do == "switch_back":
        return p, p.switch_back(SwitchBack(COMPONENT, str(step.arg), 2_000), now)
    if step.do == "restart":  # a new process from the persisted state
        q = Procedure(PROFILE, p.state)
        return q, q.start(now)
    raise AssertionError(step.do)


INSTALL_2 = [
    Step("offer", 2, 0, (StartInstall,), (), FACTORY),
    Step("installed", 2, 10, (), (), FACTORY),
    Step("tick", 0, 999, (), (), FACTORY),  # coordinated switch: never before switch_at
    Step("tick", 0, 1_000, (Switched, RunHealthCheck), (), rid(2)),
]

SCENARIOS: dict[str, list[Step]] = {
    "install, switch at the time, healthy -> installed": [
        *INSTALL_2,
        Step("healthy", 2, 1_001, (), (Kind.INSTALLED,), rid(2)),
    ],
    "unhealthy -> back to the known-good slot": [
        *INSTALL_2,
        Step("unhealthy", 2, 1_001, (Switched,), (Kind.INSTALL_FAILED, Kind.FELL_BACK), FACTORY),
        Step("offer", 2, 1_002, (), (), FACTORY),  # the failed release again: already reported
    ],
    "a switch time already past switches once installed": [
        Step("offer", 2, 5_000, (StartInstall,), (), FACTORY),
        Step("installed", 2, 5_001, (Switched, RunHealthCheck), (), rid(2)),
    ],
    "hold while downloading cancels": [
        Step("offer", 2, 0, (StartInstall,), (), FACTORY),
        Step("hold", 0, 5, (CancelInstall,), (), FACTORY),
        Step("installed", 2, 10, (), (), FACTORY),  # the cancelled install answering late
        Step("tick", 0, 2_000, (), (), FACTORY),
    ],
    "hold while staged forgets the switch": [
        Step("offer", 2, 0, (StartInstall,), (), FACTORY),
        Step("installed", 2, 10, (), (), FACTORY),
        Step("hold", 0, 20, (), (), FACTORY),
        Step("tick", 0, 2_000, (), (), FACTORY),
    ],
    "switch back to the known-good release at its time": [
        *INSTALL_2,
        Step("healthy", 2, 1_001, (), (Kind.INSTALLED,), rid(2)),
        Step("switch_back", FACTORY, 1_500, (), (), rid(2)),
        Step("tick", 0, 1_999, (), (), rid(2)),
        Step("tick", 0, 2_000, (Switched,), (Kind.SWITCHED_BACK,), FACTORY),
    ],
    "switch back to a release the other slot does not hold does nothing": [
        *INSTALL_2,
        Step("healthy", 2, 1_001, (), (Kind.INSTALLED,), rid(2)),
        Step("switch_back", rid(1), 1_500, (), (), rid(2)),
        Step("tick", 0, 3_000, (), (), rid(2)),
    ],
    "a tampered envelope is refused once": [
        Step("tampered", 2, 0, (), (Kind.REFUSED,), FACTORY),
        Step("tampered", 2, 1, (), (), FACTORY),
    ],
    "a payload that does not match is refused": [
        Step("offer", 2, 0, (StartInstall,), (), FACTORY),
        Step("refused_payload", 2, 5, (), (Kind.REFUSED,), FACTORY),
        Step("tick", 0, 2_000, (), (), FACTORY),
    ],
    "a payload that cannot be fetched is a failed install": [
        Step("offer", 2, 0, (StartInstall,), (), FACTORY),
        Step("download_failed", 2, 5, (), (Kind.INSTALL_FAILED,), FACTORY),
        Step("offer", 2, 6, (StartInstall,), (), FACTORY),  # offered again: tried again
    ],
    "an older release after a newer one is a rollback": [
        Step("offer", 3, 0, (StartInstall,), (), FACTORY),
        Step("installed", 3, 10, (), (), FACTORY),
        Step("tick", 0, 1_000, (Switched, RunHealthCheck), (), rid(3)),
        Step("healthy", 3, 1_001, (), (Kind.INSTALLED,), rid(3)),
        Step("offer", 2, 1_002, (), (Kind.REFUSED,), rid(3)),
    ],
    "an offer during the trial waits for its verdict": [
        *INSTALL_2,
        Step("offer", 3, 1_000, (), (), rid(2)),
        Step("healthy", 2, 1_001, (StartInstall,), (Kind.INSTALLED,), rid(2)),
    ],
    "a newer offer replaces one being downloaded": [
        Step("offer", 2, 0, (StartInstall,), (), FACTORY),
        Step("offer", 3, 1, (CancelInstall, StartInstall), (), FACTORY),
        Step("installed", 2, 5, (), (), FACTORY),
        Step("installed", 3, 6, (), (), FACTORY),
        Step("tick", 0, 1_000, (Switched, RunHealthCheck), (), rid(3)),
    ],
    "a restart during the trial checks again": [
        *INSTALL_2,
        Step("restart", 0, 1_100, (RunHealthCheck,), (), rid(2)),
        Step("unhealthy", 2, 1_200, (Switched,), (Kind.INSTALL_FAILED, Kind.FELL_BACK), FACTORY),
    ],
    "install into the other slot keeps the known-good one": [
        *INSTALL_2,
        Step("healthy", 2, 1_001, (), (Kind.INSTALLED,), rid(2)),
        Step("offer", 3, 1_002, (StartInstall,), (), rid(2)),
        Step("installed", 3, 1_003, (Switched, RunHealthCheck), (), rid(3)),  # switch_at past
        Step("unhealthy", 3, 1_005, (Switched,), (Kind.INSTALL_FAILED, Kind.FELL_BACK), rid(2)),
    ],
}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_transitions(name: str) -> None:
    p = Procedure(PROFILE, factory_state((COMPONENT,)))
    for i, step in enumerate(SCENARIOS[name]):
        p, ready = feed(p, step)
        where = f"{name}, step {i} ({step.do})"
        assert tuple(type(a) for a in ready.actions) == step.actions, where
        assert tuple(e.kind for r in ready.reports for e in r.events) == step.reports, where
        comp = p.state.component(COMPONENT)
        assert comp is not None and comp.running.release_id == step.running, where
        if ready.reports:
            assert ready.state_changed, where


def test_install_goes_to_the_inactive_slot_and_the_other_keeps_the_known_good() -> None:
    p = Procedure(PROFILE, factory_state((COMPONENT,)))
    (start,) = p.offer(OFFERS[2], 0).actions
    assert isinstance(start, StartInstall) and start.slot == "b"
    p.install_result(COMPONENT, rid(2), None, 1_000)
    p.health_result(COMPONENT, rid(2), True, "", 1_001)
    (installed,) = p.installed()
    assert (installed.release_id, installed.sequence_number) == (rid(2), 2)
    assert installed.known_good_release_id == FACTORY
    comp = p.state.component(COMPONENT)
    assert comp is not None and comp.known_good == "b" and comp.highest_sequence == 2


def test_a_failure_report_is_a_suit_style_record() -> None:
    p = Procedure(PROFILE, factory_state((COMPONENT,)))
    p.offer(OFFERS[2], 0)
    p.install_result(COMPONENT, rid(2), None, 1_000)
    ready = p.health_result(COMPONENT, rid(2), False, "exit status 3", 1_001)
    failed, fell_back = ready.reports[0].events
    assert json.loads(failed.detail)["step"] == "health-check"
    assert (failed.release_id, fell_back.release_id) == (rid(2), FACTORY)


def test_reports_are_numbered_and_kept_until_acknowledged() -> None:
    p = Procedure(PROFILE, factory_state((COMPONENT,)))
    p.offer(offer(Publisher.new(9), 2, PAYLOADS[2]), 0)
    p.offer(offer(Publisher.new(9), 3, PAYLOADS[3]), 0)
    assert [r.seq for r in p.state.unacked] == [1, 2]
    p.ack(1)
    assert [r.seq for r in p.state.unacked] == [2]
    p.offer(offer(Publisher.new(9), 4, PAYLOADS[4]), 0)
    p.acked_up_to(2)
    assert [r.seq for r in p.state.unacked] == [3]
    assert p.state.report_counter == 3


def test_an_offer_for_a_component_the_device_lacks_is_refused() -> None:
    p = Procedure(PROFILE, factory_state((COMPONENT,)))
    ready = p.offer(offer(PUB, 2, PAYLOADS[2], component="bootloader"), 0)
    (event,) = ready.reports[0].events
    assert event.kind is Kind.REFUSED and json.loads(event.detail)["reason"] == "WRONG_DEVICE"
