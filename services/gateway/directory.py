"""The live gateways of the cluster (issue 12 §2: "the live gateways come
from the cluster's membership").

Owns the list devices are ranked over: the members of the local consensus
node's Status, each member's gateway endpoint (the ``services["gateway"]``
of that member's own Status), and each gateway's ``Info`` answered within a
short deadline. This gateway is always live while it serves. A gateway is
*stable* once it has been live for a whole refresh interval: sessions are
only redirected to stable gateways, so one that flaps does not drag devices
back and forth. Refreshed every ``directory_refresh_ms``; when the live or
stable set changes the listener is told (the session hub re-checks who is
whose primary).

Not here: deciding who goes where (``placement.rank``, called by the hub).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from fleetsuit.logs import RateLimitedLog

from . import placement
from .errors import describe
from .model import GatewayAddress

if TYPE_CHECKING:
    from .metrics import GatewayMetrics
    from .ports import ClusterPort

log = logging.getLogger(__name__)


class Directory:
    def __init__(
        self,
        cluster: ClusterPort,
        me: GatewayAddress,
        *,
        refresh_s: float,
        clock: Callable[[], float],
        metrics: GatewayMetrics | None = None,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self._cluster = cluster
        self.me = me
        self._refresh_s = refresh_s
        self._clock = clock
        self._metrics = metrics
        self.on_change = on_change
        self._errors = RateLimitedLog(log, interval_s=30.0)
        self._endpoints: tuple[str, ...] = ()  # last known gateway endpoints of the members
        self.live: dict[str, GatewayAddress] = {me.gateway_id: me}
        self._since: dict[str, float] = {me.gateway_id: float("-inf")}
        self._stable: frozenset[str] = frozenset({me.gateway_id})
        self._task: asyncio.Task[None] | None = None
        self.refreshes = 0

    # ------------------------------------------------------------ queries

    def stable(self) -> frozenset[str]:
        return self._stable

    def ranked(self, device_id: str) -> list[GatewayAddress]:
        """The live gateways for this device, its primary first."""
        return [self.live[g] for g in placement.rank(device_id, self.live)]

    def primary(self, device_id: str) -> GatewayAddress:
        return self.ranked(device_id)[0]  # never empty: this gateway is live

    def next_after_me(self, device_id: str) -> GatewayAddress | None:
        """Where the device should go if not here: the first live gateway
        of its ranking other than this one."""
        for address in self.ranked(device_id):
            if address.gateway_id != self.me.gateway_id:
                return address
        return None

    def backup_http(self, device_id: str) -> str:
        other = self.next_after_me(device_id)
        return other.http_address if other is not None else ""

    # ------------------------------------------------------------ refresh

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            await self.refresh()
            await asyncio.sleep(self._refresh_s)

    async def refresh(self) -> bool:
        """One look at the cluster; True if the live or stable set changed."""
        try:
            self._endpoints = tuple(await self._cluster.gateway_endpoints())
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the local node is down: probe the ones we knew
            self._errors.log(
                "members", logging.WARNING, "cannot read the cluster's membership: %s",
                describe(exc),
            )  # fmt: skip
        answers = await asyncio.gather(
            *(self._probe(e) for e in self._endpoints), return_exceptions=False
        )
        live = {self.me.gateway_id: self.me}
        for address in answers:
            if address is not None and address.gateway_id != self.me.gateway_id:
                live[address.gateway_id] = address
        return self._update(live)

    async def _probe(self, endpoint: str) -> GatewayAddress | None:
        try:
            return await self._cluster.info(endpoint)
        except asyncio.CancelledError:
            raise
        except Exception:  # not answering in time: not live
            return None

    def _update(self, live: dict[str, GatewayAddress]) -> bool:
        now = self._clock()
        self.refreshes += 1
        since = {g: self._since.get(g, now) for g in live}
        stable = frozenset(g for g, t in since.items() if now - t >= self._refresh_s)
        changed = live != self.live or stable != self._stable
        self.live, self._since, self._stable = live, since, stable
        if self._metrics is not None:
            self._metrics.live_gateways.set(len(live))
        if changed:
            log.info("live gateways: %s (stable: %s)", ", ".join(sorted(live)),
                     ", ".join(sorted(stable)))  # fmt: skip
            if self.on_change is not None:
                self.on_change()
        return changed
