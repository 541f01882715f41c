"""What the gateway's service tests share: a started gateway on
127.0.0.1:0 over the in-memory ledger and cluster (services/gateway/ports.py)
with an injected clock, a device with its key, one device's Session stream,
releases and placement helpers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from prometheus_client import CollectorRegistry

from fleetsuit import device_auth
from fleetsuit.grpcutil import insecure_channel
from fleetsuit.v1 import gateway_pb2 as pb
from fleetsuit.v1 import gateway_pb2_grpc as pb_grpc
from services.gateway import placement, rollout
from services.gateway.config import GatewayConfig
from services.gateway.model import Enrolment, GatewayAddress
from services.gateway.ports import MemoryCluster, MemoryLedger, MemoryPayloads
from services.gateway.server import GatewayDeps, GatewayRuntime, build_server

ME = "g1"
HTTP = "127.0.0.1:17405"
CLASS = "class-a"
T0 = 1_700_000_000_000
READ_S = 10.0


@dataclass
class Clock:
    now_ms: int = T0

    def __call__(self) -> int:
        return self.now_ms


@dataclass
class Gateway:
    address: str
    deps: GatewayDeps
    ledger: MemoryLedger
    clock: Clock
    payloads: MemoryPayloads = field(default_factory=MemoryPayloads)

    @property
    def runtime(self) -> GatewayRuntime:
        assert self.deps.runtime is not None
        return self.deps.runtime

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        value = self.deps.registry.get_sample_value(name, labels or {})
        return 0.0 if value is None else value


@asynccontextmanager
async def running(
    ledger: MemoryLedger | None = None,
    *,
    cluster: MemoryCluster | None = None,
    clock: Clock | None = None,
    gateway_id: str = ME,
    **settings: Any,
) -> AsyncIterator[Gateway]:
    """A started gateway on 127.0.0.1:0 over the in-memory ledger."""
    ledger = ledger if ledger is not None else MemoryLedger()
    clock = clock or Clock()
    payloads = MemoryPayloads()
    config = GatewayConfig(
        listen="127.0.0.1:0", http_listen="127.0.0.1:0", node_id=gateway_id, metrics_port=-1,
        **{"offer_lead_ms": 0, "directory_refresh_ms": 50, **settings},
    ).validate()  # fmt: skip
    deps = GatewayDeps(
        ledger=ledger, registry=CollectorRegistry(), cluster=cluster or MemoryCluster(),
        payloads=payloads, clock=clock, http_address=HTTP,
    )  # fmt: skip
    server, port = build_server(config, deps)
    assert deps.runtime is not None
    await server.start()
    deps.runtime.start()
    try:
        await asyncio.wait_for(deps.runtime.view.ready.wait(), READ_S)
        yield Gateway(f"127.0.0.1:{port}", deps, ledger, clock, payloads)
    finally:
        await server.stop(None)
        await deps.runtime.stop()


@dataclass
class Device:
    device_id: str
    key: device_auth.DevicePrivateKey = field(default_factory=device_auth.new_device_key)
    device_class: str = CLASS

    def enrolment(
        self, state: str = "accepted", group: str = "",
        installed: tuple[tuple[str, str, int], ...] = (("app", "", 0),),
    ) -> Enrolment:
        """As the ledger holds it; by default recorded on the factory image
        of ``app``, what ``installed()`` registers with."""
        return Enrolment(self.device_id, state, self.device_class, group,
                         device_auth.public_pem(self.key), installed)  # fmt: skip


def installed(component: str = "app", release_id: str = "", sequence: int = 0,
              known_good: str = "", known_good_sequence: int = 0) -> pb.InstalledComponent:  # fmt: skip
    return pb.InstalledComponent(
        component=component, release_id=release_id, sequence_number=sequence,
        known_good_release_id=known_good, known_good_sequence_number=known_good_sequence,
    )  # fmt: skip


class Link:
    """One device's Session stream."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.call = pb_grpc.GatewayStub(channel).Session()

    async def send(self, **kind: Any) -> None:
        await self.call.write(pb.DeviceMessage(**kind))

    async def read(self) -> pb.GatewayMessage:
        message = await asyncio.wait_for(self.call.read(), READ_S)
        assert message is not grpc.aio.EOF, "the gateway ended the stream"
        return message  # type: ignore[no-any-return]

    async def read_kind(self, kind: str) -> Any:
        """The next message of this kind (heartbeat answers skipped)."""
        for _ in range(20):
            message = await self.read()
            if message.WhichOneof("kind") == kind:
                return getattr(message, kind)
            assert message.WhichOneof("kind") == "heartbeat", message
        raise AssertionError(f"no {kind}")

    async def refusal(self) -> str:
        """The error code the stream ended with."""
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            for _ in range(20):
                await asyncio.wait_for(self.call.read(), READ_S)
        trailing = dict(caught.value.trailing_metadata() or ())
        return str(trailing.get("fleetsuit-error-code", caught.value.code().name))

    async def register(
        self, device: Device, *, items: tuple[pb.InstalledComponent, ...] = (installed(),),
        previous: str = "", with_key: bool = False, sign_for: str | None = None,
        key: device_auth.DevicePrivateKey | None = None, vendor: str = "",
    ) -> pb.Challenge:  # fmt: skip
        await self.send(hello=pb.Hello(device_id=device.device_id))
        challenge = (await self.read()).challenge
        message = device_auth.registration_message(
            sign_for or challenge.gateway_id, device.device_id, challenge.nonce
        )
        await self.send(register=pb.Register(
            device_id=device.device_id,
            signature=device_auth.sign(key or device.key, message),
            public_key_pem=device_auth.public_pem(device.key) if with_key else b"",
            device_class=device.device_class, installed=list(items),
            device_time_unix_ms=T0, previous_gateway_id=previous, vendor_domain=vendor,
        ))  # fmt: skip
        return challenge

    async def welcome(self, device: Device, **kwargs: Any) -> pb.Welcome:
        await self.register(device, **kwargs)
        message = await self.read()
        assert message.WhichOneof("kind") == "welcome", message
        return message.welcome

    def close(self) -> None:
        self.call.cancel()


@asynccontextmanager
async def link(gateway: Gateway) -> AsyncIterator[Link]:
    async with insecure_channel(gateway.address) as channel:
        stream = Link(channel)
        try:
            yield stream
        finally:
            stream.close()


def release(
    release_id: str = "app@2", sequence: int = 2, *, state: str = "active",
    classes: tuple[str, ...] = (CLASS,), policy: rollout.Policy | None = None,
) -> rollout.ReleaseView:  # fmt: skip
    return rollout.ReleaseView(
        release_id, "app", classes, sequence, state, policy or rollout.Policy(),
        payload_cid="sha256:" + "ab" * 32, payload_size=1234,
    )  # fmt: skip


def device_whose_primary_is(gateway: str, among: list[str]) -> Device:
    for i in range(1000):
        if placement.rank(f"d-{i}", among)[0] == gateway:
            return Device(f"d-{i}")
    raise AssertionError("no such device")


def other_gateway(gateway_id: str = "g2") -> tuple[str, GatewayAddress]:
    endpoint = f"127.0.0.1:1{len(gateway_id)}404"
    return endpoint, GatewayAddress(gateway_id, endpoint, f"127.0.0.1:1{len(gateway_id)}405")
