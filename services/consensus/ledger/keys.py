"""The idempotency key of a ledger submission, owned by the ledger: the
one type every layer uses (the runtime's waiting table, the ledger
machine's request table, the API). How it is stored is the storage's
business (``storage/layout.py``)."""

from __future__ import annotations

from typing import NamedTuple

from .block import leaf_hash


class RequestKey(NamedTuple):
    """Identifies one client request: a retry carries the same key, and the
    ledger applies it at most once. (A named tuple: made, hashed and
    compared once or more per submission, which a frozen dataclass does
    several times slower.)"""

    client_id: str
    request_id: int


DIGEST_BYTES = 16


def entry_digest(payload: bytes) -> bytes:
    """The fingerprint of an encoded ledger entry: the first 16 bytes of its
    Merkle leaf hash (``block.leaf_hash``, SHA-256 of 0x00 | entry), which
    the ledger machine computes for the block anyway. Stored with the
    entry's answer, so a key reused for other content is told apart from a
    retry of the same entry."""
    return leaf_hash(payload)[:DIGEST_BYTES]
