"""A Ledger client for processes with many concurrent writers (CI runners,
gateways' device events, benchmarks).

``SubmitBatcher`` keeps one SubmitBatches stream. What its callers submit
while the previous message is being written goes out together in the next
one, and the node sends the answers of one commit back in one message, so
gRPC's cost per message (tens of microseconds in Python at each end) is paid
once for many entries. There is no timer: a lone caller's entry leaves at
once, and batches only form when callers overlap. Each entry keeps its own
idempotency key, deadline and answer, exactly as on SubmitStream.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import uuid
from collections import deque
from typing import Any

import grpc

from fleetsuit.v1 import consensus_pb2 as pb
from fleetsuit.v1 import consensus_pb2_grpc as pb_grpc

Key = tuple[str, int]


class SubmitFailed(Exception):
    """The node answered an entry with an error code (``code``: NO_LEADER,
    OUTCOME_UNKNOWN, IDEMPOTENCY_KEY_REUSED, INVALID_ENTRY, OVERLOADED, a
    release refusal, ...).

    ``definite`` (from ``SubmitStreamResponse.outcome_unknown``): False only
    when the entry may have been proposed and may still commit
    (OUTCOME_UNKNOWN); resubmit it with the same key to learn its fate. True:
    nothing of it will ever commit (NO_LEADER: it never entered a log), or
    it was refused (IDEMPOTENCY_KEY_REUSED: the key was used for another
    entry; a release refusal). Retrying a definite NO_LEADER is safe too."""

    def __init__(self, code: str, message: str, definite: bool = True) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.definite = definite


class StreamBroken(Exception):
    """The stream ended before the entry was answered: whether it committed
    is unknown, so resubmit it with the same key (it applies at most once)."""


class SubmitBatcher:
    """Many callers' submissions over one SubmitBatches stream.

    ``await submit(entry)`` returns the entry's SubmitStreamResponse or raises
    SubmitFailed (its ``code``, and ``definite`` False when the outcome is
    unknown: OUTCOME_UNKNOWN replaced the old COMMIT_TIMEOUT) / StreamBroken. An entry without a client_id gets this
    batcher's; one without a request_id gets the next of this batcher's
    counter. A broken stream fails every entry in flight with StreamBroken,
    and the next submit opens a new stream.
    """

    def __init__(
        self,
        stub: pb_grpc.LedgerStub,
        *,
        client_id: str = "",
        timeout_ms: int = 5000,
        max_batch: int = 512,
        max_batch_bytes: int = 1024 * 1024,
    ) -> None:
        if max_batch < 1 or max_batch_bytes < 1:
            raise ValueError("max_batch and max_batch_bytes must be at least 1")
        self._stub = stub
        self.client_id = client_id or f"batcher-{uuid.uuid4().hex[:12]}"
        self._timeout_ms = timeout_ms
        self._max_batch = max_batch
        # Far below gRPC's message limit: one message never carries more.
        self._max_batch_bytes = max_batch_bytes
        self._ids = itertools.count(1)
        self._queue: deque[tuple[pb.SubmitRequest, int]] = deque()  # with its size
        self._waiting: dict[Key, deque[asyncio.Future[pb.SubmitStreamResponse]]] = {}
        self._wake = asyncio.Event()
        self._call: Any = None
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False
        self.messages_sent = 0
        self.messages_received = 0

    async def submit(self, entry: pb.LedgerEntry, timeout_ms: int = 0) -> pb.SubmitStreamResponse:
        if self._closed:
            raise RuntimeError("SubmitBatcher is closed")
        if not entry.client_id:
            entry.client_id = self.client_id
        if not entry.request_id:
            entry.request_id = next(self._ids)
        fut: asyncio.Future[pb.SubmitStreamResponse] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault((entry.client_id, entry.request_id), deque()).append(fut)
        request = pb.SubmitRequest(entry=entry, timeout_ms=timeout_ms or self._timeout_ms)
        self._queue.append((request, request.ByteSize()))
        if self._call is None:
            self._open()
        self._wake.set()
        return await fut

    def _open(self) -> None:
        self._call = self._stub.SubmitBatches()
        call = self._call
        self._tasks = [asyncio.create_task(self._write(call)), asyncio.create_task(self._read(call))]

    async def _write(self, call: Any) -> None:
        queue = self._queue
        try:
            while True:
                if not queue:
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                requests: list[pb.SubmitRequest] = []
                size = 0
                while queue and len(requests) < self._max_batch:
                    if requests and size + queue[0][1] > self._max_batch_bytes:
                        break
                    request, n = queue.popleft()
                    requests.append(request)
                    size += n
                await call.write(pb.SubmitBatch(requests=requests))
                self.messages_sent += 1
        except (grpc.RpcError, asyncio.InvalidStateError) as exc:
            self._broken(call, exc)

    async def _read(self, call: Any) -> None:
        waiting = self._waiting
        try:
            async for message in call:
                self.messages_received += 1
                for answer in message.answers:
                    futures = waiting.get((answer.client_id, answer.request_id))
                    if not futures:
                        continue  # an answer for an entry its caller gave up on
                    fut = futures.popleft()
                    if not futures:
                        del waiting[(answer.client_id, answer.request_id)]
                    if fut.done():
                        continue
                    if answer.error_code:
                        fut.set_exception(SubmitFailed(
                            answer.error_code, answer.error_message, definite=not answer.outcome_unknown))
                    else:
                        fut.set_result(answer)
            self._broken(call, None)
        except grpc.RpcError as exc:
            self._broken(call, exc)

    def _broken(self, call: Any, exc: BaseException | None) -> None:
        """The stream ended: fail everything in flight or queued, forget the call."""
        if self._call is not call:
            return
        self._call = None
        for task in self._tasks:
            if task is not asyncio.current_task():
                task.cancel()
        self._tasks = []
        reason = f"SubmitBatches stream ended: {exc}" if exc else "SubmitBatches stream ended"
        self._queue.clear()
        waiting, self._waiting = self._waiting, {}
        for futures in waiting.values():
            for fut in futures:
                if not fut.done():
                    fut.set_exception(StreamBroken(reason))
        with contextlib.suppress(Exception):
            call.cancel()

    async def close(self) -> None:
        """Ends the stream; entries still in flight fail with StreamBroken."""
        self._closed = True
        call = self._call
        if call is not None:
            tasks = list(self._tasks)
            self._broken(call, None)
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, grpc.RpcError):
                    await task
