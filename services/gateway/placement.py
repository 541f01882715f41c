"""Which gateways serve a device: rendezvous (highest-random-weight) hashing.

Owns issue 12 §2 ("each device gets a primary and a backup by rendezvous
hashing, so load is even and moves minimally when a gateway joins or
leaves"). Every gateway scores SHA-256(gateway_id NUL device_id) for a
device; the device's gateways are ranked by score, highest first. Because a
score depends on that pair only:

- removing a gateway moves only the devices it was primary for, each to its
  former backup (the next in its ranking);
- adding one moves only the devices for which the newcomer outscores their
  primary, about 1/n of them, all to the newcomer.

Pure: which gateways are live (the cluster's membership) and where they
listen is the gateway runtime's business.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable


def score(gateway_id: str, device_id: str) -> int:
    """The gateway's weight for the device: the first 8 bytes (big-endian)
    of SHA-256(gateway_id NUL device_id)."""
    digest = hashlib.sha256(f"{gateway_id}\0{device_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def rank(device_id: str, gateway_ids: Iterable[str]) -> list[str]:
    """The distinct gateways, the device's primary first; equal scores (never
    seen in practice) go to the smaller gateway id so every caller agrees."""
    return sorted(set(gateway_ids), key=lambda g: (-score(g, device_id), g))


def primary_and_backup(
    device_id: str, gateway_ids: Iterable[str]
) -> tuple[str | None, str | None]:
    """The device's primary and backup gateway (distinct); None where there
    are too few gateways."""
    ranked = rank(device_id, gateway_ids)
    return (
        ranked[0] if ranked else None,
        ranked[1] if len(ranked) > 1 else None,
    )
