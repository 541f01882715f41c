"""What the ledger machine needs from a node's disk (STYLE 4): a small
port, implemented by ``storage.NodeStorage`` (RocksDB or in memory). How
keys are laid out is the storage's business alone."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from .keys import RequestKey


class LedgerStore(Protocol):
    """The applied state of the ledger: blocks, request answers, member keys
    and addresses, block signatures."""

    def applied_index(self) -> int: ...

    def get_block(self, height: int) -> bytes | None: ...

    def last_block_height(self) -> int: ...

    def get_request(self, key: RequestKey) -> tuple[int, int] | None: ...

    def member_key(self, node_id: str) -> bytes | None: ...

    def addresses(self) -> dict[str, str]: ...

    def write_applied(
        self,
        applied: int,
        blocks: Sequence[tuple[int, bytes]],
        requests: Sequence[tuple[RequestKey, int, int]],
        member_keys: Sequence[tuple[str, bytes | None]] = (),
        addresses: Sequence[tuple[str, str | None]] = (),
    ) -> None: ...

    def put_signatures(self, items: Sequence[tuple[int, str, bytes]]) -> None: ...

    def signatures(self, height: int) -> list[tuple[str, bytes]]: ...

    def certified_height(self) -> int: ...

    def set_certified_height(self, height: int) -> None: ...
