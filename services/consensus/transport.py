"""The gRPC Transport (roles.Transport): one long-lived client stream per
peer carries batches of Raft messages; answers come back on the peer's own
stream to us. Sending never blocks the Raft loop: messages queue per peer
(bounded: when a peer is unreachable the oldest are dropped, which Raft
tolerates) and a task per peer drains the queue, reconnecting quickly.

Peers follow the configuration: ``set_peers`` adds and removes them as
membership changes. Snapshots travel on a stream of their own
(``InstallSnapshot``), so a large one never delays heartbeats.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Mapping, Sequence

import grpc

from fleetsuit.grpcutil import insecure_channel
from fleetsuit.logs import RateLimitedLog
from fleetsuit.unreachable import Unreachable
from fleetsuit.v1 import consensus_pb2 as pb
from fleetsuit.v1 import consensus_pb2_grpc as pb_grpc

from .convert import message_to_pb, signature_from_pb, signature_to_pb
from .ledger.entries import BlockSignature
from .metrics import ConsensusMetrics
from .raft.types import Message

log = logging.getLogger(__name__)

CLUSTER_HEADER = "x-fleetsuit-cluster"
MAX_QUEUED_PER_PEER = 4_096
RECONNECT_DELAY_S = 0.05
RTT_INTERVAL_S = 5.0
SNAPSHOT_TIMEOUT_S = 600.0


class _Peer:
    def __init__(self, node_id: str, address: str) -> None:
        self.node_id = node_id
        self.address = address
        self.queue: deque[Message] = deque()
        self.ready = asyncio.Event()
        # A channel for unary calls (ping, signatures), apart from the stream.
        self.channel = insecure_channel(address)
        self.stub = pb_grpc.RaftPeerStub(self.channel)
        # Bumped for every new stream: a failed stream's request iterator can
        # outlive its call inside grpc, and must not take messages meant for
        # the next stream (they would be lost on a dead connection).
        self.generation = 0


class GrpcTransport:
    def __init__(
        self,
        node_id: str,
        cluster_id: str,
        peers: Mapping[str, str],
        metrics: ConsensusMetrics,
        unreachable_after_s: float = 0.6,
    ) -> None:
        self._node_id = node_id
        self._unreachable = Unreachable(unreachable_after_s)
        self._unreachable_log = RateLimitedLog(log, interval_s=30.0)
        self._metadata = ((CLUSTER_HEADER, cluster_id),)
        self._metrics = metrics
        self._peers = {pid: _Peer(pid, addr) for pid, addr in peers.items() if pid != node_id}
        self._tasks: dict[str, list[asyncio.Task[None]]] = {}
        self._oneshots: set[asyncio.Task[None]] = set()
        self._closing = False
        self._started = False

    def start(self) -> None:
        self._started = True
        for peer in self._peers.values():
            self._start_peer(peer)

    def _start_peer(self, peer: _Peer) -> None:
        self._tasks[peer.node_id] = [
            asyncio.create_task(self._run_peer(peer), name=f"peer-{peer.node_id}"),
            asyncio.create_task(self._measure_rtt(peer), name=f"rtt-{peer.node_id}"),
        ]

    def peers(self) -> dict[str, str]:
        return {pid: p.address for pid, p in self._peers.items()}

    def set_peers(self, peers: Mapping[str, str]) -> None:
        """Follow the configuration: connect to new members (or new
        addresses), disconnect from removed ones."""
        peers = {pid: addr for pid, addr in peers.items() if pid != self._node_id}
        for pid in list(self._peers):
            if peers.get(pid) != self._peers[pid].address:
                self._drop_peer(pid)
        for pid, addr in peers.items():
            if pid not in self._peers:
                peer = _Peer(pid, addr)
                self._peers[pid] = peer
                if self._started and not self._closing:
                    self._start_peer(peer)

    def _drop_peer(self, pid: str) -> None:
        peer = self._peers.pop(pid)
        for task in self._tasks.pop(pid, []):
            task.cancel()
        closing = asyncio.create_task(peer.channel.close(grace=None))
        self._oneshots.add(closing)
        closing.add_done_callback(self._oneshots.discard)

    async def stop(self) -> None:
        self._closing = True
        tasks = [t for ts in self._tasks.values() for t in ts]
        for task in [*tasks, *self._oneshots]:
            task.cancel()
        for task in [*tasks, *self._oneshots]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for peer in self._peers.values():
            await peer.channel.close(grace=None)

    async def send_snapshot(self, node_id: str, chunks: AsyncIterable[Message]) -> bool:
        """Stream one snapshot's chunks to a peer; True if it took all of them."""
        peer = self._peers.get(node_id)
        if peer is None:
            return False

        async def messages() -> AsyncIterator[pb.RaftMessage]:
            async for chunk in chunks:
                yield message_to_pb(chunk)

        try:
            await peer.stub.InstallSnapshot(
                messages(), timeout=SNAPSHOT_TIMEOUT_S, metadata=self._metadata
            )
        except grpc.RpcError as exc:
            log.warning("snapshot stream to %s failed: %s", node_id, exc.code())
            return False
        return True

    def send(self, messages: Sequence[Message]) -> None:
        for msg in messages:
            peer = self._peers.get(msg.dst)
            if peer is None:
                continue
            if len(peer.queue) >= MAX_QUEUED_PER_PEER:
                peer.queue.clear()  # unreachable peer: Raft resends what matters
            peer.queue.append(msg)
            peer.ready.set()

    async def _batches(self, peer: _Peer, generation: int) -> AsyncIterator[pb.RaftMessageBatch]:
        while True:
            await peer.ready.wait()
            if peer.generation != generation:
                return  # a newer stream owns the queue now
            peer.ready.clear()
            if not peer.queue:
                continue
            batch = pb.RaftMessageBatch()
            while peer.queue:
                batch.messages.append(message_to_pb(peer.queue.popleft()))
            self._metrics.peer_messages_sent.labels(peer.node_id).inc(len(batch.messages))
            self._metrics.peer_batches_sent.labels(peer.node_id).inc()
            yield batch

    async def _run_peer(self, peer: _Peer) -> None:
        while not self._closing:
            channel = insecure_channel(peer.address)
            peer.generation += 1
            peer.ready.set()  # wakes a stale iterator so that it ends
            try:
                stub = pb_grpc.RaftPeerStub(channel)
                await stub.Send(self._batches(peer, peer.generation), metadata=self._metadata)
            except grpc.RpcError as exc:
                self._metrics.peer_sent_failures.labels(peer.node_id).inc()
                log.debug("stream to %s ended: %s", peer.node_id, exc.code())
                self._failed(peer, str(exc.code()))
            finally:
                await channel.close(grace=None)
            await asyncio.sleep(RECONNECT_DELAY_S)

    def _failed(self, peer: _Peer, why: str) -> None:
        """A peer unreachable for longer than an election timeout is logged
        (at most every 30 s per peer)."""
        down_s = self._unreachable.failed(peer.node_id, time.monotonic())
        if down_s is not None:
            self._unreachable_log.log(
                peer.node_id, logging.WARNING, "peer %s at %s unreachable for %.1f s (%s)",
                peer.node_id, peer.address, down_s, why,
            )

    async def _measure_rtt(self, peer: _Peer) -> None:
        while not self._closing:
            start = time.perf_counter()
            try:
                await peer.stub.Ping(pb.PeerAck(), timeout=1.0, metadata=self._metadata)
                self._metrics.peer_rtt.labels(peer.node_id).observe(time.perf_counter() - start)
                if peer.node_id in self._unreachable:
                    log.info("peer %s at %s is reachable again", peer.node_id, peer.address)
                self._unreachable.answered(peer.node_id)
            except grpc.RpcError:
                self._failed(peer, "ping failed")
            await asyncio.sleep(RTT_INTERVAL_S)

    # ------------------------------------------------------------ signatures

    def share_signatures(self, signatures: Sequence[BlockSignature]) -> None:
        """Push block signatures to every peer; best effort (peers also pull)."""
        if not signatures or self._closing:
            return
        batch = pb.SignatureBatch(signatures=[signature_to_pb(s) for s in signatures])
        for peer in list(self._peers.values()):
            task = asyncio.create_task(self._share(peer, batch))
            self._oneshots.add(task)
            task.add_done_callback(self._oneshots.discard)

    async def _share(self, peer: _Peer, batch: pb.SignatureBatch) -> None:
        with contextlib.suppress(grpc.RpcError):
            await peer.stub.ShareSignatures(batch, timeout=2.0, metadata=self._metadata)

    async def fetch_signatures(self, first: int, last: int) -> list[BlockSignature]:
        """Ask every peer for its signatures of heights first..last."""
        async def ask(peer: _Peer) -> list[BlockSignature]:
            try:
                batch = await peer.stub.GetSignatures(
                    pb.SignatureRequest(from_height=first, to_height=last), timeout=2.0,
                    metadata=self._metadata,
                )
            except grpc.RpcError:
                return []
            return [signature_from_pb(s) for s in batch.signatures]

        results = await asyncio.gather(*(ask(p) for p in list(self._peers.values())))
        return [s for batch in results for s in batch]
