"""A synchronous in-memory network of routing cores (the fake transport).

Each node is a ``RoutingTable``; a query is delivered by calling the
responder's table directly. ``down`` nodes fail every request, as a crashed
peer would. Everything is deterministic given the ``random.Random`` passed in.
"""

from __future__ import annotations

import random

from services.dht.routing import Contact, Lookup, NodeId, RoutingTable, distance


class FakeNetwork:
    def __init__(self, bucket_size: int, alpha: int) -> None:
        self.bucket_size = bucket_size
        self.alpha = alpha
        self.tables: dict[NodeId, RoutingTable] = {}
        self.down: set[NodeId] = set()

    def add_node(self, rng: random.Random, seed: Contact | None) -> Contact:
        node_id = NodeId(rng.randbytes(32))
        contact = Contact(node_id, f"sim:{node_id.hex()[:8]}")
        table = RoutingTable(contact, self.bucket_size)
        self.tables[node_id] = table
        if seed is not None:
            table.observe(seed)
            self.lookup(contact, node_id)  # join: look up our own id (Kademlia §2.3)
        return contact

    def find_node(self, sender: Contact, to: Contact, target: bytes) -> list[Contact] | None:
        if to.node_id in self.down:
            return None
        table = self.tables[to.node_id]
        table.observe(sender)
        return table.closest(target, self.bucket_size)

    def lookup(self, origin: Contact, target: bytes) -> Lookup:
        table = self.tables[origin.node_id]
        want = self.bucket_size
        lookup = Lookup(target, table.closest(target, want), origin.node_id, want, self.alpha)
        for _round in range(10_000):  # bounded: each round queries at least one contact
            batch = lookup.next_queries()
            if not batch:
                break
            for contact in batch:
                answer = self.find_node(origin, contact, target)
                if answer is None:
                    lookup.on_failure(contact)
                    table.record_failure(contact.node_id)
                else:
                    table.observe(contact)
                    lookup.on_response(contact, answer)
        assert lookup.done
        return lookup

    def true_closest(self, target: bytes, k: int) -> list[NodeId]:
        live = [n for n in self.tables if n not in self.down]
        return sorted(live, key=lambda n: distance(n, target))[:k]


def build(n: int, seed: int, bucket_size: int = 8, alpha: int = 3) -> FakeNetwork:
    rng = random.Random(seed)
    net = FakeNetwork(bucket_size, alpha)
    first = net.add_node(rng, None)
    for _ in range(n - 1):
        net.add_node(rng, first)
    return net
