"""The device state: typed tables every node derives, deterministically,
from the device entries it applies (sans-I/O, like ``releases.py``: the
ledger machine calls it with the entry, where it sits in the chain, and the
applied state; nothing here reads a clock, the network or the disk).

Tables (``LedgerStore.table_get/table_scan``, records encoded by
``codec.py``; in the ``t/`` records, so snapshots carry them):

    device/<device_id>                   the enrolment (state, class, group, key,
                                         reason) and what it last reported
    outcome/<release_id>\\x00<device_id>  installed | failed: the device's last
                                         outcome for that release
    stats/<release_id>                   devices whose last outcome is installed,
                                         failed (in step with ``outcome``)

Enrolment (as Mender and hawkBit do), ``_ENROLMENT`` below: an operator
enrolls a device (accepted at once; enrolling a pending device accepts it
with the operator's key, class and group), or a gateway records a device
that registered unknown as pending (``request``), which an operator
accepts or rejects; any device not revoked may be revoked. Rejected and
revoked ids are never enrolled again.

Reports (DeviceEvents): one entry holds one accepted device's events, in
the order it reported them. installed, fell_back, switched_back and
version set the component's installed version to what the event names;
installed counts a success for its release, install_failed a failure.
Counting is per device: a device's later outcome for a release replaces
its earlier one. After counting, a release whose policy asks for it is
halted automatically once its failures reach the threshold (``halt_due``),
in the same batch as the reports that crossed it, identically on every node.

A refused entry stays in its block and is recorded in the release state's
refusal table (kind ``device_enrollment`` or ``device_events``, the device
id in ``release_id``), as a refused release entry is.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import replace

from fleetsuit.device_auth import DeviceKeyError, load_public_key

from ..errors import (
    DeviceExists,
    DeviceNotAccepted,
    DeviceUnknown,
    InvalidDevice,
    InvalidEvent,
    ReleaseRefused,
    WrongDeviceState,
)
from .codec import device_from_bytes, device_to_bytes, outcomes_from_bytes, outcomes_to_bytes
from .entries import (
    Device,
    DeviceEntry,
    DeviceEvent,
    DeviceEvents,
    Enrollment,
    InstalledVersion,
    Refusal,
    ReleaseOutcomes,
    RolloutPolicy,
)
from .releases import ACTIVE, MAX_NAME, MAX_REASON, PAUSED, ReleaseState
from .store import LedgerStore
from .tables import Tables

PENDING, ACCEPTED, REJECTED, REVOKED = "pending", "accepted", "rejected", "revoked"
DEVICE_STATES = (PENDING, ACCEPTED, REJECTED, REVOKED)

T_DEVICE, T_OUTCOME, T_STATS = "device", "outcome", "stats"
INSTALLED_OUTCOME, FAILED_OUTCOME = "installed", "failed"

# Event kinds (a closed set), and what each does to the device's record.
INSTALLED, INSTALL_FAILED, FELL_BACK, SWITCHED_BACK, REFUSED, VERSION = (
    "installed", "install_failed", "fell_back", "switched_back", "refused", "version",
)
EVENT_KINDS = (INSTALLED, INSTALL_FAILED, FELL_BACK, SWITCHED_BACK, REFUSED, VERSION)
_SETS_VERSION = frozenset({INSTALLED, FELL_BACK, SWITCHED_BACK, VERSION})  # (component, release) runs after it
_OUTCOME_OF = {INSTALLED: INSTALLED_OUTCOME, INSTALL_FAILED: FAILED_OUTCOME}

MAX_EVENTS = 64  # events in one report
MAX_DETAIL_BYTES = 4096  # of one event's detail
MAX_COMPONENTS = 64  # installed versions kept per device
DEVICE_ID = re.compile(r"[A-Za-z0-9._:@-]{1,128}")

ENROLL, REQUEST, ACCEPT, REJECT, REVOKE = "enroll", "request", "accept", "reject", "revoke"
# Actions on an existing device: the states each applies in, and the state it leads to.
_ENROLMENT: dict[str, tuple[frozenset[str], str]] = {
    ENROLL: (frozenset({PENDING}), ACCEPTED),
    ACCEPT: (frozenset({PENDING}), ACCEPTED),
    REJECT: (frozenset({PENDING}), REJECTED),
    REVOKE: (frozenset({PENDING, ACCEPTED, REJECTED}), REVOKED),
}
ENROLMENT_ACTIONS = (ENROLL, REQUEST, ACCEPT, REJECT, REVOKE)


def halt_due(policy: RolloutPolicy, installed: int, failed: int) -> bool:
    """Whether a release's outcomes cross its automatic-halt threshold:
    at least ``halt_min_devices`` (and one) devices reported, and the
    failures are at least ``halt_failure_percent`` of them."""
    total = installed + failed
    percent = policy.halt_failure_percent
    return percent > 0 and total >= max(1, policy.halt_min_devices) and failed * 100 >= percent * total


def halt_reason(policy: RolloutPolicy, installed: int, failed: int) -> str:
    total = installed + failed
    return (f"automatic halt: {failed} of {total} devices failed "
            f"({failed * 100 // total}% >= {policy.halt_failure_percent}%)")


def version_key(component: str, release_id: str) -> str:
    """A devices_by_version key: the release id, which names its component
    (``firmware@3``), or ``<component>@factory`` for a device that runs no
    release of it (``<component>@<id>`` for an id that does not name it)."""
    if release_id.startswith(component + "@"):
        return release_id
    return f"{component}@{release_id or 'factory'}"


def check_enrollment(enrollment: Enrollment) -> None:
    """What an enrolment must say before the table is looked at (InvalidDevice)."""
    if not DEVICE_ID.fullmatch(enrollment.device_id):
        raise InvalidDevice(f"device id {enrollment.device_id[:140]!r} is not 1..128 of [A-Za-z0-9._:@-]")
    if enrollment.action not in ENROLMENT_ACTIONS:
        raise InvalidDevice(f"unknown action {enrollment.action[:40]!r} ({', '.join(ENROLMENT_ACTIONS)})")
    if len(enrollment.group) > MAX_NAME:
        raise InvalidDevice("the group name is longer than 128 characters")
    if enrollment.action in (ENROLL, REQUEST):
        if not enrollment.device_class or len(enrollment.device_class) > MAX_NAME:
            raise InvalidDevice("a device needs a class name (1..128 characters)")
        try:
            load_public_key(enrollment.public_key_pem)
        except DeviceKeyError as exc:
            raise InvalidDevice(f"device {enrollment.device_id}'s key: {exc}") from None


def check_events(events: DeviceEvents) -> str:
    """The device a report is from, once its events are well formed (InvalidEvent)."""
    if not events.events:
        raise InvalidEvent("a report holds at least one event")
    if len(events.events) > MAX_EVENTS:
        raise InvalidEvent(f"a report holds at most {MAX_EVENTS} events, not {len(events.events)}")
    device_id = events.events[0].device_id
    for event in events.events:
        if event.device_id != device_id:
            raise InvalidEvent("a report holds the events of one device")
        if event.kind not in EVENT_KINDS:
            raise InvalidEvent(f"unknown event kind {event.kind[:40]!r} ({', '.join(EVENT_KINDS)})")
        if len(event.detail) > MAX_DETAIL_BYTES:
            raise InvalidEvent(f"an event's detail is at most {MAX_DETAIL_BYTES} bytes, not {len(event.detail)}")
        if any(len(name) > MAX_NAME for name in (event.release_id, event.component, event.gateway_id)):
            raise InvalidEvent("release ids, components and gateway ids are at most 128 characters")
        if event.kind in _SETS_VERSION and not event.component:
            raise InvalidEvent(f"a {event.kind} event names the component")
        if event.kind in _OUTCOME_OF and not event.release_id:
            raise InvalidEvent(f"a {event.kind} event names the release")
    return device_id


class DeviceState(Tables):
    """The device tables of one node (``Tables``: the pending writes of the
    entries being applied). Refusals and automatic halts go to ``releases``,
    whose pending writes the machine takes in the same batch."""

    def __init__(self, store: LedgerStore, releases: ReleaseState) -> None:
        super().__init__(store)
        self._releases = releases

    # ------------------------------------------------------------ reads

    def device(self, device_id: str) -> Device | None:
        raw = self._get(T_DEVICE, device_id)
        return None if raw is None else device_from_bytes(raw)

    def devices(self, state: str = "", after: str = "", limit: int = 0) -> list[Device]:
        """Devices by id (those after ``after``; at most ``limit``, 0: all),
        in ``state`` ("" any)."""
        out: list[Device] = []
        for device_id, raw in self._scan(T_DEVICE):
            if after and device_id <= after:
                continue
            device = device_from_bytes(raw)
            if state and device.state != state:
                continue
            out.append(device)
            if limit and len(out) >= limit:
                break
        return out

    def outcome(self, release_id: str, device_id: str) -> str:
        """A device's last outcome for a release ("" none)."""
        raw = self._get(T_OUTCOME, f"{release_id}\x00{device_id}")
        return "" if raw is None else raw.decode()

    def outcomes(self, release_id: str) -> ReleaseOutcomes:
        raw = self._get(T_STATS, release_id)
        return ReleaseOutcomes(release_id) if raw is None else outcomes_from_bytes(raw)

    def all_outcomes(self) -> list[ReleaseOutcomes]:
        return [outcomes_from_bytes(raw) for _, raw in self._scan(T_STATS)]

    def summary(self) -> tuple[dict[str, int], dict[str, int]]:
        """Devices by state, and accepted devices by installed version
        (``version_key``)."""
        by_state: Counter[str] = Counter()
        by_version: Counter[str] = Counter()
        for _, raw in self._scan(T_DEVICE):
            device = device_from_bytes(raw)
            by_state[device.state] += 1
            if device.state == ACCEPTED:
                by_version.update(version_key(v.component, v.release_id) for v in device.installed)
        return dict(by_state), dict(by_version)

    def digest(self) -> str:
        """A fingerprint of every device table (tests compare nodes with it)."""
        return self._digest((T_DEVICE, T_OUTCOME, T_STATS))

    # ------------------------------------------------------------ apply

    def apply(self, body: DeviceEntry, index: int, height: int, position: int, kind: str) -> tuple[str, str]:
        """Apply one device entry at (index, height, position): ("", "") when
        it took effect, else its refusal (code, message), recorded."""
        subject = body.device_id if isinstance(body, Enrollment) else (
            body.events[0].device_id if body.events else "")
        try:
            if isinstance(body, Enrollment):
                self._enrol(body, index)
            else:
                self._report(body, index)
        except ReleaseRefused as exc:
            return self._refuse(index, height, position, kind, subject, exc.code, str(exc))
        except Exception as exc:
            # As releases.py: a committed entry must never stop the nodes
            # that apply it; only the exception's type is recorded (its text
            # may differ between nodes).
            return self._refuse(index, height, position, kind, subject, InvalidEvent.code,
                                f"the entry could not be applied ({type(exc).__name__})")
        return "", ""

    def _refuse(
        self, index: int, height: int, position: int, kind: str, device_id: str, code: str, message: str
    ) -> tuple[str, str]:
        self._releases.record_refusal(Refusal(index, height, position, kind, device_id[:MAX_NAME], code, message))
        return code, message

    def _put(self, device: Device) -> None:
        self._pending[(T_DEVICE, device.device_id)] = device_to_bytes(device)

    def _enrol(self, enrollment: Enrollment, index: int) -> None:
        check_enrollment(enrollment)
        device_id, action = enrollment.device_id, enrollment.action
        existing = self.device(device_id)
        reason = enrollment.reason[:MAX_REASON]
        if existing is None:
            if action in (ENROLL, REQUEST):
                state = ACCEPTED if action == ENROLL else PENDING
                self._put(Device(device_id, state, enrollment.device_class, enrollment.group,
                                 enrollment.public_key_pem, reason, index=index))
                return
            raise DeviceUnknown(f"no device {device_id!r} in the ledger")
        if action == REQUEST or (action == ENROLL and existing.state != PENDING):
            raise DeviceExists(f"device {device_id} exists ({existing.state})")
        states, target = _ENROLMENT[action]
        if existing.state not in states:
            raise WrongDeviceState(f"cannot {action} device {device_id}: it is {existing.state}")
        if action == ENROLL:
            # The operator's word stands over what the device claimed.
            device = replace(existing, state=target, device_class=enrollment.device_class, group=enrollment.group,
                             public_key_pem=enrollment.public_key_pem, state_reason=reason, index=index)
        else:
            group = enrollment.group if action == ACCEPT and enrollment.group else existing.group
            device = replace(existing, state=target, group=group, state_reason=reason, index=index)
        self._put(device)

    def _report(self, report: DeviceEvents, index: int) -> None:
        device_id = check_events(report)
        device = self.device(device_id)
        if device is None:
            raise DeviceUnknown(f"no device {device_id!r} in the ledger")
        if device.state != ACCEPTED:
            raise DeviceNotAccepted(f"device {device_id} is {device.state}")
        installed = {v.component: v for v in device.installed}
        for event in report.events:
            if event.kind in _SETS_VERSION:
                installed[event.component] = InstalledVersion(event.component, event.release_id,
                                                              event.sequence_number)
        if len(installed) > MAX_COMPONENTS:
            raise InvalidEvent(f"a device reports at most {MAX_COMPONENTS} components")
        # Every refusal is above: from here on the entry takes effect.
        touched: list[str] = []
        for event in report.events:
            outcome = _OUTCOME_OF.get(event.kind)
            if outcome is not None and self._count(event, outcome) and event.release_id not in touched:
                touched.append(event.release_id)
        last = report.events[-1]
        self._put(replace(
            device, installed=tuple(installed[c] for c in sorted(installed)), last_event=last.kind,
            last_event_at_unix_ms=last.at_unix_ms, last_gateway_id=last.gateway_id, index=index,
        ))
        self._halt_where_due(touched)

    def _count(self, event: DeviceEvent, outcome: str) -> bool:
        """Record the device's outcome for the event's release (a release
        the ledger does not hold is not counted); True when it changed."""
        if self._releases.release(event.release_id) is None:
            return False
        key = f"{event.release_id}\x00{event.device_id}"
        before = self.outcome(event.release_id, event.device_id)
        if before == outcome:
            return False
        stats = self.outcomes(event.release_id)
        installed = stats.installed + (outcome == INSTALLED_OUTCOME) - (before == INSTALLED_OUTCOME)
        failed = stats.failed + (outcome == FAILED_OUTCOME) - (before == FAILED_OUTCOME)
        self._pending[(T_OUTCOME, key)] = outcome.encode()
        self._pending[(T_STATS, event.release_id)] = outcomes_to_bytes(
            ReleaseOutcomes(event.release_id, installed, failed))
        return True

    def _halt_where_due(self, release_ids: Iterable[str]) -> None:
        for release_id in release_ids:
            release = self._releases.release(release_id)
            if release is None or release.state not in (ACTIVE, PAUSED):
                continue
            stats = self.outcomes(release_id)
            if halt_due(release.rollout, stats.installed, stats.failed):
                self._releases.halt(release_id, halt_reason(release.rollout, stats.installed, stats.failed))
