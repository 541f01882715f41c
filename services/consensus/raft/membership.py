"""Cluster membership: who votes, who only learns, and how a change is
written into the log.

Single-server changes (dissertation §4.1): each CONFIG entry adds or removes
one server, or promotes one learner, so any two consecutive configurations
have overlapping majorities. A configuration takes effect on every server as
soon as its entry is appended to that server's log, committed or not; the
leader refuses a new change while one is uncommitted and until it has
committed an entry of its own term (the fix to §4.1 posted by Ongaro on
raft-dev, 2015). This module validates a change and encodes it; ``node.py``
decides when it takes effect.

CONFIG entry data, version 1: UTF-8 JSON object, keys sorted, no spaces::

    {"change":{"context":"<hex>","kind":"add_learner","node":"n4"},
     "learners":["n4"],"v":1,"voters":["n1","n2","n3"]}

``voters`` and ``learners`` are the whole membership after the change (sorted);
``change`` says what changed (``kind`` is a ``ConfChangeKind`` value,
``context`` is the proposer's opaque bytes, e.g. the node's address and public
key, hex-encoded). Readers must reject other versions and data above
``MAX_CONFIG_BYTES``.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass

CONFIG_FORMAT_VERSION = 1
MAX_CONFIG_BYTES = 64 * 1024


class ConfChangeKind(enum.Enum):
    ADD_LEARNER = "add_learner"
    PROMOTE = "promote"  # learner -> voter
    REMOVE = "remove"  # a voter or a learner


@dataclass(frozen=True, slots=True)
class ConfChange:
    kind: ConfChangeKind
    node_id: str
    context: bytes = b""  # opaque to the core, recorded in the CONFIG entry


@dataclass(frozen=True, slots=True)
class Membership:
    voters: frozenset[str]
    learners: frozenset[str] = frozenset()

    @classmethod
    def of(
        cls,
        voters: tuple[str, ...] | frozenset[str],
        learners: tuple[str, ...] | frozenset[str] = (),
    ) -> Membership:
        return cls(frozenset(voters), frozenset(learners))

    def members(self) -> frozenset[str]:
        return self.voters | self.learners

    def apply(self, change: ConfChange) -> Membership:
        """The membership after ``change``; ``ConfChangeInvalid`` if it makes no sense."""
        nid = change.node_id
        if not nid or "\n" in nid:
            raise ConfChangeInvalid(f"bad node id {nid!r}")
        if change.kind is ConfChangeKind.ADD_LEARNER:
            if nid in self.members():
                raise ConfChangeInvalid(f"{nid} is already a member")
            return Membership(self.voters, self.learners | {nid})
        if change.kind is ConfChangeKind.PROMOTE:
            if nid not in self.learners:
                raise ConfChangeInvalid(f"{nid} is not a learner")
            return Membership(self.voters | {nid}, self.learners - {nid})
        if nid not in self.members():
            raise ConfChangeInvalid(f"{nid} is not a member")
        if self.voters == {nid}:
            raise ConfChangeInvalid(f"{nid} is the last voter")
        return Membership(self.voters - {nid}, self.learners - {nid})


class ConfChangeError(Exception):
    """A membership change was refused."""


class ConfChangePending(ConfChangeError):
    """Another change is not committed yet, or the leader has not yet committed
    an entry of its term; retry later."""


class ConfChangeInvalid(ConfChangeError):
    """The change does not apply to the current membership."""


class ConfigDecodeError(ValueError):
    """CONFIG entry data that is not version-1 membership."""


def encode_config(m: Membership, change: ConfChange) -> bytes:
    doc = {
        "change": {
            "context": change.context.hex(),
            "kind": change.kind.value,
            "node": change.node_id,
        },
        "learners": sorted(m.learners),
        "v": CONFIG_FORMAT_VERSION,
        "voters": sorted(m.voters),
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def decode_config(data: bytes) -> tuple[Membership, ConfChange]:
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigDecodeError(f"config entry of {len(data)} bytes exceeds {MAX_CONFIG_BYTES}")
    try:
        doc = json.loads(data)
        if doc["v"] != CONFIG_FORMAT_VERSION:
            raise ConfigDecodeError(f"config format version {doc['v']!r} is not supported")
        voters, learners, ch = doc["voters"], doc["learners"], doc["change"]
        if not all(isinstance(n, str) for n in [*voters, *learners]):
            raise ConfigDecodeError("member ids must be strings")
        change = ConfChange(
            ConfChangeKind(ch["kind"]), str(ch["node"]), bytes.fromhex(ch["context"])
        )
    except ConfigDecodeError:
        raise
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigDecodeError(f"malformed config entry: {e}") from e
    return Membership.of(frozenset(voters), frozenset(learners)), change
