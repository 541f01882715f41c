"""The update procedure of a device, sans-I/O (as ``services/consensus/raft``
is for Raft): events in, a ``Ready`` of actions and reports out; time is a
parameter (gateway time, in ms); nothing here touches a file, a socket or a
clock.

Per component::

    idle --offer verified--> installing --installed--> staged
    staged --now >= switch_at--> trial --healthy--> idle (committed: known good)
                                 trial --unhealthy--> idle (fell back to the known-good slot)
    idle --switch back to the release in the other slot--> switching_back --now >= at--> idle
    installing | staged | switching_back --hold--> idle

The contract of a ``Ready`` (as etcd-io/raft's): the runtime persists
``Procedure.state`` when ``state_changed``, and only then does the actions
and sends the reports, so nothing reported or switched is lost by a crash.
An offer that arrives while a switched release is on trial waits for the
trial's end. Offers are verified here (``verify.py`` is pure) against the
highest sequence ever accepted for the component.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace

from .errors import DownloadFailed, Reason, Refused
from .model import (
    FACTORY,
    ComponentState,
    DeviceState,
    Hold,
    Installed,
    Kind,
    Offer,
    Report,
    ReportEvent,
    SlotContent,
    SwitchBack,
    VerifiedRelease,
)
from .verify import DeviceProfile, verify_offer

MAX_FAILED = 16  # releases remembered as failed per component
MAX_REFUSED = 256  # offers remembered as refused (so a repeated one is not reported again)


# ---------------------------------------------------------------- actions


@dataclass(frozen=True, slots=True)
class StartInstall:
    """Download the payload into ``slot`` (the inactive one), check its
    digest, and answer with ``Procedure.install_result``."""

    component: str
    slot: str
    release: VerifiedRelease
    urls: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class CancelInstall:
    component: str
    slot: str


@dataclass(frozen=True, slots=True)
class Switched:
    """The active slot changed (for the runtime's log and the simulator)."""

    component: str
    slot: str
    release_id: str
    sequence_number: int
    at_unix_ms: int  # gateway time
    back: bool = False  # a switch back or a fallback, not a new release


@dataclass(frozen=True, slots=True)
class RunHealthCheck:
    """Run the health check of the release in ``slot``; answer with
    ``Procedure.health_result``."""

    component: str
    slot: str
    release_id: str


Action = StartInstall | CancelInstall | Switched | RunHealthCheck


@dataclass(frozen=True, slots=True)
class Ready:
    actions: tuple[Action, ...] = ()
    reports: tuple[Report, ...] = ()  # new; already in state.unacked
    state_changed: bool = False

    def __add__(self, other: Ready) -> Ready:
        return Ready(self.actions + other.actions, self.reports + other.reports,
                     self.state_changed or other.state_changed)


# ---------------------------------------------------------------- phases


@dataclass(frozen=True, slots=True)
class Installing:
    release: VerifiedRelease
    switch_at: int
    offer_key: str


@dataclass(frozen=True, slots=True)
class Staged:
    release: VerifiedRelease
    switch_at: int


@dataclass(frozen=True, slots=True)
class Trial:
    release_id: str


@dataclass(frozen=True, slots=True)
class SwitchingBack:
    release_id: str
    switch_at: int


Phase = Installing | Staged | Trial | SwitchingBack


def failure_detail(step: str, reason: str, code: str, message: str) -> str:
    """A SUIT-style report of a failed step (draft-ietf-suit-report's
    record: which step, why, the code)."""
    return json.dumps({"step": step, "reason": reason, "code": code, "message": message},
                      sort_keys=True)


def offer_key(offer: Offer) -> str:
    """Identifies an offer's content, so that the same refused offer is
    reported once, however often a gateway repeats it."""
    h = hashlib.sha256(offer.envelope)
    h.update(f"\0{offer.component}\0{offer.release_id}\0{offer.payload_cid}\0{offer.payload_size}".encode())
    return h.hexdigest()


@dataclass
class _Step:
    """What one input does, gathered before it becomes a Ready."""

    actions: list[Action] = field(default_factory=list)
    events: list[ReportEvent] = field(default_factory=list)
    changed: bool = False


class Procedure:
    """One device's update procedure over all its components."""

    def __init__(self, profile: DeviceProfile, state: DeviceState) -> None:
        self.profile = profile
        self._state = state
        self._phase: dict[str, Phase] = {}
        self._deferred: dict[str, Offer] = {}
        self._refused: dict[str, None] = {}  # insertion-ordered, bounded

    @property
    def state(self) -> DeviceState:
        return self._state

    def phase(self, component: str) -> Phase | None:
        return self._phase.get(component)

    def installed(self) -> tuple[Installed, ...]:
        return self._state.installed()

    def next_deadline(self) -> int | None:
        """The earliest gateway time at which ``tick`` has something to do."""
        times = [p.switch_at for p in self._phase.values() if isinstance(p, Staged | SwitchingBack)]
        return min(times) if times else None

    # ------------------------------------------------------------ inputs

    def start(self, now: int) -> Ready:
        """After a (re)start: a component switched but not yet checked is
        checked again (the device may have died in its health check)."""
        step = _Step()
        for c in self._state.components:
            if c.trial:
                self._phase[c.component] = Trial(c.running.release_id)
                step.actions.append(RunHealthCheck(c.component, c.active, c.running.release_id))
        return self._ready(step, now)

    def offer(self, offer: Offer, now: int) -> Ready:
        step = _Step()
        comp = self._state.component(offer.component)
        key = offer_key(offer)
        if key in self._refused:
            return Ready()
        if comp is None:
            self._refuse(step, offer, key, Refused(Reason.WRONG_DEVICE, "COMPONENT_MISMATCH",
                                                   f"this device has no component {offer.component!r}"), now)
            return self._ready(step, now)
        if offer.release_id == comp.running.release_id or offer.release_id in comp.failed:
            return Ready()  # running it already, or it failed here and was reported
        phase = self._phase.get(offer.component)
        if isinstance(phase, Trial):
            self._deferred[offer.component] = offer  # after the trial's verdict
            return Ready()
        if isinstance(phase, Installing | Staged) and phase.release.release_id == offer.release_id:
            if phase.switch_at != offer.switch_at_unix_ms:  # the gateway moved the switch time
                self._phase[offer.component] = replace(phase, switch_at=offer.switch_at_unix_ms)
            return self.tick(now)
        try:
            release = verify_offer(offer, self.profile, comp.highest_sequence)
        except Refused as refused:
            self._refuse(step, offer, key, refused, now)
            return self._ready(step, now)
        self._cancel(step, comp)
        comp = self._state.component(offer.component)
        assert comp is not None
        # The inactive slot is overwritten from here on: it no longer holds what it held.
        self._set(step, comp.with_slot(comp.inactive, None))
        self._phase[offer.component] = Installing(release, offer.switch_at_unix_ms, key)
        step.actions.append(StartInstall(offer.component, comp.inactive, release, offer.payload_urls))
        return self._ready(step, now)

    def install_result(self, component: str, release_id: str,
                       error: Refused | DownloadFailed | None, now: int) -> Ready:
        """The answer to a ``StartInstall``: the payload is in the slot and
        matches the manifest's digest (None), or why not."""
        phase = self._phase.get(component)
        comp = self._state.component(component)
        if not isinstance(phase, Installing) or phase.release.release_id != release_id or comp is None:
            return Ready()  # a cancelled install answering late
        step = _Step()
        release = phase.release
        if error is None:
            self._set(step, comp.with_slot(comp.inactive, SlotContent(
                release.release_id, release.sequence_number, release.sha256.hex(), release.size, False)))
            self._phase[component] = Staged(release, phase.switch_at)
            return self._ready(step, now) + self.tick(now)
        del self._phase[component]
        if isinstance(error, Refused):
            self._remember_refused(phase.offer_key)
            self._event(step, Kind.REFUSED, component, release, now, failure_detail(
                error.step, str(error.reason), error.suit_code, error.message))
        else:
            self._event(step, Kind.INSTALL_FAILED, component, release, now, failure_detail(
                "fetch", "UNAVAILABLE", "PAYLOAD_UNAVAILABLE", str(error)))
        return self._ready(step, now)

    def tick(self, now: int) -> Ready:
        """Switch whatever is due at gateway time ``now`` (never before)."""
        step = _Step()
        for component, phase in list(self._phase.items()):
            comp = self._state.component(component)
            assert comp is not None
            if isinstance(phase, Staged) and now >= phase.switch_at:
                self._switch(step, comp, phase.release, now)
            elif isinstance(phase, SwitchingBack) and now >= phase.switch_at:
                self._switch_back(step, comp, phase.release_id, now)
        return self._ready(step, now)

    def health_result(self, component: str, release_id: str, healthy: bool, detail: str,
                      now: int) -> Ready:
        phase = self._phase.get(component)
        comp = self._state.component(component)
        if not isinstance(phase, Trial) or phase.release_id != release_id or comp is None:
            return Ready()
        del self._phase[component]
        step = _Step()
        running = comp.running
        if healthy:
            # Commit: this slot is the known-good one from now on.
            self._set(step, replace(comp.with_slot(comp.active, replace(running, good=True)),
                                    known_good=comp.active, trial=False))
            self._event(step, Kind.INSTALLED, component, running, now)
        else:
            failed = (*comp.failed, running.release_id)[-MAX_FAILED:]
            self._event(step, Kind.INSTALL_FAILED, component, running, now,
                        failure_detail("health-check", "UNHEALTHY", "HEALTH_CHECK_FAILED", detail))
            fallback = comp.fallback
            if fallback is None:
                self._set(step, replace(comp, trial=False, failed=failed))
            else:
                other = comp.inactive
                self._set(step, replace(comp, active=other, known_good=other, trial=False, failed=failed))
                step.actions.append(Switched(component, other, fallback.release_id,
                                             fallback.sequence_number, now, back=True))
                self._event(step, Kind.FELL_BACK, component, fallback, now)
        ready = self._ready(step, now)
        deferred = self._deferred.pop(component, None)
        return ready + self.offer(deferred, now) if deferred is not None else ready

    def hold(self, hold: Hold, now: int) -> Ready:
        """Stay: forget a pending offer (or switch back) not yet switched."""
        step = _Step()
        self._deferred.pop(hold.component, None)
        comp = self._state.component(hold.component)
        if comp is not None:
            self._cancel(step, comp)
        return self._ready(step, now)

    def switch_back(self, command: SwitchBack, now: int) -> Ready:
        """Return to the known-good release in the other slot at the given
        time, if that slot holds it; nothing else can be switched back to
        (anti-rollback: an older release is never installed anew)."""
        comp = self._state.component(command.component)
        target = command.release_id or FACTORY
        if comp is None or isinstance(self._phase.get(command.component), Trial):
            return Ready()
        step = _Step()
        self._deferred.pop(command.component, None)
        if comp.running.release_id == target:
            self._cancel(step, comp)
            return self._ready(step, now)
        other = comp.slot(comp.inactive)
        if other is None or other.release_id != target or not other.good:
            return Ready()
        self._cancel(step, comp)
        self._phase[command.component] = SwitchingBack(target, command.switch_at_unix_ms)
        return self._ready(step, now) + self.tick(now)

    def ack(self, seq: int) -> Ready:
        """The report ``seq`` is committed: it need not be sent again."""
        unacked = tuple(r for r in self._state.unacked if r.seq != seq)
        return self._drop_reports(unacked)

    def acked_up_to(self, seq: int) -> Ready:
        """The ledger holds every report up to ``seq`` (a Welcome says so)."""
        return self._drop_reports(tuple(r for r in self._state.unacked if r.seq > seq))

    # ------------------------------------------------------------ internals

    def _drop_reports(self, unacked: tuple[Report, ...]) -> Ready:
        if len(unacked) == len(self._state.unacked):
            return Ready()
        self._state = replace(self._state, unacked=unacked)
        return Ready(state_changed=True)

    def _switch(self, step: _Step, comp: ComponentState, release: VerifiedRelease, now: int) -> None:
        target = comp.inactive
        self._set(step, replace(comp, active=target, trial=True,
                                highest_sequence=max(comp.highest_sequence, release.sequence_number)))
        self._phase[comp.component] = Trial(release.release_id)
        step.actions.append(Switched(comp.component, target, release.release_id, release.sequence_number, now))
        step.actions.append(RunHealthCheck(comp.component, target, release.release_id))

    def _switch_back(self, step: _Step, comp: ComponentState, release_id: str, now: int) -> None:
        del self._phase[comp.component]
        other = comp.fallback
        if other is None or other.release_id != release_id:
            return  # the slot changed meanwhile
        target = comp.inactive
        self._set(step, replace(comp, active=target, known_good=target, trial=False))
        step.actions.append(Switched(comp.component, target, other.release_id, other.sequence_number,
                                     now, back=True))
        self._event(step, Kind.SWITCHED_BACK, comp.component, other, now)

    def _cancel(self, step: _Step, comp: ComponentState) -> None:
        phase = self._phase.get(comp.component)
        if isinstance(phase, Installing):
            step.actions.append(CancelInstall(comp.component, comp.inactive))
        if isinstance(phase, Installing | Staged | SwitchingBack):
            del self._phase[comp.component]

    def _refuse(self, step: _Step, offer: Offer, key: str, refused: Refused, now: int) -> None:
        self._remember_refused(key)
        step.events.append(ReportEvent(
            Kind.REFUSED, offer.component, offer.release_id, offer.sequence_number, now,
            failure_detail(refused.step, str(refused.reason), refused.suit_code, refused.message)))

    def _remember_refused(self, key: str) -> None:
        self._refused[key] = None
        while len(self._refused) > MAX_REFUSED:
            del self._refused[next(iter(self._refused))]

    def _set(self, step: _Step, comp: ComponentState) -> None:
        self._state = self._state.with_component(comp)
        step.changed = True

    @staticmethod
    def _event(step: _Step, kind: Kind, component: str, what: VerifiedRelease | SlotContent,
               now: int, detail: str = "") -> None:
        step.events.append(ReportEvent(kind, component, what.release_id, what.sequence_number, now, detail))

    def _ready(self, step: _Step, now: int) -> Ready:
        reports: tuple[Report, ...] = ()
        if step.events:
            seq = self._state.report_counter + 1
            report = Report(seq, tuple(step.events))
            self._state = replace(self._state, report_counter=seq, unacked=(*self._state.unacked, report))
            reports = (report,)
        return Ready(tuple(step.actions), reports, step.changed or bool(reports))
