"""The device sessions of one gateway: what each session is told, and when.

Owns the protocol state after registration (gateway.proto, issue 12 §1-§3):
per session the device's view (class, group, installed components), what
it was last told per component, and the rules for what to send next:

- :func:`plan` (pure): from fresh rollout decisions and what was sent, the
  decisions worth sending. Only changes go out: an INSTALL or SWITCH_BACK
  not sent yet (or with another release or switch time), and a Hold when a
  component that had an offer pending is now to STAY (a paused, halted or
  revoked release; not when the device simply installed what it was offered).
- :class:`SessionHub`: every session of this gateway, indexed by device
  class so a change of the release view re-decides only for the sessions it
  can concern, in slices that yield to the event loop (10,000 sessions must
  not stall heartbeats); the timer of ``rollout.next_change_at``; redirects
  to a device's primary when the directory changes, and to its next gateway
  when this one drains; sessions that stay silent too long are closed; the
  gauges of devices by version and by rollout state.

The stream itself (Hello, Challenge, Register, reading heartbeats and
reports) is the servicer's, in ``server``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from fleetsuit.v1 import gateway_pb2 as pb

from . import convert, placement, rollout
from .devices import EnrolmentCache
from .errors import DeviceRejected, DeviceRevoked, GatewayError, HeartbeatMissed, SessionReplaced
from .ledger_view import LedgerListener, PayloadKeeper
from .model import DeviceChange, ReleaseRecord, Releases

if TYPE_CHECKING:
    from .directory import Directory
    from .metrics import GatewayMetrics
    from .model import GatewayAddress

log = logging.getLogger(__name__)

SLICE = 64  # sessions re-decided between two yields to the event loop (~5 ms of work)
CURRENT, OFFERED, SWITCHING_BACK = "current", "offered", "switching_back"
ROLLOUT_STATES = (CURRENT, OFFERED, SWITCHING_BACK)

# ---------------------------------------------------------------- pure rules


@dataclass(frozen=True, slots=True)
class Sent:
    """What a component was last told: an offer or a switch back (with its
    release and switch time), or a hold."""

    action: rollout.Action
    release_id: str = ""
    switch_at_unix_ms: int = 0


def plan(
    decisions: Mapping[str, rollout.Decision],
    installed: Mapping[str, rollout.Installed],
    sent: Mapping[str, Sent],
) -> tuple[list[rollout.Decision], dict[str, Sent]]:
    """(decisions to send, what was sent after them). A STAY in the list
    means a Hold; its ``release_id`` is the release whose offer it withdraws."""
    out: list[rollout.Decision] = []
    after: dict[str, Sent] = {}
    for component, decision in decisions.items():
        before = sent.get(component)
        if decision.action is rollout.Action.STAY:
            if before is None or before.action is rollout.Action.STAY:
                continue  # nothing pending: nothing to say
            running = installed.get(component)
            if running is not None and running.release_id in (
                before.release_id,
                _factory_alias(before.release_id),
            ):
                continue  # it did what it was told; nothing pending any more
            # The Hold names the offer it withdraws.
            out.append(replace(decision, release_id=before.release_id))
            after[component] = Sent(rollout.Action.STAY)
            continue
        now = Sent(decision.action, decision.release_id, decision.switch_at_unix_ms)
        after[component] = now
        if now != before:
            out.append(decision)
    return out, after


def _factory_alias(release_id: str) -> str:
    return "" if release_id == rollout.FACTORY else release_id


def rollout_state(sent: Mapping[str, Sent]) -> str:
    actions = {s.action for s in sent.values()}
    if rollout.Action.INSTALL in actions:
        return OFFERED
    if rollout.Action.SWITCH_BACK in actions:
        return SWITCHING_BACK
    return CURRENT


def version_key(item: rollout.Installed) -> tuple[str, str]:
    return item.component, item.release_id or rollout.FACTORY


# ---------------------------------------------------------------- one session

Outgoing = pb.GatewayMessage | GatewayError | None  # None: end the stream cleanly


class Session:
    """One registered device on this gateway (state only; the servicer
    reads ``outbox`` and writes it to the stream)."""

    def __init__(
        self,
        device_id: str,
        device_class: str,
        group: str,
        installed: Iterable[rollout.Installed],
        *,
        previous_gateway_id: str = "",
        vendor_domain: str = "",
        now_s: float,
    ) -> None:
        self.device_id = device_id
        self.vendor_domain = vendor_domain
        self.device_class = device_class
        self.group = group
        self.installed: dict[str, rollout.Installed] = {i.component: i for i in installed}
        self.previous_gateway_id = previous_gateway_id
        self.sent: dict[str, Sent] = {}
        self.state = CURRENT
        self.target = ""  # the gateway the device was last pointed to (its stable primary)
        # (gateway id, its start time) of a primary the device came from and
        # was not sent back to: sent back once that gateway has restarted.
        self.held_from: tuple[str, int] | None = None
        self.last_seen_s = now_s
        self.outbox: asyncio.Queue[Outgoing] = asyncio.Queue()
        self.closed = False

    def view(self) -> rollout.DeviceView:
        return rollout.DeviceView(
            self.device_id, self.device_class, self.group, tuple(self.installed.values()),
            self.vendor_domain,
        )

    def send(self, message: pb.GatewayMessage) -> None:
        if not self.closed:
            self.outbox.put_nowait(message)

    def close(self, error: GatewayError | None = None) -> None:
        """End the stream (with ``error`` as its status)."""
        if not self.closed:
            self.closed = True
            self.outbox.put_nowait(error)


# ---------------------------------------------------------------- all sessions


class SessionHub(LedgerListener):
    def __init__(
        self,
        *,
        me: GatewayAddress,
        directory: Directory,
        metrics: GatewayMetrics,
        clock: Callable[[], int],
        lead_ms: int,
        heartbeat_interval_ms: int,
        missed_heartbeats: int,
        enrolments: EnrolmentCache | None = None,
        payloads: PayloadKeeper | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.me = me
        self.directory = directory
        self.metrics = metrics
        self.clock = clock
        self.lead_ms = lead_ms
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.silence_s = heartbeat_interval_ms * missed_heartbeats / 1000
        self.enrolments = enrolments
        self.payloads = payloads
        self.monotonic = monotonic
        self.sessions: dict[str, Session] = {}
        self.by_class: dict[str, set[str]] = {}
        self.releases: dict[str, ReleaseRecord] = {}
        self._views: list[rollout.ReleaseView] = []
        self.versions: Counter[tuple[str, str]] = Counter()
        self.states: Counter[str] = Counter()
        self.draining = False
        # Cut off from the ledger for too long: devices are handed to other
        # gateways and new ones sent there (server.GatewayRuntime).
        self.cut_off = False
        self._tasks: set[asyncio.Future[None]] = set()
        for state in ROLLOUT_STATES:
            metrics.devices_by_rollout_state.labels(state).set(0)

    # ------------------------------------------------------------ sessions come and go

    def add(self, session: Session) -> None:
        """Register ``session`` (after the Welcome was queued): decide for it
        and point it to its primary when that is another gateway it did not
        just come from."""
        old = self.sessions.get(session.device_id)
        if old is not None:
            self.remove(old)
            old.close(SessionReplaced(f"device {old.device_id} opened a newer session"))
        self.sessions[session.device_id] = session
        self.by_class.setdefault(session.device_class, set()).add(session.device_id)
        self._count_versions(session.installed.values(), +1)
        self._set_state(session, CURRENT, +1)
        self.metrics.sessions.set(len(self.sessions))
        self.decide(session)
        target = self._target(session.device_id)
        session.target = target.gateway_id
        if target.gateway_id not in (self.me.gateway_id, session.previous_gateway_id):
            self._redirect(session, target, "your primary gateway is live")
        elif target.gateway_id != self.me.gateway_id:
            # It left its primary, which still looks live from here (this
            # gateway's directory has not seen it go, or the device alone
            # cannot reach it): it stays, until that gateway restarts.
            session.held_from = (target.gateway_id, target.started_unix_ms)

    def remove(self, session: Session) -> None:
        if self.sessions.get(session.device_id) is not session:
            return
        del self.sessions[session.device_id]
        members = self.by_class.get(session.device_class)
        if members is not None:
            members.discard(session.device_id)
            if not members:
                del self.by_class[session.device_class]
        self._count_versions(session.installed.values(), -1)
        self._set_state(session, None, -1)
        self.metrics.sessions.set(len(self.sessions))

    def heartbeat(
        self, session: Session, installed: tuple[rollout.Installed, ...], device_time_ms: int
    ) -> None:
        """Answer with the gateway's clock; re-decide when the device's
        installed set changed."""
        started = time.perf_counter()
        session.last_seen_s = self.monotonic()
        session.send(convert.heartbeat(self.clock(), device_time_ms))
        new = {i.component: i for i in installed}
        if installed and new != session.installed:
            self._count_versions(session.installed.values(), -1)
            session.installed = new
            self._count_versions(new.values(), +1)
            self.decide(session)
        self.metrics.heartbeat_seconds.observe(time.perf_counter() - started)

    def seen(self, session: Session) -> None:
        session.last_seen_s = self.monotonic()

    # ------------------------------------------------------------ decisions

    def decide(self, session: Session, now_ms: int | None = None) -> None:
        now = self.clock() if now_ms is None else now_ms
        decisions = rollout.decide(self._views, session.view(), now, lead_ms=self.lead_ms)
        to_send, session.sent = plan(decisions, session.installed, session.sent)
        for decision in to_send:
            message = self._message(session, decision)
            if message is not None:
                session.send(message)
        self._set_state(session, rollout_state(session.sent), 0)

    def _message(self, session: Session, decision: rollout.Decision) -> pb.GatewayMessage | None:
        if decision.action is rollout.Action.INSTALL:
            record = self.releases.get(decision.release_id)
            if record is None:  # decided from a view that just changed
                return None
            self.metrics.offers.labels("offer").inc()
            return convert.offer(decision, record, self._payload_urls(session, record))
        if decision.action is rollout.Action.SWITCH_BACK:
            self.metrics.offers.labels("switch_back").inc()
            return convert.switch_back(decision)
        self.metrics.offers.labels("hold").inc()
        withdrawn = self.releases.get(decision.release_id)
        state = withdrawn.view.state if withdrawn is not None else "no longer in the ledger"
        why = f"the offer of {decision.release_id} is withdrawn: it is {state}"
        return convert.hold(replace(decision, reason=why))

    def _payload_urls(self, session: Session, record: ReleaseRecord) -> list[str]:
        cid = record.view.payload_cid
        if not cid:
            return []
        hosts = [self.me.http_address, self.directory.backup_http(session.device_id)]
        return [f"http://{h}/v1/payloads/{cid}" for h in hosts if h]

    async def redecide(self, device_ids: Iterable[str]) -> int:
        """Decide again for these sessions (those still open), in slices; the
        number decided."""
        ids = list(device_ids)
        done = 0
        for start in range(0, len(ids), SLICE):
            now = self.clock()
            for device_id in ids[start : start + SLICE]:
                session = self.sessions.get(device_id)
                if session is not None and not session.closed:
                    self.decide(session, now)
                    done += 1
            await asyncio.sleep(0)
        return done

    def _of_classes(self, classes: Iterable[str]) -> list[str]:
        out: list[str] = []
        for device_class in classes:
            out.extend(self.by_class.get(device_class, ()))
        return out

    # ------------------------------------------------------------ the ledger (LedgerListener)

    async def releases_changed(self, old: Releases, new: Releases) -> None:
        self.releases = dict(new)
        self._views = [r.view for r in new.values()]
        if self.payloads is not None:
            self.payloads.sync(self._views, self.clock())
        classes: set[str] = set()
        for release_id in set(old) | set(new):
            before, after = old.get(release_id), new.get(release_id)
            if before == after:
                continue
            for record in (before, after):
                if record is not None:
                    classes.update(record.view.device_classes)
        await self.redecide(self._of_classes(classes))

    def devices_changed(self, changes: tuple[DeviceChange, ...]) -> None:
        for change in changes:
            if self.enrolments is not None:
                self.enrolments.invalidate(change.device_id)
            session = self.sessions.get(change.device_id)
            if session is None:
                continue
            if change.action == "revoke":
                session.close(DeviceRevoked(f"device {change.device_id} was revoked"))
            elif change.action == "reject":
                session.close(DeviceRejected(f"device {change.device_id} was rejected"))

    async def time_passed(self, now_unix_ms: int) -> None:
        if self.payloads is not None:
            self.payloads.sync(self._views, now_unix_ms)
        classes = {c for view in self._views for c in view.device_classes}
        await self.redecide(self._of_classes(classes))

    def watch_restarted(self) -> None:
        if self.enrolments is not None:
            self.enrolments.clear()

    # ------------------------------------------------------------ the directory

    def _target(self, device_id: str) -> GatewayAddress:
        """Where the device belongs: its primary among this gateway and the
        stable ones (a gateway live for at least one refresh)."""
        stable = self.directory.stable() | {self.me.gateway_id}
        ranked = placement.rank(device_id, (g for g in self.directory.live if g in stable))
        return self.directory.live[ranked[0]]

    def _redirect(self, session: Session, to: GatewayAddress, reason: str) -> None:
        session.target = to.gateway_id
        session.send(convert.redirect(to, reason))
        self.metrics.redirects.inc()

    def directory_changed(self) -> None:
        if self.draining or self.cut_off:
            return
        task = asyncio.ensure_future(self._retarget(list(self.sessions)))
        self._tasks.add(task)  # held until done (the loop keeps only weak references)
        task.add_done_callback(self._tasks.discard)

    async def _retarget(self, device_ids: list[str]) -> None:
        """Point the sessions whose primary changed to it (when it is not us)."""
        for start in range(0, len(device_ids), SLICE):
            for device_id in device_ids[start : start + SLICE]:
                session = self.sessions.get(device_id)
                if session is None or session.closed or self.draining:
                    continue
                target = self._target(device_id)
                if self._back_to_restarted(session, target):
                    continue
                if target.gateway_id == session.target:
                    continue
                session.target = target.gateway_id
                if target.gateway_id != self.me.gateway_id:
                    self._redirect(session, target, "your primary gateway is live")
            await asyncio.sleep(0)

    def _back_to_restarted(self, session: Session, target: GatewayAddress) -> bool:
        """Send a held device (``Session.held_from``) back to its primary
        once that gateway has restarted (a new start time under its id:
        one that restarts between two directory refreshes never looks
        gone); True when it was sent."""
        held, session.held_from = session.held_from, None
        if held is None or target.gateway_id != held[0]:
            return False
        if target.started_unix_ms == held[1]:
            session.held_from = held  # the same process: the device stays
            return False
        self._redirect(session, target, "your primary gateway is back")
        return True

    def drain(self) -> int:
        """Tell every session to go to its next gateway (this one stops);
        the number told."""
        self.draining = True
        return self.hand_over(f"gateway {self.me.gateway_id} is stopping")

    def hand_over(self, reason: str) -> int:
        """Tell every session to go to its next live gateway; the number told
        (none when no other gateway is live: this one keeps them)."""
        told = 0
        for session in list(self.sessions.values()):
            other = self.directory.next_after_me(session.device_id)
            if other is not None:
                self._redirect(session, other, reason)
                told += 1
        return told

    # ------------------------------------------------------------ silence

    def sweep(self) -> int:
        """Close the sessions silent for too long; the number closed."""
        deadline = self.monotonic() - self.silence_s
        closed = 0
        for session in list(self.sessions.values()):
            if session.last_seen_s < deadline and not session.closed:
                session.close(HeartbeatMissed(
                    f"device {session.device_id} sent nothing for {self.silence_s:.0f} s"))
                self.remove(session)
                self.metrics.missed_heartbeats.inc()
                closed += 1
        return closed

    async def watch_silence(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_interval_ms / 1000)
            self.sweep()

    # ------------------------------------------------------------ gauges

    def devices_by_version(self) -> dict[str, int]:
        # Keys as the ledger's (ledger/devices.py version_key): the release id
        # (it names its component), or <component>@factory.
        return {r if r.startswith(c + "@") else f"{c}@{r}": n for (c, r), n in self.versions.items() if n > 0}

    def _count_versions(self, items: Iterable[rollout.Installed], delta: int) -> None:
        gauge = self.metrics.devices_by_version
        for item in items:
            key = version_key(item)
            self.versions[key] += delta
            count = self.versions[key]
            if count > 0:
                gauge.labels(*key).set(count)
            else:
                del self.versions[key]
                with contextlib.suppress(KeyError):
                    gauge.remove(*key)

    def _set_state(self, session: Session, state: str | None, delta: int) -> None:
        """Move the session's rollout state to ``state`` (None: it left);
        ``delta`` +1 when it is new."""
        gauge = self.metrics.devices_by_rollout_state
        if delta <= 0 and session.state:
            self.states[session.state] -= 1
            gauge.labels(session.state).set(self.states[session.state])
        if state is not None:
            session.state = state
            self.states[state] += 1
            gauge.labels(state).set(self.states[state])
