"""The gateway clock offset estimate, and the slots' state file: a round
trip through the versioned JSON format and an atomic write."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.clock import ClockOffset
from agent.errors import BadState
from agent.model import Kind, Report, ReportEvent, SlotContent, factory_state
from agent.slots import FileStateStore, SlotFiles


def test_the_offset_is_gateway_time_minus_the_midpoint() -> None:
    clock = ClockOffset()
    clock.observe(1_000, 1_020, 31_010)  # device 30 s behind, 20 ms round trip
    assert clock.offset_ms == 30_000
    assert clock.error_ms == 10


def test_the_lowest_round_trip_sample_wins() -> None:
    clock = ClockOffset()
    clock.observe(1_000, 1_400, 31_300)  # slow: offset 30_100 +- 200
    clock.observe(2_000, 2_004, 32_002)  # fast: offset 30_000 +- 2
    clock.observe(3_000, 3_300, 33_250)
    assert clock.offset_ms == 30_000


def test_old_samples_leave_the_window() -> None:
    clock = ClockOffset(window=2)
    clock.observe(0, 2, 501)  # offset 500, best round trip
    clock.observe(10, 20, 1_015)
    clock.observe(30, 40, 1_035)  # the best sample is gone
    assert clock.offset_ms == 1_000


def test_a_clock_that_stepped_back_gives_no_sample() -> None:
    clock = ClockOffset()
    clock.observe(1_000, 900, 5_000)
    assert not clock.known


@given(
    skew=st.integers(-60_000, 60_000),
    rtts=st.lists(st.tuples(st.integers(0, 500), st.integers(0, 500)), min_size=1, max_size=20),
)
def test_gateway_now_never_runs_ahead_of_the_gateway(skew: int, rtts: list[tuple[int, int]]) -> None:
    """Whatever the skew and however the round trip splits, the estimate of
    gateway time never exceeds the true one (a switch never comes early)."""
    clock = ClockOffset()
    true_gateway = 1_000_000
    for up, down in rtts:
        sent = true_gateway + skew
        clock.observe(sent, sent + up + down, true_gateway + up)
        true_gateway += up + down
        assert clock.gateway_now(true_gateway + skew) <= true_gateway
        assert clock.gateway_now(clock.local_at(true_gateway + 5)) >= true_gateway + 5


def test_the_state_file_round_trips(tmp_path: Path) -> None:
    store = FileStateStore(tmp_path)
    assert store.load() is None
    state = factory_state(("firmware", "bootloader"), 3)
    comp = state.component("firmware")
    assert comp is not None
    state = state.with_component(comp.with_slot("b", SlotContent("firmware@4", 4, "ab" * 32, 10, False)))
    event = ReportEvent(Kind.REFUSED, "firmware", "firmware@9", 9, 123, '{"step": "verify"}')
    state = replace(state, report_counter=7, unacked=(Report(7, (event,)),))
    store.save(state)
    assert store.load() == state
    assert json.loads((tmp_path / "state.json").read_text())["format"] == 1


def test_a_write_is_atomic_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    store = FileStateStore(tmp_path)
    store.save(factory_state(("firmware",)))
    first = (tmp_path / "state.json").read_bytes()
    (tmp_path / "state.json.tmp").write_bytes(b"half a write from a crash")  # a crash mid-write
    assert store.load() == factory_state(("firmware",))  # the old state is whole
    store.save(factory_state(("firmware",), 5))
    assert (tmp_path / "state.json").read_bytes() != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


@pytest.mark.parametrize("raw", [b"{}", b'{"format": 2}', b"not json", b'{"format": 1}'])
def test_a_state_file_of_another_format_is_refused(tmp_path: Path, raw: bytes) -> None:
    (tmp_path / "state.json").write_bytes(raw)
    with pytest.raises(BadState):
        FileStateStore(tmp_path).load()


def test_slot_paths_keep_component_names_inside_the_slot(tmp_path: Path) -> None:
    files = SlotFiles(tmp_path)
    path = files.path("a", "../../etc/passwd")
    assert path.parent == tmp_path / "slots" / "a"
    part = files.part_path("b", "fw", "cd" * 32)
    part.parent.mkdir(parents=True)
    part.write_bytes(b"x")
    other = files.part_path("b", "fw", "ef" * 32)
    other.write_bytes(b"y")
    files.clear_parts("b", "fw", keep=part)
    assert part.exists() and not other.exists()
    with pytest.raises(ValueError):
        files.path("c", "fw")
