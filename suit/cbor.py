"""Bounded CBOR decoding for untrusted SUIT envelopes.

``decode`` is a single-pass decoder written for hostile input: it reads each
head, checks it and builds the value in the same step, so every byte of one
bstr-wrapped level is looked at once. It rejects truncated or trailing data,
declared lengths larger than the bytes present (checked before anything is
allocated, so nothing huge ever is), nesting deeper than the limit, more items
than the envelope's budget, indefinite lengths and non-shortest heads
(draft-ietf-suit-manifest §8.1 requires canonical CBOR), duplicate map keys (a
"last key wins" decoder would validate one manifest and run another;
SPEC_NOTES §9; keys that differ in bytes but compare equal once decoded, such
as 1 and 1.0, count as duplicates too) and tags outside the small set SUIT
uses. Values are plain lists, dicts and ``CBORTag`` objects, also inside
tags (where cbor2 builds tuples and frozendicts); map keys that are arrays or
maps become tuples and ``frozendict`` as with cbor2. Nested bstr-wrapped
CBOR is left as bytes: each level is decoded once, when a caller asks for it,
against the same item budget. This module knows nothing about SUIT semantics.
"""

from __future__ import annotations

import struct
from typing import Any

import cbor2
from cbor2 import CBORSimpleValue, CBORTag, frozendict, undefined

from .errors import DecodeError, ErrorCode, LimitExceeded
from .limits import Limits

# COSE_Mac0 17, COSE_Sign1 18, COSE_Encrypt 96, COSE_Mac 97, COSE_Sign 98,
# SUIT envelope 107 / manifest 1070 (§11 suggested tags), OID 111, PEN 112.
ALLOWED_TAGS = frozenset({17, 18, 96, 97, 98, 107, 111, 112, 1070})

# The smallest value each 1/2/4/8-byte argument may carry (RFC 8949 §4.2.1).
_MIN_ARGUMENT = (24, 0x100, 0x10000, 0x100000000)
_SIMPLE: dict[int, Any] = {20: False, 21: True, 22: None, 23: undefined}
_FLOAT = (struct.Struct(">e"), struct.Struct(">f"), struct.Struct(">d"))
_NOT_ONE_BYTE = object()
# Items whose whole encoding is their head byte and whose value is immutable:
# small uints and nints, false, true, null, undefined, empty bstr and tstr.
# Containers read these inline instead of calling ``_item`` (most of a command
# sequence is small integers).
_ONE_BYTE: list[Any] = [_NOT_ONE_BYTE] * 256
for _ai in range(24):
    _ONE_BYTE[_ai] = _ai
    _ONE_BYTE[0x20 | _ai] = -1 - _ai
_ONE_BYTE[0x40] = b""
_ONE_BYTE[0x60] = ""
for _ai, _value in _SIMPLE.items():
    _ONE_BYTE[0xE0 | _ai] = _value


class Budget:
    """Items left for one envelope, shared by every nested (bstr-wrapped) decode."""

    __slots__ = ("items_left",)

    def __init__(self, items: int) -> None:
        self.items_left = items

    def spend(self, items: int) -> None:
        self.items_left -= items
        if self.items_left < 0:
            raise LimitExceeded("too many CBOR items in the envelope")


# The per-call state of one ``decode`` is a two-slot list, [items read, first
# deferred error]: a list costs a third of a slotted object to make, and a
# validation makes one per bstr-wrapped level.


def _truncated() -> DecodeError:
    return DecodeError("truncated CBOR item")


def _hashable(value: Any) -> Any:
    """A decoded map key in cbor2's immutable shape (arrays as tuples)."""
    if isinstance(value, list):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, dict):
        return frozendict({k: _hashable(v) for k, v in value.items()})
    if isinstance(value, CBORTag):
        return CBORTag(value.tag, _hashable(value.value))
    return value


def _item(data: bytes, pos: int, depth_left: int, state: list[Any]) -> tuple[Any, int]:
    """The item starting at ``pos`` and the position after it.

    Recursion is bounded by ``depth_left`` (checked before each container
    opens), lengths by the bytes present (checked before each slice or loop).
    Containers read one-byte items and short byte strings (most of a SUIT
    envelope: code points, digests, signatures, wrapped levels) inline; every
    other item, and every malformed one, goes through a recursive call.
    """
    ib = data[pos]  # IndexError: truncated, mapped by ``decode``
    pos += 1
    n = len(data)
    ai = ib & 0x1F
    major = ib >> 5
    if ai < 24:
        val = ai
    elif ai < 28:
        end = pos + (1 << (ai - 24))
        if end > n:
            raise _truncated()
        if major == 7:
            if ai == 24:
                val = data[pos]
                if val < 32:
                    raise DecodeError("invalid simple value encoding")
                return CBORSimpleValue(val), end
            return _FLOAT[ai - 25].unpack_from(data, pos)[0], end
        val = data[pos] if ai == 24 else int.from_bytes(data[pos:end], "big")
        if val < _MIN_ARGUMENT[ai - 24]:
            raise DecodeError("non-shortest CBOR head", ErrorCode.NON_CANONICAL)
        pos = end
    elif ai == 31:
        if 2 <= major <= 5:
            raise DecodeError("indefinite-length item", ErrorCode.NON_CANONICAL)
        raise DecodeError("invalid indefinite-length or break item")
    else:
        raise DecodeError("reserved additional information value")
    if major == 4:
        if val > n - pos:
            raise _truncated()
        if not val:
            return [], pos
        if depth_left <= 0:
            raise LimitExceeded("nesting too deep")
        depth_left -= 1
        state[0] += val
        out: list[Any] = []
        append = out.append
        for _ in range(val):
            head = data[pos]
            item = _ONE_BYTE[head]
            if item is not _NOT_ONE_BYTE:
                pos += 1
            elif 0x41 <= head <= 0x57:  # bstr, length in the head
                end = pos + head - 0x3F
                if end > n:
                    raise _truncated()
                item = data[pos + 1 : end]
                pos = end
            elif head == 0x58 and pos + 1 < n and data[pos + 1] >= 24:  # bstr, 1-byte length
                end = pos + 2 + data[pos + 1]
                if end > n:
                    raise _truncated()
                item = data[pos + 2 : end]
                pos = end
            else:
                item, pos = _item(data, pos, depth_left, state)
            append(item)
        return out, pos
    if major == 5:
        if 2 * val > n - pos:
            raise _truncated()
        if not val:
            return {}, pos
        if depth_left <= 0:
            raise LimitExceeded("nesting too deep")
        depth_left -= 1
        state[0] += 2 * val
        mapping: dict[Any, Any] = {}
        seen: set[bytes] | None = None
        for _ in range(val):
            start = pos
            key = _ONE_BYTE[data[pos]]
            if key is _NOT_ONE_BYTE:
                key, pos = _item(data, pos, depth_left, state)
            else:
                pos += 1
            kind = type(key)
            if kind is int or kind is str or kind is bytes:
                # Canonical heads: equal values of these types have equal bytes.
                if key in mapping:
                    raise DecodeError("duplicate map key", ErrorCode.DUPLICATE_KEY)
            else:
                # Other keys (floats, NaN among them) are compared as bytes.
                key_bytes = data[start:pos]
                if seen is None:
                    seen = set()
                elif key_bytes in seen:
                    raise DecodeError("duplicate map key", ErrorCode.DUPLICATE_KEY)
                seen.add(key_bytes)
                if kind is list or kind is dict or kind is CBORTag:
                    key = _hashable(key)
            head = data[pos]
            value = _ONE_BYTE[head]
            if value is not _NOT_ONE_BYTE:
                pos += 1
            elif 0x41 <= head <= 0x57:  # bstr, length in the head
                end = pos + head - 0x3F
                if end > n:
                    raise _truncated()
                value = data[pos + 1 : end]
                pos = end
            elif head == 0x58 and pos + 1 < n and data[pos + 1] >= 24:  # bstr, 1-byte length
                end = pos + 2 + data[pos + 1]
                if end > n:
                    raise _truncated()
                value = data[pos + 2 : end]
                pos = end
            else:
                value, pos = _item(data, pos, depth_left, state)
            mapping[key] = value
        if len(mapping) != val:
            raise DecodeError("map keys that decode equal", ErrorCode.DUPLICATE_KEY)
        return mapping, pos
    if major == 2:
        end = pos + val
        if end > n:
            raise _truncated()
        return data[pos:end], end
    if major == 0:
        return val, pos
    if major == 3:
        end = pos + val
        if end > n:
            raise _truncated()
        try:
            return data[pos:end].decode("utf-8"), end
        except UnicodeDecodeError:
            # Reported after the pass, so a structural fault found later wins,
            # as it did when a scan ran before a separate decoder.
            if state[1] is None:
                state[1] = DecodeError("undecodable CBOR: invalid UTF-8 in a text string")
            return "", end
    if major == 1:
        return -1 - val, pos
    if major == 6:
        if val not in ALLOWED_TAGS:
            raise DecodeError(f"CBOR tag {val} is not used by SUIT")
        if depth_left <= 0:
            raise LimitExceeded("nesting too deep")
        state[0] += 1
        inner, pos = _item(data, pos, depth_left - 1, state)
        return CBORTag(val, inner), pos
    # major 7 with a one-byte head
    if val in _SIMPLE:
        return _SIMPLE[val], pos
    return CBORSimpleValue(val), pos


def decode(data: bytes, limits: Limits, budget: Budget, depth_base: int = 0) -> Any:
    """The value of ``data``, which must be exactly one bounded, canonical item.

    ``depth_base`` is the nesting already used by the bstr-wrapped levels
    around ``data``; its items are charged to ``budget``.
    """
    depth_left = limits.max_depth - depth_base
    if depth_left <= 0:
        raise LimitExceeded("nesting too deep")
    if type(data) is not bytes:
        data = bytes(data)
    state: list[Any] = [1, None]  # the top item, and the items inside containers
    try:
        value, pos = _item(data, 0, depth_left, state)
    except IndexError:
        raise _truncated() from None
    except RecursionError:  # only with a max_depth near the interpreter's own limit
        raise LimitExceeded("nesting too deep") from None
    if pos != len(data):
        raise DecodeError("trailing bytes after CBOR item")
    budget.items_left -= state[0]  # ``Budget.spend`` inlined: once per level
    if budget.items_left < 0:
        raise LimitExceeded("too many CBOR items in the envelope")
    if state[1] is not None:
        raise state[1]
    return value


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
