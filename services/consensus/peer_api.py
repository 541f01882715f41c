"""The RaftPeer service: what the members of a cluster send each other —
Raft messages on one long-lived stream per peer, snapshots on a stream of
their own, block signatures. A peer must name this node's cluster; messages
from nodes that are not members are dropped, never stepped."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc

from fleetsuit.v1 import consensus_pb2 as pb
from fleetsuit.v1 import consensus_pb2_grpc as pb_grpc

from .convert import message_from_pb, signature_from_pb, signature_to_pb
from .errors import BadPeerMessage, NoSnapshots, WrongCluster
from .raft.types import Message, MessageType
from .runtime import ConsensusNode
from .transport import CLUSTER_HEADER


class RaftPeerServicer(pb_grpc.RaftPeerServicer):
    def __init__(self, node: ConsensusNode, cluster_id: str) -> None:
        self._node = node
        self._cluster_id = cluster_id
        self._receiving = asyncio.Lock()  # one snapshot staged at a time

    def _check_cluster(self, context: grpc.aio.ServicerContext) -> None:
        got = dict(context.invocation_metadata() or ()).get(CLUSTER_HEADER)
        if got != self._cluster_id:
            raise WrongCluster(f"peer belongs to cluster {got!r}, this node to {self._cluster_id!r}")

    @staticmethod
    def _message(raw: pb.RaftMessage) -> Message:
        try:
            return message_from_pb(raw)
        except ValueError:
            raise BadPeerMessage("unknown message type") from None

    async def Send(  # noqa: N802 (gRPC method name)
        self, request_iterator: AsyncIterator[pb.RaftMessageBatch], context: grpc.aio.ServicerContext
    ) -> pb.PeerAck:
        self._check_cluster(context)
        async for batch in request_iterator:
            messages = [self._message(raw) for raw in batch.messages if self._node.knows(raw.src)]
            if messages:
                self._node.deliver(messages)
        return pb.PeerAck()

    async def InstallSnapshot(  # noqa: N802
        self, request_iterator: AsyncIterator[pb.RaftMessage], context: grpc.aio.ServicerContext
    ) -> pb.PeerAck:
        """Raft §7: stage the chunks; only the complete, verified snapshot is
        handed to the core (as the final SNAPSHOT message, without data)."""
        self._check_cluster(context)
        store = self._node.snapshots
        if store is None:
            raise NoSnapshots("this node keeps no snapshots")
        async with self._receiving:
            started = asyncio.get_running_loop().time()
            async for raw in request_iterator:
                msg = self._message(raw)
                if msg.type is not MessageType.SNAPSHOT or msg.snapshot is None or not self._node.knows(msg.src):
                    raise BadPeerMessage("not a snapshot chunk")
                complete = await asyncio.to_thread(store.receive, msg.snapshot, msg.offset, msg.data, msg.done)
                if complete:
                    self._node.snapshot_received(msg, asyncio.get_running_loop().time() - started)
                    return pb.PeerAck()
        return pb.PeerAck()

    async def Ping(self, request: pb.PeerAck, context: grpc.aio.ServicerContext) -> pb.PeerAck:  # noqa: N802
        self._check_cluster(context)
        return pb.PeerAck()

    async def ShareSignatures(  # noqa: N802
        self, request: pb.SignatureBatch, context: grpc.aio.ServicerContext
    ) -> pb.PeerAck:
        self._check_cluster(context)
        self._node.receive_signatures([signature_from_pb(s) for s in request.signatures])
        return pb.PeerAck()

    async def GetSignatures(  # noqa: N802
        self, request: pb.SignatureRequest, context: grpc.aio.ServicerContext
    ) -> pb.SignatureBatch:
        self._check_cluster(context)
        certifier = self._node.certifier
        if certifier is None:
            return pb.SignatureBatch()
        return pb.SignatureBatch(signatures=[
            signature_to_pb(s) for s in certifier.signatures_between(request.from_height, request.to_height)
        ])
