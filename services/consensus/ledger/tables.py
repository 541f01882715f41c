"""Typed tables over a node's store (``LedgerStore.table_get/table_scan``),
shared by the release state and the device state: reads see the writes of
the entries applied before them in the same call, and those writes wait
aside until the ledger machine writes them in one batch with the blocks
(``take_writes``), or are dropped when a snapshot replaces the state
(``discard``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from .store import LedgerStore


class Tables:
    """Tables read from a node's store, with the writes of the entries being
    applied kept aside until the machine writes them with the blocks
    (``take_writes``), and visible to the entries after them in the same
    call."""

    def __init__(self, store: LedgerStore) -> None:
        self._store = store
        self._pending: dict[tuple[str, str], bytes | None] = {}

    def _get(self, table: str, key: str) -> bytes | None:
        pending = self._pending
        if (table, key) in pending:
            return pending[(table, key)]
        return self._store.table_get(table, key)

    def _scan(self, table: str) -> list[tuple[str, bytes]]:
        rows = dict(self._store.table_scan(table))
        for (t, key), value in self._pending.items():
            if t != table:
                continue
            if value is None:
                rows.pop(key, None)
            else:
                rows[key] = value
        return sorted(rows.items())

    def _digest(self, tables: Sequence[str]) -> str:
        h = hashlib.sha256()
        for table in tables:
            for key, raw in self._scan(table):
                h.update(f"{table}/{key}/{len(raw)}/".encode() + raw)
        return h.hexdigest()

    def take_writes(self) -> list[tuple[str, str, bytes | None]]:
        writes = [(table, key, value) for (table, key), value in self._pending.items()]
        self._pending = {}
        return writes

    def discard(self) -> None:
        self._pending = {}
