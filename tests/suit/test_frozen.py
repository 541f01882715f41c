"""``frozen.slot_init``: the replaced ``__init__`` builds the same objects as
the dataclass's own, and the class stays frozen."""

from __future__ import annotations

import dataclasses

import pytest

from suit.errors import ErrorCode
from suit.frozen import slot_init
from suit.processor import Verdict


@dataclasses.dataclass(frozen=True, slots=True)
class Plain:
    a: int
    b: str
    c: tuple[int, ...] = ()
    d: object = None


@slot_init
@dataclasses.dataclass(frozen=True, slots=True)
class Fast:
    a: int
    b: str
    c: tuple[int, ...] = ()
    d: object = None


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [((1, "x"), {}), ((1, "x", (2,)), {}), ((1,), {"b": "y", "d": 5}), ((), {"a": 0, "b": ""})],
)
def test_same_fields_as_the_dataclass_init(args: tuple, kwargs: dict) -> None:
    fast, plain = Fast(*args, **kwargs), Plain(*args, **kwargs)
    assert dataclasses.astuple(fast) == dataclasses.astuple(plain)
    assert fast == Fast(*args, **kwargs) and hash(fast) == hash(Fast(*args, **kwargs))
    assert repr(fast).removeprefix("Fast") == repr(plain).removeprefix("Plain")


def test_arguments_are_checked_like_the_dataclass_init() -> None:
    with pytest.raises(TypeError):
        Fast(1)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        Fast(1, "x", (), None, 5)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        Fast(1, "x", e=2)  # type: ignore[call-arg]


def test_still_frozen() -> None:
    fast = Fast(1, "x")
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.a = 2  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        del fast.b  # type: ignore[misc]
    verdict = Verdict(True, ErrorCode.OK, "accepted")
    with pytest.raises(dataclasses.FrozenInstanceError):
        verdict.accepted = False  # type: ignore[misc]
    assert verdict.outcome is None and verdict.components == ()


def test_refuses_what_it_cannot_reproduce() -> None:
    @dataclasses.dataclass(frozen=True)
    class NoSlots:
        a: int

    @dataclasses.dataclass(frozen=True, slots=True)
    class Factory:
        a: list[int] = dataclasses.field(default_factory=list)

    @dataclasses.dataclass(frozen=True, slots=True)
    class PostInit:
        a: int

        def __post_init__(self) -> None:
            pass

    for cls in (NoSlots, Factory, PostInit):
        with pytest.raises(TypeError):
            slot_init(cls)
