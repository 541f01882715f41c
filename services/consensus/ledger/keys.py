"""The idempotency key of a ledger submission, owned by the ledger: the
one type every layer uses (the runtime's waiting table, the ledger
machine's request table, the API). How it is stored is the storage's
business (``storage/layout.py``)."""

from __future__ import annotations

from typing import NamedTuple


class RequestKey(NamedTuple):
    """Identifies one client request: a retry carries the same key, and the
    ledger applies it at most once. (A named tuple: made, hashed and
    compared once or more per submission, which a frozen dataclass does
    several times slower.)"""

    client_id: str
    request_id: int
