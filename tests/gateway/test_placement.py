"""Rendezvous placement (issue 12 §2): even load, minimal movement when a
gateway joins or leaves, and the same answer for every caller."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.gateway.placement import primary_and_backup, rank

DEVICES = [f"device-{i:05d}" for i in range(10_000)]
gateway_ids = st.lists(st.text(min_size=1, max_size=12), min_size=0, max_size=8)


@given(st.text(max_size=20), gateway_ids)
@settings(max_examples=200, deadline=None)
def test_rank_is_a_permutation_of_the_gateways(device_id: str, gateways: list[str]) -> None:
    ranked = rank(device_id, gateways)
    assert sorted(ranked) == sorted(set(gateways))


@given(st.text(max_size=20), gateway_ids, st.randoms(use_true_random=False))
@settings(max_examples=200, deadline=None)
def test_rank_does_not_depend_on_the_order_the_gateways_come_in(
    device_id: str, gateways: list[str], rnd: random.Random
) -> None:
    shuffled = list(gateways)
    rnd.shuffle(shuffled)
    assert rank(device_id, shuffled) == rank(device_id, gateways)


@given(st.text(max_size=20), gateway_ids)
@settings(max_examples=200, deadline=None)
def test_primary_and_backup_are_the_first_two_and_distinct(
    device_id: str, gateways: list[str]
) -> None:
    primary, backup = primary_and_backup(device_id, gateways)
    ranked = rank(device_id, gateways)
    assert primary == (ranked[0] if ranked else None)
    assert backup == (ranked[1] if len(ranked) > 1 else None)
    if backup is not None:
        assert primary != backup


@pytest.mark.parametrize(
    ("gateways", "expected"),
    [([], (None, None)), (["g1"], ("g1", None)), (["g1", "g1"], ("g1", None))],
)
def test_too_few_gateways(gateways: list[str], expected: tuple[str | None, str | None]) -> None:
    assert primary_and_backup("d", gateways) == expected


@pytest.mark.parametrize("count", [3, 5])
def test_load_spreads_within_five_percent_of_even(count: int) -> None:
    gateways = [f"node-{i}" for i in range(count)]
    primaries = Counter(primary_and_backup(d, gateways)[0] for d in DEVICES)
    backups = Counter(primary_and_backup(d, gateways)[1] for d in DEVICES)
    even = len(DEVICES) / count
    assert set(primaries) == set(gateways)
    for g in gateways:
        assert abs(primaries[g] - even) <= 0.05 * even, (g, primaries)
        assert abs(backups[g] - even) <= 0.05 * even, (g, backups)


@pytest.mark.parametrize("removed", ["node-0", "node-2", "node-4"])
def test_a_removed_gateway_moves_only_its_devices_each_to_its_former_backup(removed: str) -> None:
    before_gateways = [f"node-{i}" for i in range(5)]
    after_gateways = [g for g in before_gateways if g != removed]
    for d in DEVICES:
        primary, backup = primary_and_backup(d, before_gateways)
        new_primary, _ = primary_and_backup(d, after_gateways)
        if primary == removed:
            assert new_primary == backup
        else:
            assert new_primary == primary


@pytest.mark.parametrize("count", [3, 5])
def test_an_added_gateway_takes_about_one_nth_of_the_devices_and_only_it_gains(count: int) -> None:
    before_gateways = [f"node-{i}" for i in range(count)]
    after_gateways = [*before_gateways, "node-new"]
    moved = 0
    for d in DEVICES:
        primary, _ = primary_and_backup(d, before_gateways)
        new_primary, _ = primary_and_backup(d, after_gateways)
        if new_primary != primary:
            assert new_primary == "node-new"
            moved += 1
    share = len(DEVICES) / (count + 1)
    assert abs(moved - share) <= 0.05 * share, moved


def test_the_ranking_is_pinned() -> None:
    # Known answers: changing the hash would move devices between gateways
    # during a rolling upgrade, where old and new gateways must agree.
    assert rank("device-00000", ["node-0", "node-1", "node-2"]) == ["node-2", "node-1", "node-0"]
    assert rank("device-00001", iter(["node-2", "node-1", "node-0"])) == [
        "node-1", "node-0", "node-2",
    ]
