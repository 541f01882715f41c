"""The ledger's typed values (frozen, slotted; protobuf stays in
``codec.py``): what the ledger machine and certification read of an entry,
and a node's signature over a block."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from .keys import RequestKey


@dataclass(frozen=True, slots=True)
class MemberKey:
    """A node's block-signing key as a MembershipChanged entry records it,
    with its proof of possession (the key's signature over ``key_message``)."""

    node_id: str
    public_key: bytes
    key_proof: bytes


class EntryView(NamedTuple):
    """What the ledger machine needs of one ledger entry: its idempotency
    key (None: not idempotent), its kind (``app``, ``release_published``,
    ``membership_changed``, ...; None for an entry of no known kind) and the
    member keys it records. (A named tuple: one is made for every entry
    every node applies, and a frozen dataclass is several times dearer to
    make.)"""

    key: RequestKey | None
    kind: str | None
    members: tuple[MemberKey, ...] = ()


@dataclass(frozen=True, slots=True)
class BlockSignature:
    """One node's signature over the hash of the block at ``height``."""

    height: int
    hash: bytes
    node_id: str
    signature: bytes
