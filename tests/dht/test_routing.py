"""Kademlia routing core: unit rules and a ≥100-node simulation."""

from __future__ import annotations

import math
import random
import statistics
from collections import Counter

import pytest

from services.dht.routing import (
    Contact,
    Lookup,
    NodeId,
    RoutingTable,
    bucket_index,
    distance,
    node_id_from_name,
)
from tests.dht.sim import build


def _id(value: int) -> NodeId:
    return NodeId(value.to_bytes(32, "big"))


def _contact(value: int) -> Contact:
    return Contact(_id(value), f"h:{value}")


def test_distance_is_xor_and_symmetric() -> None:
    a, b = node_id_from_name("a"), node_id_from_name("b")
    assert distance(a, b) == distance(b, a) > 0
    assert distance(a, a) == 0


def test_bucket_index_is_highest_differing_bit() -> None:
    assert bucket_index(_id(0), _id(1)) == 0
    assert bucket_index(_id(0), _id(2)) == 1
    assert bucket_index(_id(0), _id(1 << 255)) == 255
    with pytest.raises(ValueError):
        bucket_index(_id(5), _id(5))


def test_full_bucket_asks_to_ping_least_recently_seen() -> None:
    table = RoutingTable(_contact(0), k=2)
    # 4, 5, 6, 7 all share bucket 2 relative to id 0
    assert table.observe(_contact(4)) is None
    assert table.observe(_contact(5)) is None
    assert table.observe(_contact(6)) == _contact(4)  # §2.2: ping the oldest
    assert _id(6) not in table
    table.observe(_contact(4))  # it answered: it moves to the tail, 6 stays a replacement
    assert table.observe(_contact(7)) == _contact(5)


def test_dead_contact_is_evicted_and_replaced() -> None:
    table = RoutingTable(_contact(0), k=2, max_failures=2)
    for v in (4, 5, 6):
        table.observe(_contact(v))
    assert not table.record_failure(_id(4))
    assert table.record_failure(_id(4))
    assert _id(4) not in table
    assert _id(6) in table  # the replacement cache fills the slot (§4.1)


def test_answer_resets_failure_count() -> None:
    table = RoutingTable(_contact(0), k=2, max_failures=2)
    table.observe(_contact(4))
    table.record_failure(_id(4))
    table.observe(_contact(4))
    assert not table.record_failure(_id(4))
    assert _id(4) in table


def test_closest_orders_by_xor() -> None:
    table = RoutingTable(_contact(0), k=20)
    for v in (1, 2, 3, 8, 9, 16):
        table.observe(_contact(v))
    assert [c.node_id for c in table.closest(_id(9), 3)] == [_id(9), _id(8), _id(1)]


def test_lookup_respects_alpha_and_terminates() -> None:
    seeds = [_contact(v) for v in (1, 2, 3, 4, 5)]
    lookup = Lookup(_id(0), seeds, _id(100), k=3, alpha=2)
    first = lookup.next_queries()
    assert len(first) == 2
    assert lookup.next_queries() == []  # alpha in flight already
    for c in first:
        lookup.on_response(c, [])
    second = lookup.next_queries()
    assert len(second) == 1  # only the k=3 closest are ever queried
    lookup.on_failure(second[0])
    rest = lookup.next_queries()
    for c in rest:
        lookup.on_response(c, [])
    assert lookup.done
    assert _id(3) not in [c.node_id for c in lookup.result()]


@pytest.mark.parametrize("seed", [1, 2])
def test_lookups_find_the_k_closest_among_100_nodes(seed: int) -> None:
    net = build(120, seed)
    rng = random.Random(seed + 1000)
    origins = list(net.tables.values())
    for _ in range(60):
        target = rng.randbytes(32)
        origin = rng.choice(origins).self_contact
        found = net.lookup(origin, target)
        want = [n for n in net.true_closest(target, 4) if n != origin.node_id][:3]
        assert [c.node_id for c in found.result()[:3]] == want, f"seed={seed}"


def test_lookups_skip_dead_nodes() -> None:
    net = build(120, 7)
    rng = random.Random(8)
    ids = list(net.tables)
    net.down.update(rng.sample(ids, 20))
    live = [n for n in ids if n not in net.down]
    for _ in range(40):
        target = rng.randbytes(32)
        origin = net.tables[rng.choice(live)].self_contact
        found = [c.node_id for c in net.lookup(origin, target).result()[:3]]
        want = [n for n in net.true_closest(target, 4) if n != origin.node_id][:3]
        assert found == want
        assert not set(found) & net.down


def test_hop_count_grows_like_log_n() -> None:
    means: dict[int, float] = {}
    for n in (32, 128, 512):
        net = build(n, seed=n)
        rng = random.Random(n + 1)
        origins = list(net.tables.values())
        hops = [
            net.lookup(rng.choice(origins).self_contact, rng.randbytes(32)).hops for _ in range(200)
        ]
        means[n] = statistics.mean(hops)
        dist = dict(sorted(Counter(hops).items()))
        print(f"n={n:4d} log2(n)={math.log2(n):4.1f} mean hops={means[n]:.2f} distribution={dist}")
        assert max(hops) <= 2 * math.log2(n)
    # 16x more nodes: hops grow by an additive amount, not a factor of 16
    assert means[512] - means[32] <= 0.75 * (math.log2(512) - math.log2(32))
    assert means[512] >= means[32]
