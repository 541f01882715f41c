"""The reference for ``suit.cbor.decode``: a separate scan of
the heads (iterative, no values built), then cbor2 builds the value.

This was the library's decoder before the single-pass one replaced it; it is
slower but simple, so the property test in ``test_cbor.py`` holds the fast
decoder to it. Test-only.
"""

from __future__ import annotations

from typing import Any

import cbor2

from suit.cbor import ALLOWED_TAGS, Budget
from suit.errors import DecodeError, ErrorCode, LimitExceeded
from suit.limits import Limits

_MIN_FOR_AI = {24: 24, 25: 0x100, 26: 0x10000, 27: 0x100000000}


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
    scan(data, limits, budget, depth_base)
    try:
        return cbor2.loads(data)
    except Exception as exc:  # cbor2 reports bad UTF-8 etc. with several types
        raise DecodeError(f"undecodable CBOR: {exc}") from None
