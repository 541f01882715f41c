"""A synchronous in-memory network of RaftNodes for the unit tests (the
etcd-io/raft test network: deliver everything at once, with cut links).

``drain`` plays a node's runtime (save, send, apply, advance); ``stabilize``
delivers messages until none are left. No clock: time is ``tick``.
"""

from __future__ import annotations

import random
from collections.abc import Iterable

from services.consensus.raft.memory import MemoryStorage
from services.consensus.raft.node import RaftNode
from services.consensus.raft.types import Entry, Message, MessageType, RaftConfig, Role

_MAX_ROUNDS = 1000


class RaftNet:
    def __init__(self, size: int = 3, seed: int = 0, **config: int | bool) -> None:
        self.ids = tuple(f"n{i}" for i in range(1, size + 1))
        self.configs = {
            nid: RaftConfig(node_id=nid, peers=self.ids, **config)  # type: ignore[arg-type]
            for nid in self.ids
        }
        self.rng = random.Random(seed)
        self.storage = {nid: MemoryStorage() for nid in self.ids}
        self.nodes = {
            nid: RaftNode(self.configs[nid], random.Random(self.rng.getrandbits(32)))
            for nid in self.ids
        }
        self.applied: dict[str, list[Entry]] = {nid: [] for nid in self.ids}
        self.cut: set[tuple[str, str]] = set()
        self.sent: list[Message] = []  # every message that left a node, in order

    # -- faults ----------------------------------------------------------------------

    def isolate(self, nid: str) -> None:
        for other in self.ids:
            if other != nid:
                self.cut.add((nid, other))
                self.cut.add((other, nid))

    def heal(self) -> None:
        self.cut.clear()

    def restart(self, nid: str) -> None:
        hs, log = self.storage[nid].load()
        rng = random.Random(self.rng.getrandbits(32))
        self.nodes[nid] = RaftNode(self.configs[nid], rng, hs, log, applied=0)
        self.applied[nid] = []

    # -- runtime --------------------------------------------------------------------

    def drain(self, nid: str) -> list[Message]:
        """Handle every Ready of ``nid``; return the messages it sent."""
        node = self.nodes[nid]
        out: list[Message] = []
        for _ in range(_MAX_ROUNDS):
            if not node.has_ready():
                return out
            rd = node.ready()
            self.storage[nid].save(rd.hard_state, rd.entries)
            out.extend(rd.messages)
            self.applied[nid].extend(rd.committed)
            node.advance(rd)
        raise AssertionError("Ready did not settle")

    def deliver(self, msgs: Iterable[Message]) -> None:
        for m in msgs:
            if (m.src, m.dst) not in self.cut:
                self.nodes[m.dst].step(m)

    def stabilize(self) -> None:
        for _ in range(_MAX_ROUNDS):
            msgs = [m for nid in self.ids for m in self.drain(nid)]
            self.sent.extend(msgs)
            if not msgs:
                return
            self.deliver(msgs)
        raise AssertionError("network did not stabilize")

    def tick(self, nid: str, times: int = 1) -> None:
        for _ in range(times):
            self.nodes[nid].tick()

    def tick_all(self, times: int = 1) -> None:
        for _ in range(times):
            for nid in self.ids:
                self.nodes[nid].tick()
            self.stabilize()

    def elect(self, nid: str) -> RaftNode:
        """Time ``nid`` out until it campaigns, then let the election finish."""
        node = self.nodes[nid]
        for _ in range(2 * self.configs[nid].election_ticks):
            if node.role is not Role.FOLLOWER:
                break
            node.tick()
        self.stabilize()
        assert node.role is Role.LEADER, f"{nid} did not win: {node.status()}"
        return node

    def propose(self, nid: str, *payloads: bytes) -> list[int]:
        indexes = self.nodes[nid].propose(list(payloads))
        self.stabilize()
        return indexes

    def of_type(self, t: MessageType) -> list[Message]:
        return [m for m in self.sent if m.type is t]
