"""A lean load generator of device sessions, for ``bench/gateway.py``:
``python -m bench.session_load --target HOST:PORT ...`` holds many device
sessions (gateway.proto ``Gateway.Session``) over a few grpc.aio channels
and measures check-in latency.

Each session does what a device does: Hello -> Challenge -> Register (a
signature over ``fleetsuit.device_auth.registration_message`` with the
device's key) -> Welcome, then a Heartbeat every interval carrying its
installed components. Sessions' first heartbeats are spread uniformly over
one interval, so the load is even. The check-in latency of a heartbeat is
the time from writing it to reading the gateway's Heartbeat that echoes its
``time_unix_ms`` (``echo_time_unix_ms``).

Only the sessions are per-device state: one task per session reads its
stream; one scheduler task writes every session's heartbeats in time order
(a heap), so the generator costs a read and a write per heartbeat. Its own
event-loop lag is measured beside the latencies (a 5 ms sleeper's
overshoot), so a slow generator is not mistaken for a slow gateway.

Driven over stdin/stdout, one JSON object a line, so a bench can run
several generators in step and read the server's CPU around each window:

- ``{"cmd": "level", "count": N}``: open sessions until N are held (the
  devices ``offset .. offset+N-1``); answers ``{"event": "level", "held",
  "failed", "seconds", "refusals"}``;
- ``{"cmd": "measure", "seconds": W}``: record for W seconds; answers
  ``{"event": "measure", "latencies_us": [...], "held", "dropped",
  "unanswered", "lag_ms": {"p50", "p99", "max"}, "cpu_s", "seconds"}``;
- ``{"cmd": "quit"}``: end every session and exit.

``LoadGen`` drives one generator process from a bench.
``python -m bench.session_load --echo-server`` is the anchor it is
measured against: a bare grpc.aio Session servicer that answers the
handshake without checks and echoes each heartbeat (``echo_server``).

Device keys are Ed25519, derived from a seed and the device id
(``device_key``), so the bench enrols the same public keys it signs with
here without passing 10,000 keys around.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hashlib
import heapq
import json
import os
import random
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from cryptography.hazmat.primitives.asymmetric import ed25519

from fleetsuit import device_auth
from fleetsuit.grpcutil import CHANNEL_OPTIONS
from fleetsuit.rpc import SERVER_OPTIONS
from fleetsuit.v1 import gateway_pb2 as gw
from fleetsuit.v1 import gateway_pb2_grpc as gw_grpc

DEVICE_CLASS = "default"
COMPONENT = "firmware"
LAG_TICK_S = 0.005
SCHEDULER_TICK_S = 0.005
REGISTER_TIMEOUT_S = 30.0
REPO = Path(__file__).resolve().parents[1]


def device_id(prefix: str, index: int) -> str:
    return f"{prefix}-{index:06d}"


def device_key(seed: str, dev_id: str) -> ed25519.Ed25519PrivateKey:
    """The device's Ed25519 key, derived from ``seed`` and its id."""
    return ed25519.Ed25519PrivateKey.from_private_bytes(
        hashlib.sha256(f"{seed}\0{dev_id}".encode()).digest())


def _unix_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(eq=False)
class Session:
    dev_id: str
    call: Any = None
    alive: bool = False
    sent_ms: int = 0  # time_unix_ms of the heartbeat awaiting its answer (0: none)
    sent_at: float = 0.0  # perf_counter when it was written
    task: asyncio.Task[None] | None = field(default=None, repr=False)


class Generator:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.interval_s = args.interval_ms / 1000
        self.rng = random.Random(args.seed + str(args.offset))
        # A local subchannel pool per channel: otherwise gRPC shares one
        # connection among channels to the same target.
        options = CHANNEL_OPTIONS + [("grpc.use_local_subchannel_pool", 1)]
        self.channels = [grpc.aio.insecure_channel(args.target, options=options) for _ in range(args.channels)]
        self.stubs = [gw_grpc.GatewayStub(c) for c in self.channels]
        self.sessions: list[Session] = []
        self.installed = [gw.InstalledComponent(component=COMPONENT, release_id="", sequence_number=0)]
        self.heap: list[tuple[float, int, Session]] = []
        self.wake = asyncio.Event()
        self.recording = False
        self.latencies_us: list[int] = []
        self.lags_s: list[float] = []
        self.dropped = 0
        self.refusals: dict[str, int] = {}

    # ------------------------------------------------------------ sessions

    async def _register(self, session: Session, stub: gw_grpc.GatewayStub) -> None:
        key = device_key(self.args.seed, session.dev_id)
        call = stub.Session()
        session.call = call
        await call.write(gw.DeviceMessage(hello=gw.Hello(device_id=session.dev_id)))
        msg = await call.read()
        if msg is grpc.aio.EOF or msg.WhichOneof("kind") != "challenge":
            raise RuntimeError(f"no challenge: {msg}")
        nonce, gateway_id = msg.challenge.nonce, msg.challenge.gateway_id
        signature = device_auth.sign(key, device_auth.registration_message(gateway_id, session.dev_id, nonce))
        await call.write(gw.DeviceMessage(register=gw.Register(
            device_id=session.dev_id, signature=signature, device_class=DEVICE_CLASS,
            installed=self.installed, device_time_unix_ms=_unix_ms())))
        while True:
            msg = await call.read()
            if msg is grpc.aio.EOF:
                raise RuntimeError("session ended before Welcome")
            if msg.WhichOneof("kind") == "welcome":
                return

    async def _run(self, session: Session, stub: gw_grpc.GatewayStub, registered: asyncio.Future[bool]) -> None:
        try:
            await asyncio.wait_for(self._register(session, stub), REGISTER_TIMEOUT_S)
        except (TimeoutError, grpc.RpcError, RuntimeError) as exc:
            code = exc.code().name if isinstance(exc, grpc.aio.AioRpcError) else type(exc).__name__
            self.refusals[code] = self.refusals.get(code, 0) + 1
            registered.set_result(False)
            if session.call is not None:
                session.call.cancel()
            return
        session.alive = True
        registered.set_result(True)
        # The first heartbeat somewhere in the next interval: an even load.
        self._schedule(session, time.monotonic() + self.rng.uniform(0, self.interval_s))
        try:
            # read(), not ``async for``: grpc.aio refuses mixing the two on one call.
            while (msg := await session.call.read()) is not grpc.aio.EOF:
                if msg.WhichOneof("kind") != "heartbeat" or not session.sent_ms:
                    continue  # offers, holds, the gateway's own heartbeats
                if msg.heartbeat.echo_time_unix_ms == session.sent_ms:
                    if self.recording:
                        self.latencies_us.append(int((time.perf_counter() - session.sent_at) * 1e6))
                    session.sent_ms = 0
        except grpc.RpcError:
            pass
        if session.alive:
            session.alive = False
            self.dropped += 1

    def _schedule(self, session: Session, at: float) -> None:
        heapq.heappush(self.heap, (at, id(session), session))
        self.wake.set()

    async def heartbeats(self) -> None:
        """Writes each session's heartbeat when it is due, in time order."""
        heap = self.heap
        while True:
            if not heap:
                self.wake.clear()
                await self.wake.wait()
                continue
            due = heap[0][0]
            now = time.monotonic()
            if due > now:
                # Capped: a session scheduled meanwhile may be due earlier.
                await asyncio.sleep(min(due - now, SCHEDULER_TICK_S))
                continue
            _, _, session = heapq.heappop(heap)
            if not session.alive:
                continue
            sent_ms = _unix_ms()
            if sent_ms <= session.sent_ms:
                sent_ms = session.sent_ms + 1  # unique per session even within one ms
            session.sent_ms, session.sent_at = sent_ms, time.perf_counter()
            try:
                await session.call.write(gw.DeviceMessage(heartbeat=gw.Heartbeat(
                    time_unix_ms=sent_ms, installed=self.installed)))
            except (grpc.RpcError, asyncio.InvalidStateError):
                session.alive = False
                self.dropped += 1
                continue
            heapq.heappush(heap, (due + self.interval_s, id(session), session))

    async def lag(self) -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(LAG_TICK_S)
            if self.recording:
                self.lags_s.append(time.monotonic() - before - LAG_TICK_S)

    async def level(self, count: int) -> dict[str, Any]:
        started = time.monotonic()
        failed = 0
        pending: list[asyncio.Future[bool]] = []
        want = count - sum(1 for s in self.sessions if s.alive)
        index = self.args.offset + len(self.sessions)
        sem = asyncio.Semaphore(self.args.concurrency)

        async def one(session: Session, stub: gw_grpc.GatewayStub) -> bool:
            async with sem:
                registered: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
                session.task = asyncio.create_task(self._run(session, stub, registered))
                return await registered

        for _ in range(max(0, want)):
            session = Session(device_id(self.args.prefix, index))
            stub = self.stubs[index % len(self.stubs)]
            index += 1
            self.sessions.append(session)
            pending.append(asyncio.ensure_future(one(session, stub)))
        for ok in await asyncio.gather(*pending):
            failed += 0 if ok else 1
        return {"event": "level", "held": sum(1 for s in self.sessions if s.alive), "failed": failed,
                "seconds": round(time.monotonic() - started, 3), "refusals": dict(self.refusals)}

    async def measure(self, seconds: float) -> dict[str, Any]:
        self.latencies_us, self.lags_s = [], []
        # No collector pauses of the generator's own in a window: its
        # sessions' objects are frozen out of the collector's sight and it
        # is off until the window ends (a window makes little garbage).
        gc.collect()
        gc.freeze()
        gc.disable()
        dropped0, cpu0, started = self.dropped, time.process_time(), time.monotonic()
        self.recording = True
        try:
            await asyncio.sleep(seconds)
        finally:
            self.recording = False
            gc.enable()
        now = time.perf_counter()
        unanswered = sum(1 for s in self.sessions if s.alive and s.sent_ms and now - s.sent_at > 1.0)
        lags = sorted(self.lags_s) or [0.0]
        return {
            "event": "measure", "latencies_us": self.latencies_us,
            "held": sum(1 for s in self.sessions if s.alive), "dropped": self.dropped - dropped0,
            "unanswered": unanswered,
            "lag_ms": {"p50": round(_pct(lags, 50) * 1000, 2), "p99": round(_pct(lags, 99) * 1000, 2),
                       "max": round(lags[-1] * 1000, 2)},
            "cpu_s": round(time.process_time() - cpu0, 3), "seconds": round(time.monotonic() - started, 3),
        }

    async def close(self) -> None:
        for s in self.sessions:
            s.alive = False
            if s.call is not None:
                s.call.cancel()
        tasks = [s.task for s in self.sessions if s.task is not None]
        await asyncio.gather(*tasks, return_exceptions=True)
        for channel in self.channels:
            await channel.close()


# ------------------------------------------------------------------ for the bench


class LoadGen:
    """One generator process (``python -m bench.session_load``), driven over its stdin/stdout."""

    def __init__(self, target: str, seed: str, offset: int, interval_ms: int, cpu: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.session_load", "--target", target, "--seed", seed,
             "--offset", str(offset), "--interval-ms", str(interval_ms), "--cpu", str(cpu)],
            cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def send(self, command: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()

    def answer(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the load generator exited ({self.proc.wait()})")
        return dict(json.loads(line))

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send({"cmd": "quit"})
                self.proc.wait(timeout=20)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


async def _echo_session(requests: Any, _context: Any) -> Any:
    """The anchor's Session: the handshake answered without checks, each
    heartbeat echoed. What Python gRPC costs per check-in, and nothing else."""
    async for msg in requests:
        kind = msg.WhichOneof("kind")
        now = time.time_ns() // 1_000_000
        if kind == "heartbeat":
            yield gw.GatewayMessage(heartbeat=gw.Heartbeat(
                time_unix_ms=now, echo_time_unix_ms=msg.heartbeat.time_unix_ms))
        elif kind == "hello":
            yield gw.GatewayMessage(challenge=gw.Challenge(nonce=os.urandom(32), gateway_id="echo",
                                                           gateway_time_unix_ms=now))
        elif kind == "register":
            yield gw.GatewayMessage(welcome=gw.Welcome(gateway_id="echo", heartbeat_interval_ms=10_000,
                                                       gateway_time_unix_ms=now))


def echo_server() -> None:
    """``python -m bench.session_load --echo-server``: prints its port, serves until killed."""
    async def run() -> None:
        server = grpc.aio.server(options=SERVER_OPTIONS)
        handler = grpc.stream_stream_rpc_method_handler(
            _echo_session, request_deserializer=gw.DeviceMessage.FromString,
            response_serializer=gw.GatewayMessage.SerializeToString)
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("fleetsuit.v1.Gateway", {"Session": handler}),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        print(port, flush=True)
        await server.wait_for_termination()

    asyncio.run(run())


def _pct(ordered: list[float], p: float) -> float:
    return ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))]


async def _serve(args: argparse.Namespace) -> None:
    gen = Generator(args)
    background = [asyncio.create_task(gen.heartbeats()), asyncio.create_task(gen.lag())]
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    try:
        for _ in range(1_000_000):  # bounded: a bench sends a handful of commands
            line = await reader.readline()
            if not line:
                break
            command = json.loads(line)
            if command["cmd"] == "level":
                answer = await gen.level(int(command["count"]))
            elif command["cmd"] == "measure":
                answer = await gen.measure(float(command["seconds"]))
            elif command["cmd"] == "quit":
                break
            else:
                answer = {"event": "error", "message": f"unknown command {command['cmd']!r}"}
            sys.stdout.write(json.dumps(answer) + "\n")
            sys.stdout.flush()
    finally:
        for task in background:
            task.cancel()
        await gen.close()


def main(argv: list[str] | None = None) -> None:
    if (argv if argv is not None else sys.argv[1:]) == ["--echo-server"]:
        echo_server()
        return
    parser = argparse.ArgumentParser(prog="python -m bench.session_load", description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", required=True, help="HOST:PORT of the Gateway service")
    parser.add_argument("--seed", default="bench", help="seed of the device keys")
    parser.add_argument("--prefix", default="bench-dev", help="device ids are PREFIX-NNNNNN")
    parser.add_argument("--offset", type=int, default=0, help="index of this generator's first device")
    parser.add_argument("--interval-ms", type=int, default=10_000, help="heartbeat interval (ms)")
    parser.add_argument("--channels", type=int, default=8, help="grpc.aio channels (connections)")
    parser.add_argument("--concurrency", type=int, default=200, help="registrations in flight")
    parser.add_argument("--cpu", type=int, default=-1, help="pin this process to this CPU")
    args = parser.parse_args(argv)
    if args.cpu >= 0 and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})
    asyncio.run(_serve(args))


if __name__ == "__main__":
    main()
