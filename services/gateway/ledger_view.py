"""The gateway's view of the ledger (issue 12 §3: "gateways follow the
ledger with WatchBlocks").

Owns following the local consensus node: first the release state
(``ListReleases`` with envelopes, ``stale_ok``: the node's applied state),
then every block from the head on. A block carrying a release, revocation or
rollout entry refreshes the release view (the applied state is the truth:
the gateway does not re-implement how entries apply); a block carrying
device enrolments or events names the devices whose cached enrolment must
go. A lost watch is opened again after a bounded, jittered backoff, with the
release view re-read and every cached enrolment dropped (blocks may have
been missed). Also owns the timer at ``rollout.next_change_at``: decisions
change with time (a stage opens, an experimental release ends) without any
entry, and the gateway re-decides then rather than on a fixed tick.

And the payloads of the view (issue 12 §4): which to prefetch and which to
pin in the cache (:func:`payload_plan`, pure; :class:`PayloadKeeper` does it).

Not here: what the sessions do with a change (``sessions``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from fleetsuit.logs import RateLimitedLog

from . import rollout
from .errors import describe
from .model import DeviceChange, ReleaseRecord, Releases

if TYPE_CHECKING:
    from .metrics import GatewayMetrics
    from .ports import LedgerPort, PayloadStore

log = logging.getLogger(__name__)

MAX_TIMER_SLEEP_S = 30.0  # re-read the clock at least this often (it may be stepped)
SOFT_REFRESH_S = 1.0


class Backoff:
    """Bounded exponential backoff with jitter (half to all of the step), so
    the gateways of a cluster do not reconnect in step."""

    def __init__(self, rng: random.Random, base_s: float = 0.1, max_s: float = 5.0) -> None:
        self._rng = rng
        self._base_s = base_s
        self._max_s = max_s
        self._attempt = 0

    def next(self) -> float:
        step = min(self._max_s, self._base_s * (2**self._attempt))
        self._attempt = min(self._attempt + 1, 30)
        return float(step * (0.5 + self._rng.random() / 2))

    def reset(self) -> None:
        self._attempt = 0


class LedgerListener:
    """What the view tells (the session hub overrides what it cares about)."""

    async def releases_changed(self, old: Releases, new: Releases) -> None:
        """The release view changed (also called once with the first view)."""

    def devices_changed(self, changes: tuple[DeviceChange, ...]) -> None:
        """A block named these devices (enrolment actions or events)."""

    async def time_passed(self, now_unix_ms: int) -> None:
        """A time from ``rollout.next_change_at`` was reached."""

    def watch_restarted(self) -> None:
        """The watch was opened again: blocks may have been missed."""


class LedgerView:
    def __init__(
        self,
        port: LedgerPort,
        listener: LedgerListener,
        *,
        clock: Callable[[], int],
        rng: random.Random,
        lead_ms: int,
        metrics: GatewayMetrics,
    ) -> None:
        self._port = port
        self._listener = listener
        self._clock = clock
        self._lead_ms = lead_ms
        self._metrics = metrics
        self._backoff = Backoff(rng)
        self._errors = RateLimitedLog(log, interval_s=30.0)
        self._wake = asyncio.Event()
        self._soft = asyncio.Event()
        self._lock = asyncio.Lock()
        self.releases: dict[str, ReleaseRecord] = {}
        self.height = 0
        self.ready = asyncio.Event()  # the first release view is in
        # Since when (unix ms) this view cannot follow the ledger; None while it does.
        self.lost_since_ms: int | None = None
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._follow()),
            asyncio.create_task(self._timer()),
            asyncio.create_task(self._soft_refresh()),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    def recheck(self) -> None:
        """Re-read the clock now (a test that moved its clock, a view change)."""
        self._wake.set()

    def views(self) -> list[rollout.ReleaseView]:
        return [r.view for r in self.releases.values()]

    def is_payload(self, cid: str) -> bool:
        """A content id some known release names (what the HTTP side may fetch)."""
        return any(r.view.payload_cid == cid for r in self.releases.values())

    async def _follow(self) -> None:
        while True:
            try:
                head = await self._port.head()
                await self._refresh()
                self._set_height(max(self.height, head))
                self.ready.set()
                self.lost_since_ms = None
                async for news in self._port.watch(head + 1):
                    self._backoff.reset()
                    self._set_height(news.height)
                    if news.devices:
                        self._listener.devices_changed(news.devices)
                    if news.releases_changed:
                        await self._refresh()
                    elif news.outcomes:
                        self._soft.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the node is down or restarting: try again
                self._errors.log(
                    "watch", logging.WARNING, "cannot follow the ledger: %s", describe(exc)
                )
            if self.lost_since_ms is None:
                self.lost_since_ms = self._clock()
            self._metrics.ledger_reconnects.inc()
            self._listener.watch_restarted()
            await asyncio.sleep(self._backoff.next())

    async def _refresh(self) -> None:
        async with self._lock:  # one read at a time, applied in the order read
            snapshot = await self._port.list_releases()
            new = {r.view.release_id: r for r in snapshot.releases}
            if new == self.releases and self.ready.is_set():
                return
            old, self.releases = self.releases, new
            await self._listener.releases_changed(old, new)
            self._wake.set()

    async def _soft_refresh(self) -> None:
        while True:
            await self._soft.wait()
            self._soft.clear()
            try:
                await self._refresh()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the watch loop reports the node's troubles
                log.debug("release view refresh failed: %s", exc)
            await asyncio.sleep(SOFT_REFRESH_S)

    def _set_height(self, height: int) -> None:
        if height > self.height:
            self.height = height
            self._metrics.ledger_height.set(height)

    async def _timer(self) -> None:
        while True:
            self._wake.clear()
            now = self._clock()
            at = rollout.next_change_at(self.views(), now, lead_ms=self._lead_ms)
            wait_s = MAX_TIMER_SLEEP_S if at is None else min(MAX_TIMER_SLEEP_S, (at - now) / 1000)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.0, wait_s))
            now = self._clock()
            if at is not None and now >= at:
                try:
                    await self._listener.time_passed(now)
                except asyncio.CancelledError:
                    raise
                except Exception:  # a bug in a listener must not stop the timer
                    log.exception("re-deciding at %d failed", now)


def payload_plan(
    releases: Iterable[rollout.ReleaseView], now_unix_ms: int
) -> tuple[set[str], set[str]]:
    """(to fetch, to pin): every release that is or will be rolled out
    (active or paused, not ended) has its payload fetched as soon as it is
    seen, before its start time, and pinned while its rollout lasts; the
    payload of a halted, revoked or ended release may be evicted."""
    wanted: set[str] = set()
    for release in releases:
        if not release.payload_cid or release.state not in (rollout.ACTIVE, rollout.PAUSED):
            continue
        end = release.policy.end_at_unix_ms
        if end and now_unix_ms >= end:
            continue
        wanted.add(release.payload_cid)
    return wanted, set(wanted)


class PayloadKeeper:
    """Fetches and pins the payloads :func:`payload_plan` names; a fetch
    that fails is tried again at the next sync (a view change, a timer, or
    the retry below)."""

    RETRY_S = 30.0

    def __init__(self, cache: PayloadStore) -> None:
        self._cache = cache
        self._fetching: dict[str, asyncio.Task[None]] = {}
        self._done: set[str] = set()
        self._errors = RateLimitedLog(log, interval_s=30.0)
        self._retry: asyncio.TimerHandle | None = None
        self._wanted: set[str] = set()

    def sync(self, releases: Iterable[rollout.ReleaseView], now_unix_ms: int) -> None:
        fetch, pin = payload_plan(releases, now_unix_ms)
        self._cache.set_pins(pin)
        self._wanted = fetch
        self._done &= fetch
        self._start_fetches()

    def _start_fetches(self) -> None:
        for cid in self._wanted - self._done - set(self._fetching):
            self._fetching[cid] = asyncio.create_task(self._ensure(cid))

    async def _ensure(self, cid: str) -> None:
        try:
            await self._cache.ensure(cid)
            self._done.add(cid)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # BlobUnavailable, CacheFull, CorruptBlob: later
            self._errors.log(
                cid, logging.WARNING, "cannot prefetch payload %s: %s", cid, describe(exc)
            )
            loop = asyncio.get_running_loop()
            if self._retry is None:
                self._retry = loop.call_later(self.RETRY_S, self._again)
        finally:
            self._fetching.pop(cid, None)

    def _again(self) -> None:
        self._retry = None
        self._start_fetches()

    async def stop(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
        tasks = list(self._fetching.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
