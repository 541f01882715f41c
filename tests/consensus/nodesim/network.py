"""The fake network between simulated consensus nodes: every delivery is a
timer on the virtual clock, after a seeded delay; links can be cut (a
partition) and messages dropped or duplicated. ``SimTransport`` is one
node's ``PeerTransport`` over it: Raft messages, snapshot streams and block
signatures all cross the same faulty links. A test may watch the Raft
messages as they arrive (``probe``), to act at a precise point: cut a node
off right after its proposal reached the leader."""

from __future__ import annotations

import asyncio
import functools
import random
from collections.abc import AsyncIterable, Callable, Mapping, Sequence

from services.consensus.errors import ConsensusError
from services.consensus.ledger.entries import BlockSignature
from services.consensus.raft.types import Message
from services.consensus.runtime import ConsensusNode


class SimNetwork:
    def __init__(self, loop: asyncio.AbstractEventLoop, rng: random.Random) -> None:
        self._loop = loop
        self._rng = rng
        self.nodes: dict[str, ConsensusNode] = {}  # the live ones
        self._cut: set[frozenset[str]] = set()
        self.drop_rate = 0.0
        self.dup_rate = 0.0
        self.min_delay_s = 0.0005
        self.max_delay_s = 0.005
        # Called with each Raft message just delivered to its node.
        self.probe: Callable[[Message], None] | None = None

    # ------------------------------------------------------------ faults

    def connected(self, a: str, b: str) -> bool:
        return frozenset((a, b)) not in self._cut

    def partition(self, groups: Sequence[Sequence[str]]) -> None:
        """Cut every link between nodes of different groups."""
        self._cut.clear()
        for i, one in enumerate(groups):
            for other in groups[i + 1 :]:
                self._cut.update(frozenset((a, b)) for a in one for b in other)

    def heal(self) -> None:
        self._cut.clear()

    def quiet(self) -> None:
        self.drop_rate = self.dup_rate = 0.0

    # ------------------------------------------------------------ delivery

    def _delay(self) -> float:
        return self._rng.uniform(self.min_delay_s, self.max_delay_s)

    def deliver(self, src: str, dst: str, act: Callable[[ConsensusNode], None]) -> None:
        if not self.connected(src, dst) or self._rng.random() < self.drop_rate:
            return
        copies = 2 if self._rng.random() < self.dup_rate else 1
        for _ in range(copies):
            self._loop.call_later(self._delay(), self._arrive, src, dst, act)

    def _arrive(self, src: str, dst: str, act: Callable[[ConsensusNode], None]) -> None:
        node = self.nodes.get(dst)
        if node is not None and self.connected(src, dst):
            act(node)

    def deliver_message(self, node: ConsensusNode, msg: Message) -> None:
        node.deliver([msg])
        if self.probe is not None:
            self.probe(msg)

    async def hop(self, src: str, dst: str) -> ConsensusNode | None:
        """One reliable-stream hop (a snapshot chunk, a signature pull): the
        peer, if it is alive and reachable once the hop's delay has passed."""
        await asyncio.sleep(self._delay())
        node = self.nodes.get(dst)
        return node if node is not None and self.connected(src, dst) else None


class SimTransport:
    def __init__(self, node_id: str, network: SimNetwork) -> None:
        self._me = node_id
        self._net = network
        self._peers: dict[str, str] = {}

    def set_peers(self, peers: Mapping[str, str]) -> None:
        self._peers = {p: a for p, a in peers.items() if p != self._me}

    def send(self, messages: Sequence[Message]) -> None:
        for msg in messages:
            if msg.dst in self._peers:
                self._net.deliver(self._me, msg.dst, functools.partial(self._net.deliver_message, msg=msg))

    async def send_snapshot(self, node_id: str, chunks: AsyncIterable[Message]) -> bool:
        async for chunk in chunks:
            peer = await self._net.hop(self._me, node_id)
            if peer is None or peer.snapshots is None or chunk.snapshot is None:
                return False
            try:
                complete = peer.snapshots.receive(chunk.snapshot, chunk.offset, chunk.data, chunk.done)
            except ConsensusError:
                return False
            if complete:
                peer.snapshot_received(chunk, 0.0)
                return True
        return False

    def share_signatures(self, signatures: Sequence[BlockSignature]) -> None:
        batch = list(signatures)
        for peer in self._peers:
            self._net.deliver(self._me, peer, lambda node: node.receive_signatures(batch))

    async def fetch_signatures(self, first: int, last: int) -> list[BlockSignature]:
        out: list[BlockSignature] = []
        for peer_id in list(self._peers):
            peer = await self._net.hop(self._me, peer_id)
            if peer is not None and peer.certifier is not None:
                out.extend(peer.certifier.signatures_between(first, last))
        return out
