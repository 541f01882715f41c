"""Bounded CBOR decoding for untrusted SUIT envelopes.

``scan`` walks the header bytes of one CBOR item iteratively, before any
value is built, and rejects: truncated or trailing data, declared lengths
larger than the bytes present (so nothing huge is ever allocated), nesting
deeper than the limit, more items than the budget, indefinite lengths and
non-shortest heads (draft-ietf-suit-manifest §8.1 requires canonical CBOR),
duplicate map keys (a "last key wins" decoder would validate one manifest and
run another; SPEC_NOTES §9) and tags outside the small set SUIT uses (this
also keeps cbor2's value-sharing tags 28/29 out). Only then does cbor2 build
the value. This module knows nothing about SUIT semantics.
"""

from __future__ import annotations

from typing import Any

import cbor2

from .errors import DecodeError, ErrorCode, LimitExceeded
from .limits import Limits

# COSE_Mac0 17, COSE_Sign1 18, COSE_Encrypt 96, COSE_Mac 97, COSE_Sign 98,
# SUIT envelope 107 / manifest 1070 (§11 suggested tags), OID 111, PEN 112.
ALLOWED_TAGS = frozenset({17, 18, 96, 97, 98, 107, 111, 112, 1070})

_MIN_FOR_AI = {24: 24, 25: 0x100, 26: 0x10000, 27: 0x100000000}


class Budget:
    """Items left for one envelope, shared by every nested (bstr-wrapped) decode."""

    __slots__ = ("items_left",)

    def __init__(self, items: int) -> None:
        self.items_left = items

    def spend(self, items: int) -> None:
        self.items_left -= items
        if self.items_left < 0:
            raise LimitExceeded("too many CBOR items in the envelope")


def _truncated() -> DecodeError:
    return DecodeError("truncated CBOR item")


def scan(data: bytes, limits: Limits, budget: Budget, depth_base: int = 0) -> None:
    """Check that ``data`` is exactly one bounded, canonical CBOR item.

    Iterative (no recursion) and allocation-free apart from one small frame
    per open container and the keys of open maps.
    """
    n = len(data)
    max_depth = limits.max_depth - depth_base
    if max_depth <= 0:
        raise LimitExceeded("nesting too deep")
    pos = 0
    items = 0
    # Frames: [items remaining, keys seen (maps) or None, start of the container].
    stack: list[list[Any]] = []
    try:
        while True:
            start = pos
            ib = data[pos]
            items += 1
            ai = ib & 0x1F
            major = ib >> 5
            if ai < 24:
                val = ai
                pos += 1
            elif ai < 28:
                end = pos + 1 + (1 << (ai - 24))
                if end > n:
                    raise _truncated()
                val = int.from_bytes(data[pos + 1 : end], "big")
                pos = end
                if major != 7:
                    if val < _MIN_FOR_AI[ai]:
                        raise DecodeError("non-shortest CBOR head", ErrorCode.NON_CANONICAL)
                elif ai == 24 and val < 32:
                    raise DecodeError("invalid simple value encoding")
            elif ai == 31:
                if 2 <= major <= 5:
                    raise DecodeError("indefinite-length item", ErrorCode.NON_CANONICAL)
                raise DecodeError("invalid indefinite-length or break item")
            else:
                raise DecodeError("reserved additional information value")
            if major == 2 or major == 3:
                if val > n - pos:
                    raise _truncated()
                pos += val
            elif major == 4 or major == 5:
                count = val if major == 4 else 2 * val
                if count > n - pos:
                    raise _truncated()
                if count:
                    if len(stack) >= max_depth:
                        raise LimitExceeded("nesting too deep")
                    stack.append([count, set() if major == 5 else None, start])
                    continue
            elif major == 6:
                if val not in ALLOWED_TAGS:
                    raise DecodeError(f"CBOR tag {val} is not used by SUIT")
                if len(stack) >= max_depth:
                    raise LimitExceeded("nesting too deep")
                stack.append([1, None, start])
                continue
            # The item [start, pos) is complete: close every container it finishes.
            while stack:
                top = stack[-1]
                remaining = top[0]
                keys = top[1]
                if keys is not None and not remaining & 1:
                    key = data[start:pos]
                    if key in keys:
                        raise DecodeError("duplicate map key", ErrorCode.DUPLICATE_KEY)
                    keys.add(key)
                remaining -= 1
                if remaining:
                    top[0] = remaining
                    break
                stack.pop()
                start = top[2]
            if not stack:
                break
    except IndexError:
        raise _truncated() from None
    if pos != n:
        raise DecodeError("trailing bytes after CBOR item")
    budget.spend(items)


def decode(data: bytes, limits: Limits, budget: Budget, depth_base: int = 0) -> Any:
    """Scan ``data`` within the limits, then build its value with cbor2."""
    scan(data, limits, budget, depth_base)
    try:
        return cbor2.loads(data)
    except Exception as exc:  # cbor2 reports bad UTF-8 etc. with several types
        raise DecodeError(f"undecodable CBOR: {exc}") from None


def dumps(value: Any) -> bytes:
    """Deterministic encoding (§8.1) for values this library builds."""
    return cbor2.dumps(value, canonical=True)


def encode_head(major: int, value: int) -> bytes:
    """The shortest CBOR head for ``major`` and ``value``."""
    if value < 24:
        return bytes([(major << 5) | value])
    for ai, width in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if value < (1 << (8 * width)):
            return bytes([(major << 5) | ai]) + value.to_bytes(width, "big")
    raise ValueError("value too large for a CBOR head")


def wrap_bstr(content: bytes) -> bytes:
    """``content`` as a complete CBOR byte string item (header included)."""
    return encode_head(2, len(content)) + content
