"""The ledger state machine (roles.Application): committed Raft entries in,
blocks out.

Each NORMAL Raft entry carries an ``EntryBatch`` of encoded ``LedgerEntry``
messages and becomes at most one block, so block boundaries depend only on
the log and every node builds the same chain. A ledger entry whose
(client_id, request_id) was applied before is left out of the block and
answered with the first application's index and height (the
RequestInspector's at-most-once rule). Everything here is deterministic: the
same log gives the same blocks on every node.

CONFIG entries (membership changes) make no block; the machine records what
they carry for the runtime: the address of an added member (the change's
context, ``encode_member_context``), and on a removal it forgets the member's
address and key, so a node that is removed and added again may register a
new key (the first key recorded while a node is a member stands).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import NamedTuple

from ..raft.membership import ConfChange, ConfChangeKind, ConfigDecodeError, decode_config
from ..raft.types import Entry, EntryType
from .block import GENESIS_HASH, BlockData, make_block
from .certify import key_message, verify
from .codec import block_from_bytes, block_to_bytes, decode_batch, decode_entry
from .entries import MemberKey
from .keys import RequestKey
from .store import LedgerStore


class Applied(NamedTuple):
    """The answer for one ledger entry, handed to whoever submitted it (a
    named tuple: one is made per submission)."""

    key: RequestKey | None
    index: int  # type: ignore[assignment]  # the field shadows tuple.index, on purpose
    block_height: int
    duplicate: bool


MAX_CONTEXT_BYTES = 1024


def encode_member_context(address: str) -> bytes:
    return json.dumps({"address": address}, sort_keys=True, separators=(",", ":")).encode()


def decode_member_context(context: bytes) -> str:
    """The address in a CONFIG change's context ("" when absent or malformed)."""
    if not context or len(context) > MAX_CONTEXT_BYTES:
        return ""
    try:
        address = json.loads(context).get("address", "")
    except (ValueError, AttributeError):
        return ""
    return address if isinstance(address, str) and ":" in address else ""


class LedgerMachine:
    def __init__(
        self,
        storage: LedgerStore,
        on_block: Callable[[BlockData], None] | None = None,
        cluster_id: str = "",
        on_config: Callable[[ConfChange], None] | None = None,
    ) -> None:
        self._storage = storage
        self._cluster_id = cluster_id
        self._on_block = on_block
        self._on_config = on_config
        self.reload()

    def reload(self) -> None:
        """Read the applied state again (after a snapshot was installed)."""
        storage = self._storage
        self._applied = storage.applied_index()
        self._height = storage.last_block_height()
        head = storage.get_block(self._height) if self._height else None
        self._head_hash = block_from_bytes(head).hash if head else GENESIS_HASH

    def applied_index(self) -> int:
        return self._applied

    @property
    def height(self) -> int:
        return self._height

    @property
    def head_hash(self) -> bytes:
        return self._head_hash

    def apply(self, entries: Sequence[Entry]) -> list[Applied]:
        """Apply committed entries; one ``Applied`` per ledger entry, in order
        (a duplicate's answer follows the first one's when both are in the
        same batch). The loop runs once per submission on every node, so it
        computes each request key once, for the lookup and the write."""
        results: list[Applied] = []
        blocks: list[tuple[int, bytes]] = []
        new_blocks: list[BlockData] = []
        requests: list[tuple[RequestKey, int, int]] = []
        member_keys: dict[str, bytes | None] = {}
        addresses: dict[str, str | None] = {}
        changes: list[ConfChange] = []
        seen_now: dict[RequestKey, tuple[int, int]] = {}  # request -> (index, height) in this call
        lookup = self._storage.get_request
        decode = decode_entry
        for entry in entries:
            if entry.index <= self._applied:
                continue  # already applied before a restart
            self._applied = entry.index
            if entry.type == EntryType.CONFIG:
                self._apply_config(entry, addresses, member_keys, changes)
                continue
            if entry.type != EntryType.NORMAL:
                continue
            included: list[bytes] = []
            keys: list[RequestKey | None] = []
            again: list[RequestKey] = []  # duplicates of this batch's own entries
            for payload in decode_batch(entry.data):
                view = decode(payload)
                if view is None:
                    included.append(payload)  # not a ledger entry: kept as it is, the log ordered it
                    keys.append(None)
                    continue
                key = view.key
                if key is not None:
                    earlier = seen_now.get(key) or lookup(key)
                    if earlier is not None:
                        if earlier[1] == 0:
                            again.append(key)  # its height is known once the block is
                        else:
                            results.append(Applied(key, earlier[0], earlier[1], True))
                        continue
                    seen_now[key] = (entry.index, 0)
                    keys.append(key)
                else:
                    keys.append(None)
                included.append(payload)
                if view.members:
                    self._register_keys(view.members, member_keys)
            if not included:
                continue
            block = make_block(
                self._height + 1, self._head_hash, entry.index, entry.index, entry.term, included
            )
            height = self._height = block.height
            self._head_hash = block.hash
            blocks.append((height, block_to_bytes(block)))
            new_blocks.append(block)
            index = entry.index
            for item in keys:
                if item is None:
                    results.append(Applied(None, index, height, False))
                    continue
                seen_now[item] = (index, height)
                requests.append((item, index, height))
                results.append(Applied(item, index, height, False))
            for key in again:
                results.append(Applied(key, index, height, True))
        self._storage.write_applied(
            self._applied, blocks, requests, list(member_keys.items()), list(addresses.items())
        )
        if self._on_block is not None:
            for block in new_blocks:
                self._on_block(block)
        if self._on_config is not None:
            for change in changes:
                self._on_config(change)
        return results

    def _apply_config(
        self,
        entry: Entry,
        addresses: dict[str, str | None],
        member_keys: dict[str, bytes | None],
        changes: list[ConfChange],
    ) -> None:
        try:
            _, change = decode_config(entry.data)
        except ConfigDecodeError:
            return  # the core refused to append such an entry; nothing to record
        changes.append(change)
        if change.kind is ConfChangeKind.ADD_LEARNER:
            address = decode_member_context(change.context)
            if address:
                addresses[change.node_id] = address
        elif change.kind is ConfChangeKind.REMOVE:
            addresses[change.node_id] = None
            member_keys[change.node_id] = None

    def _register_keys(self, members: Sequence[MemberKey], registered: dict[str, bytes | None]) -> None:
        """A MembershipChanged entry records member keys that carry a valid
        proof of possession; the first key recorded for a node stands."""
        for member in members:
            if not member.public_key or registered.get(member.node_id) is not None:
                continue
            if member.node_id not in registered and self._storage.member_key(member.node_id) is not None:
                continue
            message = key_message(self._cluster_id, member.node_id, member.public_key)
            if verify(member.public_key, message, member.key_proof):
                registered[member.node_id] = member.public_key

    def member_key(self, node_id: str) -> bytes | None:
        return self._storage.member_key(node_id)

    def get_block(self, height: int) -> BlockData | None:
        raw = self._storage.get_block(height)
        if raw is None:
            return None
        return block_from_bytes(raw)

