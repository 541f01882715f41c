"""The public Ledger API: submissions (unary, streamed, batched), status,
blocks, proofs, membership changes. Errors are raised as ConsensusErrors
and mapped to gRPC statuses by the server's interceptor (``convert.ERRORS``);
stream submissions answer each entry in-band, with its error code.

Every error says whether the submission's outcome is known: definite (it
never entered a log, or was refused) or not (``OutcomeUnknown``: it may
still commit; resubmitting with the same key tells its fate). Unary calls
carry it in the trailing metadata ``fleetsuit-outcome``, stream answers in
``outcome_unknown``.

A release entry is checked before it is proposed (``release_check``: its
envelope against the trust anchors, its payload in the dht), a resubmission
too: the check passes a retry of the release in effect at once (the ledger
then answers it as a duplicate) and refuses one that was revoked since."""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import TypeVar

import grpc

from fleetsuit.v1 import consensus_pb2 as pb
from fleetsuit.v1 import consensus_pb2_grpc as pb_grpc

from .config import ConsensusConfig
from .convert import block_to_pb
from .errors import BlockNotFound, CheckUnavailable, ConsensusError, InvalidEntry, NotLeader
from .ledger.block import merkle_path
from .ledger.keys import RequestKey
from .ledger.machine import Applied, encode_member_context
from .metrics import ConsensusMetrics
from .raft.membership import ConfChange, ConfChangeKind
from .runtime import ConsensusNode

M = TypeVar("M")  # a stream's request message: one request, or a batch of them

# Entries of one submission stream that may be pending or answered but not
# yet sent before the stream stops being read (backpressure).
MAX_STREAM_OUTSTANDING = 10_000

# Entry kinds only the cluster itself may write (the members' keys, and the
# bootstrap trust anchors).
RESERVED_KINDS = frozenset({"membership_changed", "trust_anchors_set"})

# Entry kinds checked by ``release_check`` before they are proposed.
CHECKED_KINDS = frozenset({"release_published"})

# Checks a release entry before it is proposed; raises a ConsensusError
# (a ReleaseRefused, CheckUnavailable) to refuse it.
ReleaseCheck = Callable[[pb.LedgerEntry], Awaitable[None]]


class LedgerServicer(pb_grpc.LedgerServicer):
    def __init__(
        self,
        node: ConsensusNode,
        config: ConsensusConfig,
        *,
        release_check: ReleaseCheck | None = None,
        metrics: ConsensusMetrics | None = None,
    ) -> None:
        self._node = node
        self._config = config
        self._release_check = release_check
        # Release pushes answered by Submit (the release client's path), by outcome.
        self._pushes = (metrics or ConsensusMetrics()).release_pushes
        self._services = config.services()
        # Submissions without a key get one of this process's own.
        self._client_id = f"{config.node_id}/{uuid.uuid4().hex[:12]}"
        self._request_ids = itertools.count(1)

    async def Submit(  # noqa: N802
        self, request: pb.SubmitRequest, context: grpc.aio.ServicerContext
    ) -> pb.SubmitResponse:
        entry = request.entry
        if not entry.client_id:
            entry.client_id = self._client_id
            entry.request_id = next(self._request_ids)
        payload, timeout_s = self._prepare(request)
        key = RequestKey(entry.client_id, entry.request_id)
        check = self._release_check
        release = entry.WhichOneof("kind") in CHECKED_KINDS
        try:
            if check is not None and release:
                timeout_s = await checked_within(check, entry, timeout_s)
            result = await self._node.submit(payload, key, timeout_s)
        except ConsensusError as exc:
            if release:
                self._pushes.labels(exc.code).inc()
            raise
        if release:
            self._pushes.labels("duplicate" if result.duplicate else "published").inc()
        return pb.SubmitResponse(
            index=result.index, block_height=result.block_height, duplicate=result.duplicate,
            position=result.position,
        )

    async def SubmitStream(  # noqa: N802
        self, request_iterator: AsyncIterator[pb.SubmitRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.SubmitStreamResponse]:
        pump = SubmissionStream(
            self._node, self._prepare, f"{self._client_id}/s{next(self._request_ids)}",
            release_check=self._release_check,
        )
        reader = asyncio.create_task(pump.read(request_iterator, lambda request: (request,)))
        try:
            while (item := await pump.answers.get()) is not None:
                yield item
                pump.taken()
        finally:
            reader.cancel()
            pump.close()

    async def SubmitBatches(  # noqa: N802
        self, request_iterator: AsyncIterator[pb.SubmitBatch], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.SubmitBatchAnswers]:
        pump = SubmissionStream(
            self._node, self._prepare, f"{self._client_id}/s{next(self._request_ids)}",
            release_check=self._release_check,
        )
        reader = asyncio.create_task(pump.read(request_iterator, lambda batch: batch.requests))
        answers = pump.answers
        try:
            while (item := await answers.get()) is not None:
                # Everything else already answered goes in the same message:
                # the entries of one commit are answered in one pass of the loop.
                out = [item]
                ended = False
                while not answers.empty():
                    more = answers.get_nowait()
                    if more is None:
                        ended = True
                        break
                    out.append(more)
                yield pb.SubmitBatchAnswers(answers=out)
                pump.taken()
                if ended:
                    break
        finally:
            reader.cancel()
            pump.close()

    def _prepare(self, request: pb.SubmitRequest) -> tuple[bytes, float]:
        """Validate an entry: (encoded payload, timeout in seconds) or InvalidEntry."""
        entry = request.entry
        kind = entry.WhichOneof("kind")
        if kind is None:
            raise InvalidEntry("entry has no kind (app, release_published, ...)")
        if kind in RESERVED_KINDS:
            raise InvalidEntry(f"{kind} entries are written by the nodes themselves, not by clients")
        if entry.request_id == 0:
            raise InvalidEntry("request_id is required (unique per client_id) when the entry names a client or comes on a stream")
        payload = entry.SerializeToString()
        if len(payload) > self._config.max_entry_bytes:
            raise InvalidEntry(f"entry is {len(payload)} bytes; the limit is {self._config.max_entry_bytes}")
        return payload, (request.timeout_ms / 1000 if request.timeout_ms else self._config.submit_timeout_s)

    def _members(self) -> list[pb.Member]:
        voters, learners = self._node.members()
        out = []
        for nid in sorted({*voters, *learners}):
            out.append(pb.Member(
                node_id=nid, address=self._node.addresses.get(nid, ""), voter=nid in voters,
                public_key=self._node.machine.member_key(nid) or b"",
            ))
        return out

    async def Status(  # noqa: N802
        self, request: pb.StatusRequest, context: grpc.aio.ServicerContext
    ) -> pb.StatusResponse:
        if request.consistent:
            await self._node.read_barrier(self._config.submit_timeout_s)
        s = self._node.status()
        return pb.StatusResponse(
            node_id=s.node_id,
            role=s.role,
            term=s.term,
            leader_id=s.leader_id,
            commit_index=s.commit_index,
            applied_index=s.applied_index,
            last_log_index=s.last_log_index,
            block_height=s.block_height,
            cluster_id=self._config.cluster_id,
            members=self._members(),
            public_key=self._node.certifier.public_key if self._node.certifier else b"",
            certified_height=self._node.certifier.certified_height if self._node.certifier else 0,
            snapshot_index=s.snapshot_index,
            pending_conf_index=s.pending_conf_index,
            services=self._services,
        )

    async def _membership(
        self, context: grpc.aio.ServicerContext, change: ConfChange, address: str = ""
    ) -> pb.MembershipResponse:
        if not change.node_id or (change.kind is ConfChangeKind.ADD_LEARNER and ":" not in address):
            raise InvalidEntry("node_id and, to add, address host:port are required")
        index = await self._node.change_membership(change, address)
        return pb.MembershipResponse(
            index=index, members=self._members(), leader_id=self._node.leader_id
        )

    async def AddMember(  # noqa: N802
        self, request: pb.AddMemberRequest, context: grpc.aio.ServicerContext
    ) -> pb.MembershipResponse:
        change = ConfChange(
            ConfChangeKind.ADD_LEARNER, request.node_id, encode_member_context(request.address)
        )
        return await self._membership(context, change, request.address)

    async def RemoveMember(  # noqa: N802
        self, request: pb.RemoveMemberRequest, context: grpc.aio.ServicerContext
    ) -> pb.MembershipResponse:
        return await self._membership(context, ConfChange(ConfChangeKind.REMOVE, request.node_id))

    async def TransferLeader(  # noqa: N802
        self, request: pb.TransferLeaderRequest, context: grpc.aio.ServicerContext
    ) -> pb.MembershipResponse:
        leader = await self._node.transfer_leader(request.target, 2 * self._config.election_timeout_s)
        if leader != request.target:
            raise NotLeader(f"leadership did not move to {request.target} (leader: {leader})")
        return pb.MembershipResponse(members=self._members(), leader_id=leader)

    async def GetBlock(  # noqa: N802
        self, request: pb.GetBlockRequest, context: grpc.aio.ServicerContext
    ) -> pb.Block:
        if request.consistent:
            await self._node.read_barrier(self._config.submit_timeout_s)
        block = self._node.machine.get_block(request.height)
        if block is None:
            raise BlockNotFound(f"no block at height {request.height}")
        return block_to_pb(block)

    async def ExportBlocks(  # noqa: N802
        self, request: pb.ExportRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.Block]:
        certifier = self._node.certifier
        head = self._node.machine.height
        if request.certified_only and certifier is not None:
            head = certifier.certified_height
        for height in range(max(1, request.from_height), head + 1):
            block = self._node.machine.get_block(height)
            if block is None:
                break
            msg = block_to_pb(block)
            if certifier is not None:
                msg.certificate.extend(
                    pb.BlockSignature(node_id=n, signature=sig) for n, sig in certifier.certificate(height)
                )
            yield msg

    async def GetProof(  # noqa: N802
        self, request: pb.ProofRequest, context: grpc.aio.ServicerContext
    ) -> pb.EntryProof:
        block = self._node.machine.get_block(request.height)
        if block is None or request.position >= len(block.entries):
            raise BlockNotFound(f"no entry {request.position} in block {request.height}")
        certifier = self._node.certifier
        return pb.EntryProof(
            cluster_id=self._config.cluster_id,
            height=block.height,
            prev_hash=block.prev_hash,
            first_index=block.first_index,
            last_index=block.last_index,
            term=block.term,
            entry_count=len(block.entries),
            entry=block.entries[request.position],
            path=[pb.MerkleStep(sibling_is_left=left, hash=h)
                  for left, h in merkle_path(block.entries, request.position)],
            block_hash=block.hash,
            certificate=[pb.BlockSignature(node_id=n, signature=sig)
                         for n, sig in (certifier.certificate(block.height) if certifier else [])],
        )

    async def WatchBlocks(  # noqa: N802
        self, request: pb.WatchBlocksRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.Block]:
        height = max(1, request.from_height)
        while not context.done():
            if self._node.machine.height >= height:
                block = self._node.machine.get_block(height)
                if block is not None:
                    yield block_to_pb(block)
                    height += 1
                    continue
            await self._node.wait_for_height(height, 1.0)


async def checked_within(check: ReleaseCheck, entry: pb.LedgerEntry, timeout_s: float) -> float:
    """Run the checks before proposal within the submission's own deadline
    and return what is left of it for the commit. Checks that do not finish
    in time (a node cut off from the majority waits on its read barrier)
    are ``CheckUnavailable``: definite, nothing was proposed, so the client
    hears it before its deadline instead of guessing."""
    started = time.monotonic()
    try:
        await asyncio.wait_for(check(entry), timeout_s)
    except TimeoutError:
        raise CheckUnavailable(
            f"the checks before proposal did not finish within {timeout_s:.1f}s; nothing was proposed, retry"
        ) from None
    left = timeout_s - (time.monotonic() - started)
    if left <= 0:
        raise CheckUnavailable("the checks before proposal used the whole deadline; nothing was proposed, retry")
    return left


class SubmissionStream:
    """The submissions of one SubmitStream or SubmitBatches call: each request
    goes to the node at once, and each answer (or typed error) is queued as
    soon as its future resolves, in commit order. ``None`` on the queue ends
    the call: the client stopped sending and nothing is left pending.

    A release entry is checked first, in a task of its own (``submit`` does
    not wait): it counts as pending from the start, and a refusal is its
    answer, in-band."""

    def __init__(
        self,
        node: ConsensusNode,
        prepare: Callable[[pb.SubmitRequest], tuple[bytes, float]],
        stream_client: str,
        limit: int = MAX_STREAM_OUTSTANDING,
        *,
        release_check: ReleaseCheck | None = None,
    ) -> None:
        self.answers: asyncio.Queue[pb.SubmitStreamResponse | None] = asyncio.Queue()
        self._limit = limit
        self._drained = asyncio.Event()
        self._node = node
        self._prepare = prepare
        self._stream_client = stream_client
        self._release_check = release_check
        self._checks: set[asyncio.Task[None]] = set()
        self._pending = 0
        self._reading = True

    async def read(self, messages: AsyncIterator[M], requests: Callable[[M], Iterable[pb.SubmitRequest]]) -> None:
        """Submit the requests of every message the client sends (one, or a
        batch), reading no further while the stream is at its limit."""
        try:
            async for message in messages:
                await self.room()
                for request in requests(message):
                    self.submit(request)
        finally:
            self.done_reading()

    async def room(self) -> None:
        """Backpressure: a client that sends without reading its answers stops
        being read once ``limit`` entries are pending or answered
        but unsent; gRPC's flow control then holds its writes."""
        while self._pending + self.answers.qsize() >= self._limit:
            self._drained.clear()
            await self._drained.wait()

    def taken(self) -> None:
        """An answer left the queue (the stream sent it)."""
        if self._pending + self.answers.qsize() < self._limit:
            self._drained.set()

    def submit(self, request: pb.SubmitRequest) -> None:
        entry = request.entry
        if not entry.client_id:
            entry.client_id = self._stream_client
        try:
            payload, timeout_s = self._prepare(request)
        except ConsensusError as exc:
            self.answers.put_nowait(pb.SubmitStreamResponse(
                client_id=entry.client_id, request_id=entry.request_id,
                error_code=exc.code, error_message=str(exc)))
            return
        self._pending += 1
        key = RequestKey(entry.client_id, entry.request_id)
        check = self._release_check
        if check is not None and entry.WhichOneof("kind") in CHECKED_KINDS:
            task = asyncio.create_task(self._checked(check, entry, payload, key, timeout_s))
            self._checks.add(task)
            task.add_done_callback(self._checks.discard)
            return
        self._node.submit_waiter(payload, key, timeout_s, _Answer(self, entry))

    async def _checked(
        self, check: ReleaseCheck, entry: pb.LedgerEntry, payload: bytes, key: RequestKey, timeout_s: float
    ) -> None:
        answer = _Answer(self, entry)
        try:
            timeout_s = await checked_within(check, entry, timeout_s)
        except ConsensusError as exc:
            answer.set_exception(exc)  # refused before proposal: definite
            return
        except Exception as exc:  # a broken check: the call's INTERNAL, and nothing was proposed
            answer.set_exception(ConsensusError(f"the release check failed: {exc!r}"))
            return
        self._node.submit_waiter(payload, key, timeout_s, answer)

    def close(self) -> None:
        """The call ended: checks still running are dropped with it."""
        for task in list(self._checks):
            task.cancel()

    def done_reading(self) -> None:
        self._reading = False
        if self._pending == 0:
            self.answers.put_nowait(None)

    def answer(self, entry: pb.LedgerEntry, result: Applied | None, exc: BaseException | None) -> None:
        self._pending -= 1
        if result is not None:
            self.answers.put_nowait(pb.SubmitStreamResponse(
                client_id=entry.client_id, request_id=entry.request_id, index=result.index,
                block_height=result.block_height, duplicate=result.duplicate, position=result.position))
        elif isinstance(exc, ConsensusError):
            self.answers.put_nowait(pb.SubmitStreamResponse(
                client_id=entry.client_id, request_id=entry.request_id,
                error_code=exc.code, error_message=str(exc), outcome_unknown=not exc.definite))
        else:
            # Not one of ours: nothing says the entry did not go on, so its
            # outcome is unknown.
            self.answers.put_nowait(pb.SubmitStreamResponse(
                client_id=entry.client_id, request_id=entry.request_id,
                error_code="INTERNAL", error_message=str(exc), outcome_unknown=True))
        if not self._reading and self._pending == 0:
            self.answers.put_nowait(None)


class _Answer:
    """A stream entry's waiter (runtime.Waiter): the runtime's answer goes
    into the stream's queue the moment it is known, with no future and no
    callback scheduled through the event loop per entry."""

    __slots__ = ("_entry", "_pump", "_done")

    def __init__(self, pump: SubmissionStream, entry: pb.LedgerEntry) -> None:
        self._pump = pump
        self._entry = entry
        self._done = False

    def done(self) -> bool:
        return self._done

    def set_result(self, result: Applied, /) -> None:
        if not self._done:
            self._done = True
            self._pump.answer(self._entry, result, None)

    def set_exception(self, exception: BaseException, /) -> None:
        if not self._done:
            self._done = True
            self._pump.answer(self._entry, None, exception)


