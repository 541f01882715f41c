"""The rollout decision: what a device should run, as a pure function.

Owns issue 12 §3 ("rollout decisions as a pure function"): from the release
state the ledger holds, a device's class, group and installed versions, and
the time, :func:`decide` says per component whether the device stays,
installs a release (and when it switches to it) or switches back to its
known-good slot. :func:`next_change_at` says when some decision may change
next, so the gateway re-decides then instead of on a fixed tick.

Sans-I/O: no clock, no randomness, no protobuf, no network. Time is the
``now_unix_ms`` argument (the gateway's clock); admission is a stable hash of
(device id, release id), so every gateway, before and after a restart, takes
the same decision for the same inputs. Translating ledger ``Release``
messages and device ``InstalledComponent`` messages into these views is the
gateway's ``convert.py``; sending offers, holding sessions and re-deciding at
:func:`next_change_at` is its runtime.

The rules (issue 12 §3; protos/fleetsuit/v1/consensus.proto ``RolloutPolicy``):

- R1 eligibility: a release reaches a device only when the device's vendor
  (when it says one) is the release's, its class is one of the release's
  classes, and the policy names no groups or the device's group.
- R2 staged admission: stage k opens at ``start + k * stage_interval_ms`` and
  admits the devices whose :func:`bucket` is below ``stages[k]`` percent; a
  device admitted once stays admitted (stages are cumulative).
- R3 install: an eligible, active, not ended release with a sequence number
  above the installed one is offered once the device's stage opens, or
  ``lead_ms`` earlier (the device downloads and installs into its inactive
  slot ahead of time) but always with ``switch_at`` = the stage's opening time,
  so no device switches before the start (coordinated switch). Among several,
  the highest sequence number wins. A device registering late gets it too.
- R4 switch back: a device on an experimental release past its end time, or
  on a revoked release, goes back to the newest eligible non-experimental,
  non-revoked release (or the factory image when there is none), but only
  when that is what its known-good slot holds; otherwise it stays (it cannot
  go below its anti-rollback sequence number except back to that slot).
- R5 otherwise the device stays: paused and halted releases admit no one new,
  and devices already on them keep them.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from fleetsuit import release_model
from fleetsuit.errors import ServiceError

FACTORY = "factory"  # release id of a device's factory image

# Stored release states (the ledger's Release.state). "ended" is what a
# reader reports for an active or paused release past its end time; the
# core computes it from the end time and treats a stored "ended" alike.
ACTIVE = "active"
PAUSED = "paused"
HALTED = "halted"
REVOKED = "revoked"
ENDED = "ended"

BUCKETS = 10_000  # admission granularity: 0.01% of the fleet


class ErrorCode(enum.StrEnum):
    INVALID_POLICY = "GATEWAY_INVALID_POLICY"
    INVALID_DEVICE = "GATEWAY_INVALID_DEVICE"


class RolloutError(ServiceError):
    code: ErrorCode = ErrorCode.INVALID_POLICY


class InvalidPolicy(RolloutError):
    """A rollout policy the rules cannot be applied to (bad stages, negative times)."""

    code = ErrorCode.INVALID_POLICY


class InvalidDevice(RolloutError):
    """A device view that cannot be decided on (a component reported twice)."""

    code = ErrorCode.INVALID_DEVICE


class Action(enum.Enum):
    STAY = "stay"
    INSTALL = "install"
    SWITCH_BACK = "switch_back"


@dataclass(frozen=True, slots=True)
class Policy:
    """When and to whom a release goes out; no stages means one stage of 100%.

    ``stages`` are cumulative percentages, strictly ascending from 1 to 100
    and ending at 100 (the ledger checks the same on publish), so every
    device has a stage and the admitted set only grows (R2)."""

    start_at_unix_ms: int = 0  # 0: at once
    end_at_unix_ms: int = 0  # 0: no end
    experimental: bool = False
    stages: tuple[int, ...] = (100,)
    stage_interval_ms: int = 0  # 0: every stage opens at the start time
    groups: tuple[str, ...] = ()  # empty: every group

    def __post_init__(self) -> None:
        if not self.stages:
            object.__setattr__(self, "stages", (100,))
        for name in ("start_at_unix_ms", "end_at_unix_ms", "stage_interval_ms"):
            if getattr(self, name) < 0:
                raise InvalidPolicy(f"{name} must not be negative, not {getattr(self, name)}")
        stages = self.stages
        if any(not 1 <= s <= 100 for s in stages):
            raise InvalidPolicy(f"stages are percentages from 1 to 100, not {list(stages)}")
        if any(b <= a for a, b in zip(stages, stages[1:], strict=False)):
            raise InvalidPolicy(f"stages must be strictly ascending, not {list(stages)}")
        if stages[-1] != 100:
            raise InvalidPolicy(f"stages must end at 100, not {stages[-1]}")


@dataclass(frozen=True, slots=True)
class ReleaseView:
    release_id: str
    component: str
    device_classes: tuple[str, ...]
    sequence_number: int
    state: str  # stored state: active, paused, halted, revoked ("ended" is computed from the end time)
    policy: Policy
    payload_cid: str = ""
    payload_size: int = 0
    vendor_domain: str = ""  # the vendor its device classes belong to


@dataclass(frozen=True, slots=True)
class Installed:
    """What a device runs for one component, and what its other slot holds
    (``known_good_release_id`` "" when nothing verified, FACTORY for the
    factory image)."""

    component: str
    release_id: str  # FACTORY (or "") for the factory image
    sequence_number: int
    known_good_release_id: str = ""
    known_good_sequence_number: int = 0


@dataclass(frozen=True, slots=True)
class DeviceView:
    device_id: str
    device_class: str
    group: str
    installed: tuple[Installed, ...]
    vendor_domain: str = ""  # as the device says; "" when it does not


@dataclass(frozen=True, slots=True)
class Decision:
    """What the device should do about one component. ``release_id`` is the
    release to install or switch back to, or the one it stays on ("" when it
    has none of this component); ``switch_at_unix_ms`` is gateway time."""

    component: str
    action: Action
    release_id: str = ""
    switch_at_unix_ms: int = 0
    reason: str = ""


def bucket(device_id: str, release_id: str) -> int:
    """The device's place, 0..9999, in the admission order of a release (R2).

    The first 8 bytes (big-endian) of SHA-256(device_id NUL release_id) mod
    10,000: a function of the pair only, so the decision never flips between
    gateways or restarts (issue 12 §3), and independent per release, so the
    same devices are not always the first."""
    digest = hashlib.sha256(f"{device_id}\0{release_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


def device_stage(policy: Policy, device_id: str, release_id: str) -> int | None:
    """The first stage k whose percentage admits the device (bucket < stages[k]
    * 100); never None for a valid policy, whose last stage is 100%."""
    b = bucket(device_id, release_id)
    for k, percent in enumerate(policy.stages):
        if b < percent * (BUCKETS // 100):
            return k
    return None


def stage_opens_at(policy: Policy, stage: int) -> int:
    """When stage k opens (``release_model.stage_opens_at``)."""
    return release_model.stage_opens_at(policy.start_at_unix_ms, policy.stage_interval_ms, stage)


def open_percent(policy: Policy, now_unix_ms: int) -> int:
    """The percentage of the fleet admitted at ``now`` (0 before the start);
    not counting the end time or the release state."""
    opened = release_model.stages_open(len(policy.stages), policy.start_at_unix_ms, policy.stage_interval_ms,
                                       now_unix_ms)
    return policy.stages[opened - 1] if opened else 0


def decide(
    releases: Iterable[ReleaseView], device: DeviceView, now_unix_ms: int, *, lead_ms: int = 0
) -> dict[str, Decision]:
    """One decision per component the device reports (its factory image
    included), by the rules R1-R5 of the module docstring. A release for a
    component the device does not have is never offered to it: its
    manifest could only be refused there.

    The result does not depend on the order of ``releases`` (ties between
    equal sequence numbers go to the greater release id); release ids are
    unique. Raises :class:`InvalidDevice` when the device reports a
    component twice."""
    if lead_ms < 0:
        raise ValueError(f"lead_ms must not be negative, not {lead_ms}")
    pool = list(releases)
    by_id = {r.release_id: r for r in pool}
    installed: dict[str, Installed] = {}
    for item in device.installed:
        if item.component in installed:
            raise InvalidDevice(f"device {device.device_id} reports component {item.component!r} twice")
        installed[item.component] = item
    eligible: dict[str, list[ReleaseView]] = {}
    for release in pool:
        if _eligible(release, device):  # R1
            eligible.setdefault(release.component, []).append(release)
    return {
        component: _decide_component(
            component, installed.get(component), eligible.get(component, []), by_id, device,
            now_unix_ms, lead_ms,
        )
        for component in sorted(installed)
    }


def next_change_at(
    releases: Iterable[ReleaseView], now_unix_ms: int, *, lead_ms: int = 0
) -> int | None:
    """The earliest time strictly after ``now`` at which some decision may
    change without a new ledger entry, or None when nothing is pending.

    Those times are a stage opening minus ``lead_ms`` of an active release
    (R3 admits new devices; only while the release has not ended by then)
    and the end time of any release not revoked (R3 stops offering it, R4
    starts switching back from an experimental one). A revoked release's
    switch-back is due at once, and paused, halted or revoked releases
    change only with a ledger entry, after which the gateway re-decides anyway."""
    soonest: int | None = None
    for release in releases:
        if release.state == REVOKED:
            continue
        policy = release.policy
        times: list[int] = []
        if policy.end_at_unix_ms:
            times.append(policy.end_at_unix_ms)
        if release.state == ACTIVE:
            for k in range(len(policy.stages)):
                offer_at = stage_opens_at(policy, k) - lead_ms
                if not policy.end_at_unix_ms or offer_at < policy.end_at_unix_ms:
                    times.append(offer_at)
        for t in times:
            if t > now_unix_ms and (soonest is None or t < soonest):
                soonest = t
    return soonest


def _eligible(release: ReleaseView, device: DeviceView) -> bool:
    """R1: targeted by vendor and class (a class name means something only
    under its vendor: class id = uuid5(vendor id, name)), and by group when
    the policy names groups. A device that does not say its vendor is taken
    at its class alone."""
    groups = release.policy.groups
    vendor = not device.vendor_domain or not release.vendor_domain or device.vendor_domain == release.vendor_domain
    return vendor and device.device_class in release.device_classes and (not groups or device.group in groups)


def _ended(policy: Policy, now_unix_ms: int) -> bool:
    return bool(policy.end_at_unix_ms) and now_unix_ms >= policy.end_at_unix_ms


def _admitted_stage(
    release: ReleaseView, device_id: str, installed_sequence: int, now_unix_ms: int, lead_ms: int
) -> int | None:
    """R3: the device's stage of the release when it may be offered now, else None."""
    if release.state != ACTIVE or _ended(release.policy, now_unix_ms):
        return None  # R5: paused, halted, revoked or ended releases admit no one new
    if release.sequence_number <= installed_sequence:
        return None  # anti-rollback: never offer the same or an older sequence
    stage = device_stage(release.policy, device_id, release.release_id)
    if stage is None or stage_opens_at(release.policy, stage) > now_unix_ms + lead_ms:
        return None
    return stage


def _newest(releases: Iterable[ReleaseView]) -> ReleaseView | None:
    return max(releases, key=lambda r: (r.sequence_number, r.release_id), default=None)


def _decide_component(
    component: str,
    current: Installed | None,
    eligible: list[ReleaseView],
    by_id: dict[str, ReleaseView],
    device: DeviceView,
    now_unix_ms: int,
    lead_ms: int,
) -> Decision:
    sequence = current.sequence_number if current else 0
    running = "" if current is None else (current.release_id or FACTORY)
    stages = {
        r.release_id: stage
        for r in eligible
        if (stage := _admitted_stage(r, device.device_id, sequence, now_unix_ms, lead_ms)) is not None
    }
    best = _newest(r for r in eligible if r.release_id in stages)
    if best is not None:  # R3
        stage = stages[best.release_id]
        percent = best.policy.stages[stage]
        return Decision(
            component, Action.INSTALL, best.release_id, stage_opens_at(best.policy, stage),
            f"stage {stage} ({percent}%) of {best.release_id}",
        )
    release = by_id.get(running)
    if current is not None and release is not None and release.component == component:
        revoked = release.state == REVOKED
        if revoked or (release.policy.experimental and _ended(release.policy, now_unix_ms)):
            return _switch_back(component, current, release, revoked, eligible, now_unix_ms)
    return Decision(component, Action.STAY, running, reason=_stay_reason(release, running))


def _switch_back(
    component: str,
    current: Installed,
    release: ReleaseView,
    revoked: bool,
    eligible: list[ReleaseView],
    now_unix_ms: int,
) -> Decision:
    """R4: back to the known-good slot when it holds the newest release the
    device should run; a revoked release is left at once, an ended
    experimental one at its end time (the coordinated switch back)."""
    if revoked:
        why, switch_at = f"{release.release_id} was revoked", now_unix_ms
    else:
        switch_at = release.policy.end_at_unix_ms
        why = f"experimental {release.release_id} ended at {switch_at}"
    newest = _newest(r for r in eligible if not r.policy.experimental and r.state != REVOKED)
    target = newest.release_id if newest else FACTORY
    if target == current.known_good_release_id:
        return Decision(component, Action.SWITCH_BACK, target, switch_at, why)
    held = current.known_good_release_id or "nothing verified"
    return Decision(
        component, Action.STAY, release.release_id,
        reason=f"{why}; the release to return to is {target} but the known-good slot holds "
        f"{held}, and sequence {current.sequence_number} cannot be rolled back past",
    )


def _stay_reason(release: ReleaseView | None, running: str) -> str:
    if not running:
        return "no release of this component is open to the device yet"
    if release is None:
        return f"{running} is up to date: no newer release is open to the device"
    if release.state in (PAUSED, HALTED):
        return f"{running} is {release.state}: devices on it stay, no one new is admitted"
    return f"{running} is up to date: no newer release is open to the device"
