"""The ports of the consensus runtime (STYLE 4): what it needs from the
network and the disk, as small Protocols. Production implements them with
gRPC (``transport.py``), RocksDB (``storage.NodeStorage`` on
``RocksKeyValue``) and snapshot files (``storage.FileSnapshotStore``); the
whole-node simulation with a fake network, ``NodeStorage.in_memory`` and
files in a temporary directory. The runtime never tests which one it has.
"""

from __future__ import annotations

from collections.abc import (
    AsyncIterable,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from typing import Any, Protocol

from ..ledger.entries import BlockSignature
from ..ledger.store import LedgerStore
from ..raft.types import Entry, HardState, Message, SnapshotMeta

# Runs a blocking call (a sync, a file read) off the event loop:
# asyncio.to_thread in production, inline in the simulation.
Offload = Callable[..., Awaitable[Any]]


class PeerTransport(Protocol):
    """Best-effort delivery to the other members; nothing here blocks."""

    def set_peers(self, peers: Mapping[str, str]) -> None:
        """The members to talk to (node id -> address), this node excluded."""
        ...

    def send(self, messages: Sequence[Message]) -> None: ...

    async def send_snapshot(self, node_id: str, chunks: AsyncIterable[Message]) -> bool:
        """Stream one snapshot's chunks; True once the peer has stored it all."""
        ...

    def share_signatures(self, signatures: Sequence[BlockSignature]) -> None:
        """Push this node's block signatures to every peer."""
        ...

    async def fetch_signatures(self, first: int, last: int) -> list[BlockSignature]:
        """Ask the peers for the signatures they hold for heights first..last."""
        ...


class LogStore(Protocol):
    """The Raft log and hard state (Figure 2's persistent state)."""

    def load(self) -> tuple[HardState, list[Entry]]: ...

    def needs_sync(self, hard_state: HardState | None, entries: Sequence[Entry]) -> bool: ...

    def save(self, hard_state: HardState | None, entries: Sequence[Entry]) -> None:
        """Store a Ready's hard state and entries as one batch, synced when
        ``needs_sync`` says so (the group commit)."""
        ...

    def compact_log(self, meta: SnapshotMeta) -> None: ...

    def compacted(self) -> SnapshotMeta | None: ...

    def sync(self) -> None: ...


class StateStore(Protocol):
    """Reading and replacing the applied state as a whole (snapshots)."""

    def state_view(self) -> Any: ...

    def state_records(self, view: Any) -> Iterator[tuple[bytes, bytes]]: ...

    def install_snapshot(self, meta: SnapshotMeta, records: Iterable[tuple[bytes, bytes]]) -> None: ...


class NodeStore(LogStore, LedgerStore, StateStore, Protocol):
    """Everything a consensus node keeps on its disk."""


class SnapshotStore(Protocol):
    """Complete snapshot files, and one being received."""

    def latest(self, max_index: int | None = None) -> SnapshotMeta | None: ...

    def has(self, meta: SnapshotMeta) -> bool: ...

    def size_of(self, meta: SnapshotMeta) -> int: ...

    def save(self, meta: SnapshotMeta, records: Iterable[tuple[bytes, bytes]]) -> int: ...

    def read_chunk(self, meta: SnapshotMeta, offset: int, size: int) -> bytes: ...

    def receive(self, meta: SnapshotMeta, offset: int, data: bytes, done: bool) -> bool: ...

    def install_into(
        self, meta: SnapshotMeta, install: Callable[[SnapshotMeta, Iterable[tuple[bytes, bytes]]], None]
    ) -> None: ...

    def prune(self, keep: Callable[[int], bool]) -> None: ...
