"""The idempotency key of a ledger submission, owned by the ledger: the
one type every layer uses (the runtime's waiting table, the ledger
machine's request table, the API). How it is stored is the storage's
business (``storage/layout.py``)."""

from __future__ import annotations

import hashlib
from typing import NamedTuple


class RequestKey(NamedTuple):
    """Identifies one client request: a retry carries the same key, and the
    ledger applies it at most once. (A named tuple: made, hashed and
    compared once or more per submission, which a frozen dataclass does
    several times slower.)"""

    client_id: str
    request_id: int


DIGEST_BYTES = 16


def entry_digest(payload: bytes) -> bytes:
    """The fingerprint of an encoded ledger entry (SHA-256, first 16 bytes):
    stored with its request answer, so a key reused for other content is
    told apart from a retry of the same entry."""
    return hashlib.sha256(payload).digest()[:DIGEST_BYTES]
