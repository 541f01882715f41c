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

from ..raft.membership import ConfChange, ConfChangeKind, ConfigDecodeError, decode_config
from ..raft.types import Entry, EntryType
from .block import GENESIS_HASH, BlockData, leaf_hash, make_block
from .certify import key_message, verify
from .codec import block_from_bytes, block_to_bytes, decode_batch, decode_entry
from .devices import DeviceState
from .entries import Applied, DeviceEvents, Enrollment, MemberKey
from .keys import DIGEST_BYTES, RequestKey
from .releases import ReleaseState
from .store import LedgerStore

__all__ = ["Applied", "LedgerMachine", "decode_member_context", "encode_member_context"]

KEY_REUSED = "IDEMPOTENCY_KEY_REUSED"
# In ``apply``: a key of the block being made (its answer comes with the block).
_PENDING = Applied(None, 0, 0, False)


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
        self.releases = ReleaseState(storage)
        self.devices = DeviceState(storage, self.releases)
        self.reload()

    def reload(self) -> None:
        """Read the applied state again (after a snapshot was installed)."""
        self.releases.discard()
        self.devices.discard()
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
        computes each request key and digest once, for the lookup and the
        write.

        A keyed entry whose key was applied before is left out of its block:
        with the same digest it is a retry (answered with the first
        application), with another digest a reuse of the key for other
        content (answered IDEMPOTENCY_KEY_REUSED). A release entry is applied
        to the release state, a device entry to the device state; either may
        refuse it: it stays in the block, and its answer carries the
        refusal."""
        results: list[Applied] = []
        blocks: list[tuple[int, bytes]] = []
        new_blocks: list[BlockData] = []
        requests: list[Applied] = []
        member_keys: dict[str, bytes | None] = {}
        addresses: dict[str, str | None] = {}
        changes: list[ConfChange] = []
        seen_now: dict[RequestKey, Applied] = {}  # answers of this call (height 0: block not made yet)
        lookup = self._storage.get_request
        decode = decode_entry
        leaf = leaf_hash
        releases = self.releases
        devices = self.devices
        for entry in entries:
            if entry.index <= self._applied:
                continue  # already applied before a restart
            self._applied = entry.index
            if entry.type == EntryType.CONFIG:
                self._apply_config(entry, addresses, member_keys, changes)
                continue
            if entry.type != EntryType.NORMAL:
                continue
            index = entry.index
            height = self._height + 1
            included: list[bytes] = []
            leaves: list[bytes] = []
            # This block's answers, made once the block is: (key, position, digest, outcome, message, entry).
            answers: list[tuple[RequestKey | None, int, bytes, str, str, bytes]] = []
            again: list[tuple[RequestKey, bytes]] = []  # repeats of this block's own keys, with their digest
            for payload in decode_batch(entry.data):
                hashed = leaf(payload)
                view = decode(payload)
                if view is None:
                    # Not a ledger entry: kept as it is, the log ordered it.
                    answers.append((None, len(included), b"", "", "", payload))
                    included.append(payload)
                    leaves.append(hashed)
                    continue
                key = view.key
                digest = b""
                if key is not None:
                    digest = hashed[:DIGEST_BYTES]
                    earlier = seen_now.get(key) or lookup(key)
                    if earlier is not None:
                        if earlier.block_height == 0:
                            again.append((key, digest))  # its height is known once the block is
                        else:
                            results.append(_repeat(earlier, digest))
                        continue
                position = len(included)
                outcome, message = "", ""
                body = view.body
                if isinstance(body, DeviceEvents | Enrollment):
                    outcome, message = devices.apply(body, index, height, position, view.kind or "")
                elif body is not None:
                    outcome, message = releases.apply(body, index, height, position, view.kind or "")
                if key is not None:
                    seen_now[key] = _PENDING
                answers.append((key, position, digest, outcome, message, payload))
                included.append(payload)
                leaves.append(hashed)
                if view.members:
                    self._register_keys(view.members, member_keys)
            if not included:
                continue
            block = make_block(height, self._head_hash, index, index, entry.term, included, leaves)
            self._height = height
            self._head_hash = block.hash
            blocks.append((height, block_to_bytes(block)))
            new_blocks.append(block)
            for key, position, digest, outcome, message, payload in answers:
                answer = Applied(key, index, height, False, position, digest, outcome, message, payload)
                results.append(answer)
                if key is not None:
                    seen_now[key] = answer
                    requests.append(answer)
            for key, digest in again:
                results.append(_repeat(seen_now[key], digest))
        self._storage.write_applied(
            self._applied, blocks, requests, list(member_keys.items()), list(addresses.items()),
            releases.take_writes() + devices.take_writes(),
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



def _repeat(earlier: Applied, digest: bytes) -> Applied:
    """The answer to an entry whose key was applied before: the first
    application's, or a key-reuse refusal when the content differs."""
    if earlier.digest and digest != earlier.digest:
        return earlier._replace(
            duplicate=True, digest=earlier.digest, outcome=KEY_REUSED,
            message=f"the key {earlier.key.client_id}/{earlier.key.request_id} was used for another entry "  # type: ignore[union-attr]
            f"(index {earlier.index}, block {earlier.block_height})",
        )
    return earlier._replace(duplicate=True)
