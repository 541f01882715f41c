"""Test doubles for the agent's tests: a publisher key and its envelopes, a
fake gateway (a real grpc.aio server on 127.0.0.1:0 implementing the
Gateway service minimally) and a payload server (aiohttp on 127.0.0.1:0)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from agent.model import Offer
from fleetsuit import device_auth
from fleetsuit.release_content import build_release_envelope
from fleetsuit.v1 import gateway_pb2 as pb
from fleetsuit.v1 import gateway_pb2_grpc as pb_grpc

COMPONENT = "firmware"


# ---------------------------------------------------------------- releases


@dataclass(frozen=True)
class Publisher:
    key: Ed25519PrivateKey

    @classmethod
    def new(cls, seed: int) -> Publisher:
        return cls(Ed25519PrivateKey.from_private_bytes(hashlib.sha256(f"publisher/{seed}".encode()).digest()))

    @property
    def private_pem(self) -> bytes:
        return self.key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())

    @property
    def public_pem(self) -> bytes:
        return self.key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)


def cid_of(payload: bytes) -> str:
    return "sha256:" + hashlib.sha256(payload).hexdigest()


def offer(
    publisher: Publisher, sequence: int, payload: bytes, *, component: str = COMPONENT,
    device_class: str = "default", vendor_domain: str = "fleetsuit.example", switch_at: int = 0,
    urls: tuple[str, ...] = (), release_id: str | None = None,
) -> Offer:
    envelope = build_release_envelope(
        component=component, sequence=sequence, payload_cid=cid_of(payload), payload_size=len(payload),
        key_pem=publisher.private_pem, device_class=device_class, vendor_domain=vendor_domain,
    )
    return Offer(release_id or f"{component}@{sequence}", component, sequence, envelope, cid_of(payload),
                 len(payload), switch_at, urls)


def offer_pb(o: Offer) -> pb.GatewayMessage:
    return pb.GatewayMessage(offer=pb.Offer(
        release_id=o.release_id, component=o.component, sequence_number=o.sequence_number,
        envelope=o.envelope, payload_cid=o.payload_cid, payload_size=o.payload_size,
        switch_at_unix_ms=o.switch_at_unix_ms, payload_urls=list(o.payload_urls)))


def device_key(name: str) -> device_auth.DevicePrivateKey:
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(f"device/{name}".encode()).digest())


def now_ms() -> int:
    return int(time.time() * 1000)


# ---------------------------------------------------------------- a fake gateway


@dataclass
class DeviceSession:
    device_id: str
    register: pb.Register
    out: asyncio.Queue[pb.GatewayMessage] = field(default_factory=asyncio.Queue)
    heartbeats: int = 0
    installed: list[pb.InstalledComponent] = field(default_factory=list)
    ended: bool = False


class FakeGateway(pb_grpc.GatewayServicer):
    """Checks the registration signature against the enrolled keys, answers
    heartbeats with its clock, records and acknowledges reports."""

    def __init__(self, gateway_id: str, keys: dict[str, bytes], *, heartbeat_ms: int = 200,
                 auto_ack: bool = True, refuse: dict[str, str] | None = None,
                 on_register: Callable[[DeviceSession], None] | None = None) -> None:
        self.gateway_id = gateway_id
        self.keys = keys  # device id -> public key PEM
        self.heartbeat_ms = heartbeat_ms
        self.auto_ack = auto_ack
        self.refuse = refuse or {}
        self.on_register = on_register
        self.ranked: list[pb.GatewayAddress] = []
        self.sessions: dict[str, DeviceSession] = {}
        self.reports: list[tuple[str, pb.Report]] = []
        self.welcomes = 0
        self.acked: dict[str, int] = {}  # device -> highest acked seq (for Welcome)
        self.mute = False  # hung: writes nothing more

    async def Session(self, request_iterator: object, context: grpc.aio.ServicerContext) -> None:
        hello = await context.read()
        device_id = hello.hello.device_id
        nonce = os.urandom(32)
        await context.write(pb.GatewayMessage(challenge=pb.Challenge(
            nonce=nonce, gateway_id=self.gateway_id, gateway_time_unix_ms=now_ms())))
        reg = (await context.read()).register
        code = self.refuse.get(device_id, "")
        key_pem = self.keys.get(device_id)
        if not code and key_pem is None:
            code = "DEVICE_UNKNOWN"
        if not code and key_pem is not None and not device_auth.verify(
                device_auth.load_public_key(key_pem),
                device_auth.registration_message(self.gateway_id, device_id, nonce), reg.signature):
            code = "BAD_SIGNATURE"
        if code:
            context.set_trailing_metadata((("fleetsuit-error-code", code),))
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, f"{code}: refused by the fake")
        session = DeviceSession(device_id, reg, installed=list(reg.installed))
        self.sessions[device_id] = session
        if self.on_register is not None:
            self.on_register(session)
        self.welcomes += 1
        await context.write(pb.GatewayMessage(welcome=pb.Welcome(
            gateway_id=self.gateway_id, heartbeat_interval_ms=self.heartbeat_ms, gateways=self.ranked,
            gateway_time_unix_ms=now_ms(), acked_report_seq=self.acked.get(device_id, 0))))
        writer = asyncio.create_task(self._write(session, context))
        try:
            while True:
                message = await context.read()
                if message is grpc.aio.EOF:
                    break
                kind = message.WhichOneof("kind")
                if kind == "heartbeat":
                    session.heartbeats += 1
                    session.installed = list(message.heartbeat.installed)
                    session.out.put_nowait(pb.GatewayMessage(heartbeat=pb.Heartbeat(
                        time_unix_ms=now_ms(), echo_time_unix_ms=message.heartbeat.time_unix_ms)))
                elif kind == "report":
                    self.reports.append((device_id, message.report))
                    if self.auto_ack:
                        self.ack(device_id, message.report.seq)
        finally:
            session.ended = True
            writer.cancel()

    def ack(self, device_id: str, seq: int, error_code: str = "") -> None:
        if not error_code:
            self.acked[device_id] = max(self.acked.get(device_id, 0), seq)
        session = self.sessions.get(device_id)
        if session is not None:
            session.out.put_nowait(pb.GatewayMessage(report_ack=pb.ReportAck(seq=seq, error_code=error_code)))

    def send(self, device_id: str, message: pb.GatewayMessage) -> None:
        self.sessions[device_id].out.put_nowait(message)

    def events(self, device_id: str | None = None) -> list[pb.ReportEvent]:
        return [e for d, r in self.reports if device_id in (None, d) for e in r.events]

    async def _write(self, session: DeviceSession, context: grpc.aio.ServicerContext) -> None:
        while True:
            message = await session.out.get()
            if not self.mute:
                await context.write(message)


async def start_gateway(gateway: FakeGateway) -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server()
    pb_grpc.add_GatewayServicer_to_server(gateway, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


# ---------------------------------------------------------------- a payload server


class PayloadServer:
    """GET /v1/payloads/{cid} with Range; ``cut_after`` cuts the first
    ``cuts`` responses after that many bytes; ``tamper`` serves other bytes;
    ``extra`` appends bytes past the payload."""

    def __init__(self, payloads: dict[str, bytes]) -> None:
        self.payloads = payloads
        self.cut_after: int | None = None
        self.cuts = 0
        self.tamper = False
        self.extra = b""
        self.ranges: list[str | None] = []
        self.runner: web.AppRunner | None = None
        self.address = ""

    async def start(self) -> str:
        app = web.Application()
        app.router.add_get("/v1/payloads/{cid}", self._get)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        server: Any = site._server
        self.address = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
        return self.address

    def url(self, cid: str) -> str:
        return f"http://{self.address}/v1/payloads/{cid}"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def _get(self, request: web.Request) -> web.StreamResponse:
        payload = self.payloads.get(request.match_info["cid"])
        if payload is None:
            return web.Response(status=404)
        if self.tamper:
            payload = bytes(b ^ 0xFF for b in payload)
        body = payload + self.extra
        range_header = request.headers.get("Range")
        self.ranges.append(range_header)
        start = 0
        status = 200
        headers = {}
        if range_header:
            start = int(range_header.removeprefix("bytes=").split("-")[0])
            status = 206
            headers["Content-Range"] = f"bytes {start}-{len(body) - 1}/{len(body)}"
        part = body[start:]
        response = web.StreamResponse(status=status, headers=headers)
        response.content_length = len(part)
        await response.prepare(request)
        if self.cut_after is not None and self.cuts > 0:
            self.cuts -= 1
            await response.write(part[:self.cut_after])
            assert request.transport is not None
            request.transport.close()  # the connection is cut midway
            return response
        await response.write(part)
        await response.write_eof()
        return response
