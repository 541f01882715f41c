"""The single-pass bounded decoder against its reference (a head scan, then
cbor2): same value or same error code on random bytes, on every bstr-wrapped
level of the vectors, and on those levels mutated. The one intended
difference: map keys with different bytes that decode equal (1 and 1.0, true
and 1) are duplicates for the fast decoder, where cbor2 kept the last."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from cbor2 import CBORTag
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from suit import cbor
from suit.errors import ErrorCode, SuitError
from suit.limits import Limits

from . import reference_cbor
from .conftest import VECTORS

LIMITS = Limits(max_depth=6, max_items=64)


def _levels(data: bytes) -> list[bytes]:
    """Every bstr in ``data`` that is itself CBOR, recursively (the wrapped levels)."""
    out = [data]
    try:
        value = reference_cbor.decode(data, Limits(), cbor.Budget(10**6))
    except SuitError:
        return out
    stack: list[Any] = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, bytes) and v:
            out.extend(_levels(v) if v[0] >> 5 in (4, 5, 6) else [])
        elif isinstance(v, list | tuple):
            stack.extend(v)
        elif isinstance(v, Mapping):  # cbor2 gives frozendicts inside tags
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, CBORTag):
            stack.append(v.value)
    return out


LEVELS = sorted({lvl for p in VECTORS.glob("*.cbor") for lvl in _levels(p.read_bytes())})


def _plain(value: Any) -> Any:
    """cbor2 builds tuples and frozendicts inside tags, the fast decoder lists and dicts."""
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, CBORTag):
        return CBORTag(value.tag, _plain(value.value))
    return value


def _outcome(decode: Any, data: bytes, limits: Limits) -> tuple[str, Any]:
    budget = cbor.Budget(limits.max_items)
    try:
        return "ok", _plain(decode(data, limits, budget, 0))
    except SuitError as exc:
        return "error", exc.code


def _agree(data: bytes, limits: Limits = LIMITS) -> None:
    fast = _outcome(cbor.decode, data, limits)
    ref = _outcome(reference_cbor.decode, data, limits)
    if fast == ("error", ErrorCode.DUPLICATE_KEY) and ref[0] == "ok":
        return  # keys equal once decoded: see the module docstring
    assert fast == ref, data.hex()


def test_vectors_have_many_levels() -> None:
    assert len(LEVELS) > 50


@pytest.mark.parametrize("limits", [Limits(), LIMITS], ids=["default", "tight"])
def test_every_vector_level_agrees(limits: Limits) -> None:
    for level in LEVELS:
        _agree(level, limits)


def test_keys_equal_after_decoding_are_duplicates() -> None:
    # {1, 1}, {1, true}, {1.0, 1}, {[1, 1], [1, 1]}, {NaN, NaN}
    for hexdata in ("a201000101", "a20100f501", "a2f93c000101", "a28201010082010101",
                    "a2f97e0000f97e0001"):
        outcome = _outcome(cbor.decode, bytes.fromhex(hexdata), Limits())
        assert outcome == ("error", ErrorCode.DUPLICATE_KEY), hexdata


_SETTINGS = settings(
    max_examples=1500,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)


@_SETTINGS
@given(st.binary(max_size=64))
def test_random_bytes_agree(data: bytes) -> None:
    _agree(data)


@_SETTINGS
@given(st.sampled_from(LEVELS), st.data())
def test_mutated_levels_agree(level: bytes, draw: st.DataObject) -> None:
    data = bytearray(level)
    for _ in range(draw.draw(st.integers(1, 3))):
        pos = draw.draw(st.integers(0, len(data) - 1))
        data[pos] = draw.draw(st.integers(0, 255))
    _agree(bytes(data), Limits())
    _agree(bytes(data))
