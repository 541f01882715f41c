"""What the ledger machine needs from a node's disk (STYLE 4): a small
port, implemented by ``storage.NodeStorage`` (RocksDB or in memory). How
keys are laid out is the storage's business alone."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from .entries import Applied
from .keys import RequestKey


class LedgerStore(Protocol):
    """The applied state of the ledger: blocks, request answers, member keys
    and addresses, block signatures, and the release state's tables (named
    records of bytes, ``releases.py``)."""

    def applied_index(self) -> int: ...

    def get_block(self, height: int) -> bytes | None: ...

    def last_block_height(self) -> int: ...

    def get_request(self, key: RequestKey) -> Applied | None: ...

    def table_get(self, table: str, key: str) -> bytes | None: ...

    def table_scan(self, table: str) -> list[tuple[str, bytes]]: ...

    def member_key(self, node_id: str) -> bytes | None: ...

    def addresses(self) -> dict[str, str]: ...

    def write_applied(
        self,
        applied: int,
        blocks: Sequence[tuple[int, bytes]],
        requests: Sequence[Applied],
        member_keys: Sequence[tuple[str, bytes | None]] = (),
        addresses: Sequence[tuple[str, str | None]] = (),
        tables: Sequence[tuple[str, str, bytes | None]] = (),
    ) -> None: ...

    def put_signatures(self, items: Sequence[tuple[int, str, bytes]]) -> None: ...

    def signatures(self, height: int) -> list[tuple[str, bytes]]: ...

    def certified_height(self) -> int: ...

    def set_certified_height(self, height: int) -> None: ...
