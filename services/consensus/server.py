"""The consensus gRPC server: the RaftPeer service between nodes and the
public Ledger API, with health, reflection and metrics.

``build_server(config, deps)`` binds and returns ``(server, port)`` so tests
can listen on port 0; ``serve(config, shutdown=...)`` runs until the event
is set (SIGINT/SIGTERM in ``__main__``), then drains gracefully.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import os
import random
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import grpc

from fleetsuit.grpcutil import add_health_and_reflection, graceful_stop, mark_serving, new_server
from fleetsuit.metrics import serve_metrics
from fleetsuit.v1 import consensus_pb2 as pb
from fleetsuit.v1 import consensus_pb2_grpc as pb_grpc

from .config import ConsensusConfig
from .convert import block_to_pb, message_from_pb
from .errors import BlockNotFound, ConsensusError, InvalidEntry, NotLeader, SnapshotRejected
from .ledger.block import merkle_path
from .ledger.certify import NodeKey
from .ledger.machine import Applied, encode_member_context
from .metrics import ConsensusMetrics
from .raft.membership import ConfChange, ConfChangeKind
from .raft.roles import RequestKey
from .raft.types import MessageType, RaftConfig
from .runtime import ConsensusNode
from .snapshots import FileSnapshotStore
from .storage import RocksStorage
from .synchronizer import advertised_address, plan_rejoin, rejoin
from .transport import CLUSTER_HEADER, GrpcTransport

log = logging.getLogger(__name__)

M = TypeVar("M")  # a stream's request message: one request, or a batch of them

# Entries of one submission stream that may be pending or answered but not
# yet sent before the stream stops being read (backpressure).
MAX_STREAM_OUTSTANDING = 10_000

# Entry kinds only the cluster itself may write.
RESERVED_KINDS = frozenset({"membership_changed"})

SERVICE_NAMES = (
    pb.DESCRIPTOR.services_by_name["Ledger"].full_name,
    pb.DESCRIPTOR.services_by_name["RaftPeer"].full_name,
)


async def _abort(context: grpc.aio.ServicerContext, exc: ConsensusError) -> None:
    await context.abort(exc.status, f"{exc.code}: {exc}")


class RaftPeerServicer(pb_grpc.RaftPeerServicer):
    def __init__(self, node: ConsensusNode, cluster_id: str) -> None:
        self._node = node
        self._cluster_id = cluster_id
        self._receiving = asyncio.Lock()  # one snapshot staged at a time

    async def _check_cluster(self, context: grpc.aio.ServicerContext) -> None:
        got = dict(context.invocation_metadata() or ()).get(CLUSTER_HEADER)
        if got != self._cluster_id:
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"WRONG_CLUSTER: peer belongs to cluster {got!r}, this node to {self._cluster_id!r}",
            )

    async def Send(  # noqa: N802 (gRPC method name)
        self, request_iterator: AsyncIterator[pb.RaftMessageBatch], context: grpc.aio.ServicerContext
    ) -> pb.PeerAck:
        await self._check_cluster(context)
        async for batch in request_iterator:
            messages = []
            for raw in batch.messages:
                if not self._node.knows(raw.src):
                    continue  # an unknown peer: ignored, never stepped
                try:
                    messages.append(message_from_pb(raw))
                except ValueError:
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "BAD_MESSAGE: unknown type")
            if messages:
                self._node.deliver(messages)
        return pb.PeerAck()

    async def InstallSnapshot(  # noqa: N802
        self, request_iterator: AsyncIterator[pb.RaftMessage], context: grpc.aio.ServicerContext
    ) -> pb.PeerAck:
        """Raft §7: stage the chunks; only the complete, verified snapshot is
        handed to the core (as the final SNAPSHOT message, without data)."""
        await self._check_cluster(context)
        store = self._node.snapshots
        if store is None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "NO_SNAPSHOTS: this node keeps none")
            raise AssertionError("unreachable")
        async with self._receiving:
            started = asyncio.get_running_loop().time()
            async for raw in request_iterator:
                try:
                    msg = message_from_pb(raw)
                except ValueError:
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "BAD_MESSAGE: unknown type")
                    raise AssertionError("unreachable") from None
                if msg.type is not MessageType.SNAPSHOT or msg.snapshot is None or not self._node.knows(msg.src):
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "BAD_MESSAGE: not a snapshot chunk")
                try:
                    complete = await asyncio.to_thread(
                        store.receive, msg.snapshot, msg.offset, msg.data, msg.done
                    )
                except SnapshotRejected as exc:
                    await _abort(context, exc)
                    raise AssertionError("unreachable") from exc
                if complete:
                    self._node.snapshot_received(
                        msg, asyncio.get_running_loop().time() - started
                    )
                    return pb.PeerAck()
        return pb.PeerAck()

    async def Ping(self, request: pb.PeerAck, context: grpc.aio.ServicerContext) -> pb.PeerAck:  # noqa: N802
        await self._check_cluster(context)
        return pb.PeerAck()

    async def ShareSignatures(  # noqa: N802
        self, request: pb.SignatureBatch, context: grpc.aio.ServicerContext
    ) -> pb.PeerAck:
        await self._check_cluster(context)
        self._node.receive_signatures(request.signatures)
        return pb.PeerAck()

    async def GetSignatures(  # noqa: N802
        self, request: pb.SignatureRequest, context: grpc.aio.ServicerContext
    ) -> pb.SignatureBatch:
        await self._check_cluster(context)
        if self._node.certifier is None:
            return pb.SignatureBatch()
        return pb.SignatureBatch(
            signatures=self._node.certifier.signatures_between(request.from_height, request.to_height)
        )


class LedgerServicer(pb_grpc.LedgerServicer):
    def __init__(self, node: ConsensusNode, config: ConsensusConfig) -> None:
        self._node = node
        self._config = config
        # Submissions without a key get one of this process's own.
        self._client_id = f"{config.node_id}/{uuid.uuid4().hex[:12]}"
        self._request_ids = itertools.count(1)

    async def Submit(  # noqa: N802
        self, request: pb.SubmitRequest, context: grpc.aio.ServicerContext
    ) -> pb.SubmitResponse:
        entry = request.entry
        try:
            if not entry.client_id:
                entry.client_id = self._client_id
                entry.request_id = next(self._request_ids)
            payload, timeout_s = self._prepare(request)
            result = await self._node.submit(
                payload, RequestKey(entry.client_id, entry.request_id), timeout_s
            )
        except ConsensusError as exc:
            await _abort(context, exc)
            raise AssertionError("unreachable") from exc
        return pb.SubmitResponse(
            index=result.index, block_height=result.block_height, duplicate=result.duplicate
        )

    async def SubmitStream(  # noqa: N802
        self, request_iterator: AsyncIterator[pb.SubmitRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.SubmitStreamResponse]:
        pump = _Submissions(self._node, self._prepare, f"{self._client_id}/s{next(self._request_ids)}")
        reader = asyncio.create_task(pump.read(request_iterator, lambda request: (request,)))
        try:
            while (item := await pump.answers.get()) is not None:
                yield item
                pump.taken()
        finally:
            reader.cancel()

    async def SubmitBatches(  # noqa: N802
        self, request_iterator: AsyncIterator[pb.SubmitBatch], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.SubmitBatchAnswers]:
        pump = _Submissions(self._node, self._prepare, f"{self._client_id}/s{next(self._request_ids)}")
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

    def _prepare(self, request: pb.SubmitRequest) -> tuple[bytes, float]:
        """Validate an entry: (encoded payload, timeout in seconds) or InvalidEntry."""
        entry = request.entry
        kind = entry.WhichOneof("kind")
        if kind is None:
            raise InvalidEntry("entry has no kind (app, release_published, ...)")
        if kind in RESERVED_KINDS:
            raise InvalidEntry(f"{kind} entries are written by the nodes themselves, not by clients")
        if entry.request_id == 0:
            raise InvalidEntry("request_id is required on a stream (unique per client)")
        payload = entry.SerializeToString()
        if len(payload) > self._config.max_entry_bytes:
            raise InvalidEntry(f"entry is {len(payload)} bytes; the limit is {self._config.max_entry_bytes}")
        return payload, (request.timeout_ms or self._config.submit_timeout_ms) / 1000

    async def _consistent(self, context: grpc.aio.ServicerContext) -> None:
        try:
            await self._node.read_barrier(self._config.submit_timeout_ms / 1000)
        except ConsensusError as exc:
            await _abort(context, exc)

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
            await self._consistent(context)
        s = self._node.status()
        return pb.StatusResponse(
            node_id=str(s["node_id"]),
            role=str(s["role"]),
            term=int(s["term"]),  # type: ignore[call-overload]
            leader_id=str(s["leader_id"]),
            commit_index=int(s["commit_index"]),  # type: ignore[call-overload]
            applied_index=int(s["applied_index"]),  # type: ignore[call-overload]
            last_log_index=int(s["last_log_index"]),  # type: ignore[call-overload]
            block_height=int(s["block_height"]),  # type: ignore[call-overload]
            cluster_id=self._config.cluster_id,
            members=self._members(),
            public_key=self._node.certifier.public_key if self._node.certifier else b"",
            certified_height=self._node.certifier.certified_height if self._node.certifier else 0,
            snapshot_index=int(s["snapshot_index"]),  # type: ignore[call-overload]
            pending_conf_index=int(s["pending_conf_index"]),  # type: ignore[call-overload]
        )

    async def _membership(
        self, context: grpc.aio.ServicerContext, change: ConfChange, address: str = ""
    ) -> pb.MembershipResponse:
        if not change.node_id or (change.kind is ConfChangeKind.ADD_LEARNER and ":" not in address):
            await _abort(context, InvalidEntry("node_id and, to add, address host:port are required"))
        try:
            index = await self._node.change_membership(change, address)
        except ConsensusError as exc:
            await _abort(context, exc)
            raise AssertionError("unreachable") from exc
        return pb.MembershipResponse(
            index=index, members=self._members(), leader_id=str(self._node.status()["leader_id"])
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
        timeout_s = self._config.election_ticks * 2 * self._config.tick_ms / 1000
        try:
            leader = await self._node.transfer_leader(request.target, timeout_s)
        except ConsensusError as exc:
            await _abort(context, exc)
            raise AssertionError("unreachable") from exc
        if leader != request.target:
            await _abort(context, NotLeader(f"leadership did not move to {request.target} (leader: {leader})"))
        return pb.MembershipResponse(members=self._members(), leader_id=leader)

    async def GetBlock(  # noqa: N802
        self, request: pb.GetBlockRequest, context: grpc.aio.ServicerContext
    ) -> pb.Block:
        if request.consistent:
            await self._consistent(context)
        block = self._node.machine.get_block(request.height)
        if block is None:
            await _abort(context, BlockNotFound(f"no block at height {request.height}"))
            raise AssertionError("unreachable")
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
            await _abort(context, BlockNotFound(f"no entry {request.position} in block {request.height}"))
            raise AssertionError("unreachable")
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


class _Submissions:
    """The submissions of one SubmitStream or SubmitBatches call: each request
    goes to the node at once, and each answer (or typed error) is queued as
    soon as its future resolves, in commit order. ``None`` on the queue ends
    the call: the client stopped sending and nothing is left pending."""

    def __init__(
        self,
        node: ConsensusNode,
        prepare: Callable[[pb.SubmitRequest], tuple[bytes, float]],
        stream_client: str,
        limit: int = MAX_STREAM_OUTSTANDING,
    ) -> None:
        self.answers: asyncio.Queue[pb.SubmitStreamResponse | None] = asyncio.Queue()
        self._limit = limit
        self._drained = asyncio.Event()
        self._node = node
        self._prepare = prepare
        self._stream_client = stream_client
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
        self._node.submit_waiter(
            payload, RequestKey(entry.client_id, entry.request_id), timeout_s, _Answer(self, entry)
        )

    def done_reading(self) -> None:
        self._reading = False
        if self._pending == 0:
            self.answers.put_nowait(None)

    def answer(self, entry: pb.LedgerEntry, result: Applied | None, exc: BaseException | None) -> None:
        self._pending -= 1
        if result is not None:
            self.answers.put_nowait(pb.SubmitStreamResponse(
                client_id=entry.client_id, request_id=entry.request_id, index=result.index,
                block_height=result.block_height, duplicate=result.duplicate))
        else:
            code = exc.code if isinstance(exc, ConsensusError) else "INTERNAL"
            self.answers.put_nowait(pb.SubmitStreamResponse(
                client_id=entry.client_id, request_id=entry.request_id,
                error_code=code, error_message=str(exc)))
        if not self._reading and self._pending == 0:
            self.answers.put_nowait(None)


class _Answer:
    """A stream entry's waiter (runtime.Waiter): the runtime's answer goes
    into the stream's queue the moment it is known, with no future and no
    callback scheduled through the event loop per entry."""

    __slots__ = ("_entry", "_pump", "_done")

    def __init__(self, pump: _Submissions, entry: pb.LedgerEntry) -> None:
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


@dataclass
class Deps:
    storage: RocksStorage
    metrics: ConsensusMetrics
    rng: random.Random
    node_key: NodeKey | None = None
    snapshots: FileSnapshotStore | None = None


def build_node(
    config: ConsensusConfig,
    deps: Deps,
    on_fatal: Callable[[BaseException], None] | None = None,
) -> tuple[ConsensusNode, GrpcTransport]:
    ids = tuple(p[0] for p in config.peers)
    raft_config = RaftConfig(
        node_id=config.node_id,
        # A joining node starts as a learner: it never campaigns, so its
        # bootstrap view of the voters does no harm until it learns the real one.
        peers=tuple(i for i in ids if i != config.node_id) if config.join else ids,
        learners=(config.node_id,) if config.join else (),
        election_ticks=config.election_ticks,
        heartbeat_ticks=config.heartbeat_ticks,
    )
    raft_config.validate()
    addresses = dict(config.peer_addresses)
    addresses.setdefault(config.node_id, config.listen)
    transport = GrpcTransport(config.node_id, config.cluster_id, addresses, deps.metrics)
    node = ConsensusNode(
        raft_config,
        deps.storage,
        transport,
        deps.metrics,
        deps.rng,
        tick_s=config.tick_ms / 1000,
        max_batch_entries=config.max_batch_entries,
        max_batch_bytes=config.max_batch_bytes,
        max_pending=config.max_pending_submissions,
        on_fatal=on_fatal,
        cluster_id=config.cluster_id,
        node_key=deps.node_key,
        snapshots=deps.snapshots,
        snapshot_entries=config.snapshot_entries,
        snapshot_keep_entries=config.snapshot_keep_entries,
        snapshot_chunk_bytes=config.snapshot_chunk_bytes,
        compact_log_bytes=config.compact_log_bytes,
        addresses=addresses,
    )
    return node, transport


def build_server(
    config: ConsensusConfig, node: ConsensusNode
) -> tuple[grpc.aio.Server, int, object]:
    server = new_server()
    pb_grpc.add_RaftPeerServicer_to_server(RaftPeerServicer(node, config.cluster_id), server)
    pb_grpc.add_LedgerServicer_to_server(LedgerServicer(node, config), server)
    health = add_health_and_reflection(server, SERVICE_NAMES)
    try:
        port = server.add_insecure_port(config.listen)
    except RuntimeError as exc:  # grpc's way of saying the address is taken
        raise OSError(f"cannot listen on {config.listen}: {exc}") from None
    if port == 0:
        raise OSError(f"cannot listen on {config.listen}")
    return server, port, health


async def serve(config: ConsensusConfig, *, shutdown: asyncio.Event | None = None) -> int:
    """Run the node until ``shutdown`` is set; returns a process exit code."""
    storage = RocksStorage(
        os.path.join(config.data_dir, "consensus"), node_id=config.node_id, cluster_id=config.cluster_id
    )
    metrics = ConsensusMetrics()
    snapshots = FileSnapshotStore(
        os.path.join(config.data_dir, "snapshots"),
        max_snapshot_bytes=config.max_snapshot_bytes,
        max_chunk_bytes=max(config.snapshot_chunk_bytes, 4 * 1024 * 1024),
    )
    deps = Deps(
        storage=storage, metrics=metrics, rng=random.Random(),
        node_key=NodeKey.load_or_create(Path(config.key_path)), snapshots=snapshots,
    )
    rejoining = False
    advertise = advertised_address(config)
    if storage.is_blank():
        # Synchronizer: a wiped node of a running cluster comes back as a
        # learner and has itself removed and added again (see synchronizer.py).
        voters = await plan_rejoin(config)
        if voters is not None:
            log.info("data directory is empty but the cluster knows this node: rejoining")
            config = dataclasses.replace(config, join=True, peers=voters)
            rejoining = True
    stop = shutdown or asyncio.Event()
    fatal: list[BaseException] = []

    def on_fatal(exc: BaseException) -> None:
        fatal.append(exc)
        stop.set()

    node, transport = build_node(config, deps, on_fatal)
    server, port, health = build_server(config, node)
    if config.metrics_port:
        serve_metrics(metrics.registry, config.listen.rsplit(":", 1)[0], config.metrics_port)
    await server.start()
    transport.start()
    node.start()
    await mark_serving(health, SERVICE_NAMES)  # type: ignore[arg-type]
    log.info("consensus %s serving on port %d, peers %s", config.node_id, port, config.peers)
    rejoin_task = (
        asyncio.create_task(rejoin(config, advertise, node)) if rejoining else None
    )
    try:
        await stop.wait()
        if not fatal and await node.hand_over_leadership(timeout_s=config.election_ticks * config.tick_ms / 1000):
            log.info("leadership handed over before shutdown")
    finally:
        if rejoin_task is not None:
            rejoin_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await rejoin_task
        await graceful_stop(server, health, grace_s=1.0)  # type: ignore[arg-type]
        await node.stop()
        await transport.stop()
        storage.close()
    if fatal:
        log.error("node %s stopped: %s", config.node_id, fatal[0])
        return 3
    return 0
