"""Kademlia routing, sans-I/O: node ids, XOR distance, k-buckets, lookups.

Follows Maymounkov & Mazières, "Kademlia: A Peer-to-peer Information System
Based on the XOR Metric" (2002), with 256-bit ids so node ids and blob
digests (SHA-256) share one key space.

- ``RoutingTable`` keeps one bucket per shared-prefix length (§2.2). A bucket
  holds at most k contacts, least recently seen first. When a full bucket
  sees a new contact, the new one goes to a replacement cache and the table
  returns the least recently seen contact for the runtime to ping (§2.2:
  "the recipient pings the least-recently seen node"); a contact is evicted
  after ``max_failures`` consecutive failed requests and the freshest
  replacement takes its place (§4.1).
- ``Lookup`` is the iterative node lookup (§2.3) as a state machine: the
  runtime asks ``next_queries()`` for up to alpha contacts to query, feeds back
  ``on_response`` / ``on_failure``, and stops when ``done``. The result is the
  k closest contacts that answered. Hop count: a seed contact is at hop 1 and
  a contact learned from a hop-h contact's answer is at hop h+1; a lookup's
  ``hops`` is the hop of the closest contact it found.

No I/O, no clock, no randomness: the runtime owns all three.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import NewType

NodeId = NewType("NodeId", bytes)  # 32 bytes
ID_BYTES = 32
ID_BITS = ID_BYTES * 8


def node_id_from_name(name: str) -> NodeId:
    """A node's id: SHA-256 of its configured name (stable across restarts)."""
    return NodeId(hashlib.sha256(name.encode()).digest())


def distance(a: bytes, b: bytes) -> int:
    return int.from_bytes(a, "big") ^ int.from_bytes(b, "big")


def bucket_index(self_id: bytes, other: bytes) -> int:
    """Index of the bucket for ``other``: 255 - length of the shared prefix."""
    d = distance(self_id, other)
    if d == 0:
        raise ValueError("a node has no bucket for itself")
    return d.bit_length() - 1


@dataclass(frozen=True, slots=True)
class Contact:
    node_id: NodeId
    address: str

    def __post_init__(self) -> None:
        if len(self.node_id) != ID_BYTES:
            raise ValueError(f"node id must be {ID_BYTES} bytes")


@dataclass(slots=True)
class _Bucket:
    contacts: list[Contact] = field(default_factory=list)  # least recently seen first
    replacements: list[Contact] = field(default_factory=list)


class RoutingTable:
    def __init__(self, self_contact: Contact, k: int, max_failures: int = 2) -> None:
        if k < 1:
            raise ValueError("k must be at least 1")
        self.self_contact = self_contact
        self.k = k
        self.max_failures = max_failures
        self._buckets = [_Bucket() for _ in range(ID_BITS)]
        self._failures: dict[NodeId, int] = {}

    @property
    def self_id(self) -> NodeId:
        return self.self_contact.node_id

    def __len__(self) -> int:
        return sum(len(b.contacts) for b in self._buckets)

    def __contains__(self, node_id: object) -> bool:
        return any(c.node_id == node_id for c in self.contacts())

    def contacts(self) -> list[Contact]:
        return [c for b in self._buckets for c in b.contacts]

    def observe(self, contact: Contact) -> Contact | None:
        """Record that ``contact`` answered or sent us a request.

        Returns a contact the runtime should ping (the least recently seen
        one of a full bucket), or None.
        """
        if contact.node_id == self.self_id:
            return None
        self._failures.pop(contact.node_id, None)
        bucket = self._buckets[bucket_index(self.self_id, contact.node_id)]
        for i, known in enumerate(bucket.contacts):
            if known.node_id == contact.node_id:
                del bucket.contacts[i]
                bucket.contacts.append(contact)  # moves to the tail; address may change
                return None
        if len(bucket.contacts) < self.k:
            bucket.contacts.append(contact)
            return None
        bucket.replacements = [r for r in bucket.replacements if r.node_id != contact.node_id]
        bucket.replacements.append(contact)
        del bucket.replacements[: -self.k]
        return bucket.contacts[0]

    def record_failure(self, node_id: NodeId) -> bool:
        """A request to ``node_id`` failed; returns True when it was evicted."""
        if node_id == self.self_id:
            return False
        count = self._failures.get(node_id, 0) + 1
        self._failures[node_id] = count
        if count < self.max_failures:
            return False
        return self.remove(node_id)

    def remove(self, node_id: NodeId) -> bool:
        self._failures.pop(node_id, None)
        bucket = self._buckets[bucket_index(self.self_id, node_id)]
        bucket.replacements = [r for r in bucket.replacements if r.node_id != node_id]
        for i, known in enumerate(bucket.contacts):
            if known.node_id == node_id:
                del bucket.contacts[i]
                if bucket.replacements:
                    bucket.contacts.append(bucket.replacements.pop())
                return True
        return False

    def closest(self, target: bytes, count: int | None = None) -> list[Contact]:
        """The ``count`` (default k) known contacts closest to ``target``."""
        n = self.k if count is None else count
        return sorted(self.contacts(), key=lambda c: distance(c.node_id, target))[:n]


class Lookup:
    """An iterative lookup for ``target`` (Kademlia §2.3)."""

    def __init__(
        self, target: bytes, seeds: list[Contact], self_id: NodeId, k: int, alpha: int
    ) -> None:
        self.target = target
        self.k = k
        self.alpha = alpha
        self._self_id = self_id
        self._hop: dict[NodeId, int] = {}
        self._contacts: dict[NodeId, Contact] = {}
        self._in_flight: set[NodeId] = set()
        self._queried: set[NodeId] = set()
        self._answered: set[NodeId] = set()
        self._failed: set[NodeId] = set()
        self.queries = 0
        for contact in seeds:
            self._learn(contact, 1)

    def _learn(self, contact: Contact, hop: int) -> None:
        if contact.node_id == self._self_id or contact.node_id in self._contacts:
            return
        self._contacts[contact.node_id] = contact
        self._hop[contact.node_id] = hop

    def _shortlist(self) -> list[Contact]:
        live = [c for i, c in self._contacts.items() if i not in self._failed]
        return sorted(live, key=lambda c: distance(c.node_id, self.target))

    def next_queries(self) -> list[Contact]:
        """Contacts to query now; marks them in flight."""
        out: list[Contact] = []
        budget = self.alpha - len(self._in_flight)
        # Only the k closest not-failed contacts matter (§2.3: the lookup ends
        # once the k closest it has seen have all answered).
        for contact in self._shortlist()[: self.k]:
            if budget <= 0:
                break
            if contact.node_id in self._queried:
                continue
            self._queried.add(contact.node_id)
            self._in_flight.add(contact.node_id)
            self.queries += 1
            out.append(contact)
            budget -= 1
        return out

    def on_response(self, contact: Contact, closer: list[Contact]) -> None:
        self._in_flight.discard(contact.node_id)
        self._answered.add(contact.node_id)
        hop = self._hop.get(contact.node_id, 1) + 1
        for c in closer:
            self._learn(c, hop)

    def on_failure(self, contact: Contact) -> None:
        self._in_flight.discard(contact.node_id)
        self._failed.add(contact.node_id)

    @property
    def done(self) -> bool:
        if self._in_flight:
            return False
        return all(c.node_id in self._queried for c in self._shortlist()[: self.k])

    def result(self) -> list[Contact]:
        """The k closest contacts that answered."""
        return [c for c in self._shortlist() if c.node_id in self._answered][: self.k]

    @property
    def hops(self) -> int:
        found = self.result()
        return self._hop[found[0].node_id] if found else 0
