"""The device agent's domain types: what a gateway offers, what a device
holds in its A/B slots, and what it reports. Frozen, slotted data with no
I/O and no protobuf (``convert.py`` translates at the edge).

The persistent part (``DeviceState``) is what ``slots.py`` writes to the
state file; the update procedure (``procedure.py``) replaces it on every
transition and never mutates it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace

FACTORY = "factory"  # release id of a device's factory image (the rollout decision's name)
SLOTS = ("a", "b")


class Kind(enum.StrEnum):
    """ReportEvent kinds (gateway.proto). For installed, fell_back and
    switched_back the release is what the device runs after the event; for
    install_failed and refused it is the release that failed or was refused."""

    INSTALLED = "installed"
    INSTALL_FAILED = "install_failed"
    FELL_BACK = "fell_back"
    SWITCHED_BACK = "switched_back"
    REFUSED = "refused"


# ---------------------------------------------------------------- from the gateway


@dataclass(frozen=True, slots=True)
class Offer:
    """Run this release (gateway.proto Offer). Every field but the envelope
    is a claim of the gateway; the envelope is checked against the device's
    own trust anchors (``verify.py``) and the claims against the manifest."""

    release_id: str
    component: str
    sequence_number: int
    envelope: bytes = field(repr=False)
    payload_cid: str
    payload_size: int
    switch_at_unix_ms: int = 0  # gateway time; 0: at once
    payload_urls: tuple[str, ...] = ()
    reason: str = ""


@dataclass(frozen=True, slots=True)
class SwitchBack:
    component: str
    release_id: str  # the known-good release to return to ("" or FACTORY: the factory image)
    switch_at_unix_ms: int = 0
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Hold:
    component: str
    reason: str = ""


@dataclass(frozen=True, slots=True)
class VerifiedRelease:
    """An offer whose envelope verified: every field here comes from the
    authenticated manifest (the payload's SHA-256 and size included)."""

    release_id: str
    component: str
    sequence_number: int
    sha256: bytes
    size: int

    @property
    def cid(self) -> str:
        return "sha256:" + self.sha256.hex()


# ---------------------------------------------------------------- slots


@dataclass(frozen=True, slots=True)
class SlotContent:
    """What one slot of a component holds."""

    release_id: str
    sequence_number: int
    sha256: str  # hex; "" for the factory image
    size: int
    good: bool  # ran and passed its health check (or the factory image)


@dataclass(frozen=True, slots=True)
class ComponentState:
    """One component's A/B slots. ``known_good`` is the slot the device
    returns to when a new release fails its health check; ``trial`` says the
    active slot was switched to and its health check has not answered yet
    (a restart in that window re-runs the check)."""

    component: str
    active: str
    a: SlotContent | None
    b: SlotContent | None
    known_good: str
    highest_sequence: int  # anti-rollback: the highest sequence ever accepted
    trial: bool = False
    failed: tuple[str, ...] = ()  # releases that failed their health check here (newest last)

    def slot(self, name: str) -> SlotContent | None:
        return self.a if name == "a" else self.b

    def with_slot(self, name: str, content: SlotContent | None) -> ComponentState:
        return replace(self, a=content) if name == "a" else replace(self, b=content)

    @property
    def inactive(self) -> str:
        return "b" if self.active == "a" else "a"

    @property
    def running(self) -> SlotContent:
        content = self.slot(self.active)
        if content is None:
            raise AssertionError(f"component {self.component}: the active slot is empty")
        return content

    @property
    def fallback(self) -> SlotContent | None:
        """The other slot when it holds a release that ran and passed."""
        other = self.slot(self.inactive)
        return other if other is not None and other.good else None


@dataclass(frozen=True, slots=True)
class Installed:
    """A component as a device reports it (gateway.proto InstalledComponent)."""

    component: str
    release_id: str
    sequence_number: int
    known_good_release_id: str = ""
    known_good_sequence_number: int = 0


# ---------------------------------------------------------------- reports


@dataclass(frozen=True, slots=True)
class ReportEvent:
    kind: Kind
    component: str
    release_id: str
    sequence_number: int
    at_unix_ms: int  # gateway time
    detail: str = ""  # JSON; a SUIT-style report for failures


@dataclass(frozen=True, slots=True)
class Report:
    seq: int  # the device's report counter: the idempotency key of the ledger entry
    events: tuple[ReportEvent, ...]


@dataclass(frozen=True, slots=True)
class DeviceState:
    """Everything a device keeps across restarts."""

    components: tuple[ComponentState, ...]
    report_counter: int = 0  # the seq of the last report made
    unacked: tuple[Report, ...] = ()  # made, not yet acknowledged as committed

    def component(self, name: str) -> ComponentState | None:
        for c in self.components:
            if c.component == name:
                return c
        return None

    def with_component(self, state: ComponentState) -> DeviceState:
        others = tuple(c for c in self.components if c.component != state.component)
        return replace(self, components=tuple(sorted((*others, state), key=lambda c: c.component)))

    def installed(self) -> tuple[Installed, ...]:
        out = []
        for c in self.components:
            running = c.running
            fallback = c.fallback
            out.append(Installed(
                c.component, running.release_id, running.sequence_number,
                fallback.release_id if fallback else "", fallback.sequence_number if fallback else 0,
            ))
        return tuple(out)


def factory_state(components: tuple[str, ...], factory_sequence: int = 0) -> DeviceState:
    """A new device: each component's factory image in slot a, known good."""
    image = SlotContent(FACTORY, factory_sequence, "", 0, True)
    return DeviceState(tuple(
        ComponentState(c, "a", image, None, "a", factory_sequence) for c in sorted(set(components))
    ))
