"""What the gateway needs from the outside, as small ports (STYLE 4), each
with an in-memory twin beside the real gRPC implementation, so sessions,
reports and the directory are tested without a cluster.

- ``ReleasePort``: the release state (``Releases.ListReleases``, stale_ok:
  the local node's applied state).
- ``DevicePort``: one device's enrolment (``Devices.GetDevice``, stale_ok).
- ``SubmitPort``: ledger writes (``fleetsuit.ledger_client.SubmitBatcher``):
  returns when committed, raises ``SubmitFailed`` / ``StreamBroken``.
- ``WatchPort``: the head height and the blocks from a height on
  (``Ledger.Status``, ``Ledger.WatchBlocks``).
- ``ClusterPort``: the gateway endpoints of the cluster's members and one
  gateway's ``Info`` (for the directory).
- ``PayloadStore``: what the gateway asks of its payload cache
  (``cache.PayloadCache``).

``MemoryLedger`` and ``MemoryCluster`` are the twins: a test publishes a
release, enrols a device, makes submissions fail or wait, and stops a
gateway from answering.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import grpc

from fleetsuit.grpcutil import insecure_channel
from fleetsuit.ledger_client import SubmitBatcher, SubmitFailed
from fleetsuit.v1 import consensus_pb2 as cpb
from fleetsuit.v1 import consensus_pb2_grpc as cpb_grpc
from fleetsuit.v1 import gateway_pb2 as pb
from fleetsuit.v1 import gateway_pb2_grpc as pb_grpc

from . import convert, rollout
from .errors import LedgerUnavailable
from .model import (
    BlockNews,
    Committed,
    DeviceChange,
    DeviceEventsWrite,
    Enrolment,
    EnrolmentRequestWrite,
    GatewayAddress,
    LedgerWrite,
    ReleaseRecord,
    ReleaseSnapshot,
)

# ---------------------------------------------------------------- the ports


class ReleasePort(Protocol):
    async def list_releases(self) -> ReleaseSnapshot: ...


class DevicePort(Protocol):
    async def get_device(self, device_id: str) -> Enrolment | None:
        """None: not enrolled. Raises LedgerUnavailable."""
        ...


class SubmitPort(Protocol):
    async def submit(self, write: LedgerWrite) -> Committed:
        """Once committed (or applied before: duplicate). Raises
        fleetsuit.ledger_client.SubmitFailed or StreamBroken."""
        ...


class WatchPort(Protocol):
    async def head(self) -> int: ...

    def watch(self, from_height: int) -> AsyncIterator[BlockNews]:
        """Every block from ``from_height`` on, then new ones as they come."""
        ...


class LedgerPort(ReleasePort, DevicePort, SubmitPort, WatchPort, Protocol):
    async def close(self) -> None: ...


class ClusterPort(Protocol):
    async def gateway_endpoints(self) -> list[str]:
        """HOST:PORT of the gateway of every member (that names one)."""
        ...

    async def info(self, endpoint: str) -> GatewayAddress:
        """The gateway at ``endpoint`` answering Info; raises if it does not in time."""
        ...


class CacheStatsLike(Protocol):
    @property
    def entries(self) -> int: ...

    @property
    def bytes(self) -> int: ...


class PayloadStore(Protocol):
    async def ensure(self, cid: str) -> Path: ...

    def set_pins(self, cids: Iterable[str]) -> None: ...

    def stats(self) -> CacheStatsLike: ...


# ---------------------------------------------------------------- in memory


@dataclass
class MemoryLedger:
    """A ledger in memory. ``fail_next`` makes submissions raise (one each,
    in order); ``hold`` (when set) makes them wait until it is set;
    ``submitted`` is every write that committed, duplicates not repeated."""

    releases: dict[str, ReleaseRecord] = field(default_factory=dict)
    devices: dict[str, Enrolment] = field(default_factory=dict)
    submitted: list[LedgerWrite] = field(default_factory=list)
    attempts: list[LedgerWrite] = field(default_factory=list)
    fail_next: list[Exception] = field(default_factory=list)
    hold: asyncio.Event | None = None
    height: int = 0
    unavailable: bool = False
    _keys: dict[tuple[str, int], LedgerWrite] = field(default_factory=dict)
    _watchers: list[asyncio.Queue[BlockNews | None]] = field(default_factory=list)

    # the ports
    async def list_releases(self) -> ReleaseSnapshot:
        self._check()
        return ReleaseSnapshot(tuple(self.releases.values()), self.height)

    async def get_device(self, device_id: str) -> Enrolment | None:
        if self.unavailable:
            raise LedgerUnavailable("the ledger (in memory) is unavailable")
        return self.devices.get(device_id)

    async def submit(self, write: LedgerWrite) -> Committed:
        self.attempts.append(write)
        if self.hold is not None:
            await self.hold.wait()
        if self.fail_next:
            raise self.fail_next.pop(0)
        if isinstance(write, DeviceEventsWrite):
            key = (f"device/{write.device_id}", write.seq)
            if key in self._keys:
                if self._keys[key] != write:
                    raise SubmitFailed("IDEMPOTENCY_KEY_REUSED", f"{key} was used for another entry")
                return Committed(self.height, duplicate=True)
            self._keys[key] = write
        self.submitted.append(write)
        changes: tuple[DeviceChange, ...]
        if isinstance(write, EnrolmentRequestWrite):
            self.devices.setdefault(write.device_id, Enrolment(
                write.device_id, "pending", write.device_class, "", write.public_key_pem))
            changes = (DeviceChange(write.device_id, "request"),)
        else:
            changes = (DeviceChange(write.device_id, "events"),)
        self._block(BlockNews(self.height + 1, devices=changes))
        return Committed(self.height)

    async def head(self) -> int:
        self._check()
        return self.height

    async def watch(self, from_height: int) -> AsyncIterator[BlockNews]:
        self._check()
        queue: asyncio.Queue[BlockNews | None] = asyncio.Queue()
        self._watchers.append(queue)
        try:
            while True:
                news = await queue.get()
                if news is None:
                    raise ConnectionError("the watch was cut")
                if news.height >= from_height:
                    yield news
        finally:
            self._watchers.remove(queue)

    async def close(self) -> None:
        self.cut()

    # what tests do
    def _check(self) -> None:
        if self.unavailable:
            raise ConnectionError("the ledger (in memory) is unavailable")

    def _block(self, news: BlockNews) -> None:
        self.height = news.height
        for queue in self._watchers:
            queue.put_nowait(news)

    def publish(self, view: rollout.ReleaseView, envelope: bytes = b"envelope") -> None:
        """A release entry committed (publish, or a changed state or policy)."""
        self.releases[view.release_id] = ReleaseRecord(view, envelope)
        self._block(BlockNews(self.height + 1, releases_changed=True))

    def set_state(self, release_id: str, state: str) -> None:
        record = self.releases[release_id]
        self.publish(replace(record.view, state=state), record.envelope)

    def enrol(self, enrolment: Enrolment, action: str = "enroll") -> None:
        """An enrolment entry committed (``action``: enroll, accept, reject, revoke)."""
        self.devices[enrolment.device_id] = enrolment
        self._block(BlockNews(self.height + 1, devices=(DeviceChange(enrolment.device_id, action),)))

    def cut(self) -> None:
        """Break every watch (the node restarted)."""
        for queue in self._watchers:
            queue.put_nowait(None)

    @property
    def watching(self) -> int:
        return len(self._watchers)


@dataclass
class MemoryCluster:
    """Gateways by endpoint; one in ``silent`` does not answer Info."""

    gateways: dict[str, GatewayAddress] = field(default_factory=dict)
    silent: set[str] = field(default_factory=set)
    members_down: bool = False

    async def gateway_endpoints(self) -> list[str]:
        if self.members_down:
            raise ConnectionError("the local consensus node does not answer")
        return sorted(self.gateways)

    async def info(self, endpoint: str) -> GatewayAddress:
        if endpoint in self.silent or endpoint not in self.gateways:
            raise TimeoutError(f"{endpoint} did not answer")
        return self.gateways[endpoint]


@dataclass
class _Stats:
    entries: int = 0
    bytes: int = 0


@dataclass
class MemoryPayloads:
    """A payload store that fetches nothing; records what was asked."""

    ensured: list[str] = field(default_factory=list)
    pins: set[str] = field(default_factory=set)

    async def ensure(self, cid: str) -> Path:
        self.ensured.append(cid)
        return Path("/nonexistent") / cid

    def set_pins(self, cids: Iterable[str]) -> None:
        self.pins = set(cids)

    def stats(self) -> _Stats:
        return _Stats(entries=len(set(self.ensured)))


# ---------------------------------------------------------------- over gRPC


class GrpcLedger:
    """The local consensus node: Releases, Devices and Ledger over one
    channel, writes through one SubmitBatcher."""

    def __init__(
        self, endpoint: str, *, client_id: str, submit_timeout_ms: int, read_timeout_s: float = 5.0
    ) -> None:
        self.endpoint = endpoint
        self._channel = insecure_channel(endpoint)
        self._ledger = cpb_grpc.LedgerStub(self._channel)
        self._releases = cpb_grpc.ReleasesStub(self._channel)
        self._devices = cpb_grpc.DevicesStub(self._channel)
        self._batcher = SubmitBatcher(
            self._ledger, client_id=client_id, timeout_ms=submit_timeout_ms
        )
        self._timeout_s = read_timeout_s
        # Envelopes by release id: read once (GetRelease), not with every
        # refresh of the view (they are immutable; state and policy are not).
        self._envelopes: dict[str, bytes] = {}

    async def list_releases(self) -> ReleaseSnapshot:
        reply = await self._releases.ListReleases(
            cpb.ListReleasesRequest(stale_ok=True), timeout=self._timeout_s
        )
        for msg in reply.releases:
            if msg.release_id not in self._envelopes:
                full = await self._releases.GetRelease(
                    cpb.GetReleaseRequest(
                        release_id=msg.release_id, include_envelope=True, stale_ok=True
                    ),
                    timeout=self._timeout_s,
                )
                self._envelopes[msg.release_id] = bytes(full.envelope)
            msg.envelope = self._envelopes[msg.release_id]
        return convert.snapshot_from_pb(reply.releases, reply.applied_index)

    async def get_device(self, device_id: str) -> Enrolment | None:
        try:
            reply = await self._devices.GetDevice(
                cpb.GetDeviceRequest(device_id=device_id, stale_ok=True), timeout=self._timeout_s
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise LedgerUnavailable(
                f"cannot read device {device_id} from {self.endpoint}: {exc.code().name}"
            ) from None
        return convert.enrolment_from_pb(reply)

    async def submit(self, write: LedgerWrite) -> Committed:
        answer = await self._batcher.submit(convert.write_to_pb(write))
        return Committed(answer.block_height, answer.duplicate)

    async def head(self) -> int:
        status = await self._ledger.Status(cpb.StatusRequest(), timeout=self._timeout_s)
        return int(status.block_height)

    async def watch(self, from_height: int) -> AsyncIterator[BlockNews]:
        call = self._ledger.WatchBlocks(cpb.WatchBlocksRequest(from_height=from_height))
        try:
            async for block in call:
                yield convert.block_news_from_pb(block)
        finally:
            call.cancel()

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self._batcher.close()
        await self._channel.close()


class GrpcCluster:
    """The members from the local consensus node's Status, each member's
    gateway from that member's own Status, and Info from each gateway; every
    call within ``timeout_s``. Channels are kept per address."""

    def __init__(self, consensus_endpoint: str, *, timeout_s: float) -> None:
        self._local = consensus_endpoint
        self._timeout_s = timeout_s
        self._channels: dict[str, grpc.aio.Channel] = {}

    def _channel(self, address: str) -> grpc.aio.Channel:
        channel = self._channels.get(address)
        if channel is None:
            if len(self._channels) > 256:  # members come and go: do not grow forever
                for old in list(self._channels.values()):
                    asyncio.ensure_future(old.close())
                self._channels.clear()
            channel = self._channels[address] = insecure_channel(address)
        return channel

    async def _status(self, address: str) -> Any:
        stub = cpb_grpc.LedgerStub(self._channel(address))
        return await stub.Status(cpb.StatusRequest(), timeout=self._timeout_s)

    async def gateway_endpoints(self) -> list[str]:
        local = await self._status(self._local)
        addresses = [m.address for m in local.members if m.address]

        async def gateway_of(address: str) -> str:
            if address == self._local or not address:
                return str(local.services.get("gateway", ""))
            try:
                status = await self._status(address)
            except grpc.aio.AioRpcError:
                return ""  # that node is down: its gateway counts as down too
            return str(status.services.get("gateway", ""))

        found = await asyncio.gather(*(gateway_of(a) for a in addresses))
        own = str(local.services.get("gateway", ""))
        return sorted({g for g in [*found, own] if g})

    async def info(self, endpoint: str) -> GatewayAddress:
        stub = pb_grpc.GatewayStub(self._channel(endpoint))
        reply = await stub.Info(pb.GatewayInfoRequest(), timeout=self._timeout_s)
        return convert.address_from_pb(reply.self)

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()
