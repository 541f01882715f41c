"""The live gateways, from the in-memory cluster and a fake clock: this
gateway is always live; another is live while its Info answers and stable
once live for a whole refresh; one that stops answering drops out."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from services.gateway import placement
from services.gateway.directory import Directory
from services.gateway.model import GatewayAddress
from services.gateway.ports import MemoryCluster

ME = GatewayAddress("g1", "127.0.0.1:17404", "127.0.0.1:17405")
G2 = GatewayAddress("g2", "127.0.0.1:17414", "127.0.0.1:17415")
G3 = GatewayAddress("g3", "127.0.0.1:17424", "127.0.0.1:17425")


@dataclass
class Seconds:
    now: float = 100.0

    def __call__(self) -> float:
        return self.now


def directory(cluster: MemoryCluster, clock: Seconds) -> tuple[Directory, list[int]]:
    changes: list[int] = []
    found = Directory(cluster, ME, refresh_s=2.0, clock=clock,
                      on_change=lambda: changes.append(1))  # fmt: skip
    return found, changes


@pytest.mark.asyncio
async def test_this_gateway_is_live_even_when_the_cluster_does_not_answer() -> None:
    cluster = MemoryCluster(members_down=True)
    found, _ = directory(cluster, Seconds())
    await found.refresh()
    assert found.live == {"g1": ME} and found.stable() == {"g1"}
    assert found.next_after_me("d1") is None and found.backup_http("d1") == ""


@pytest.mark.asyncio
async def test_a_gateway_is_live_when_it_answers_and_stable_after_a_refresh() -> None:
    clock = Seconds()
    cluster = MemoryCluster(gateways={G2.grpc_address: G2, ME.grpc_address: ME})
    found, changes = directory(cluster, clock)
    assert await found.refresh()
    assert set(found.live) == {"g1", "g2"} and found.stable() == {"g1"}
    clock.now += 2.0
    assert await found.refresh()  # g2 became stable: a change
    assert found.stable() == {"g1", "g2"}
    clock.now += 2.0
    assert not await found.refresh()
    assert len(changes) == 2


@pytest.mark.asyncio
async def test_a_gateway_whose_info_stops_answering_drops_out() -> None:
    clock = Seconds()
    cluster = MemoryCluster(gateways={G2.grpc_address: G2, G3.grpc_address: G3})
    found, _ = directory(cluster, clock)
    await found.refresh()
    cluster.silent.add(G2.grpc_address)
    clock.now += 2.0
    assert await found.refresh()
    assert set(found.live) == {"g1", "g3"} and found.stable() == {"g1", "g3"}
    cluster.silent.clear()  # back: live at once, stable only a refresh later
    clock.now += 2.0
    await found.refresh()
    assert "g2" in found.live and "g2" not in found.stable()


@pytest.mark.asyncio
async def test_the_known_gateways_are_still_probed_when_the_membership_is_unreadable() -> None:
    cluster = MemoryCluster(gateways={G2.grpc_address: G2})
    found, _ = directory(cluster, Seconds())
    await found.refresh()
    cluster.members_down = True
    await found.refresh()
    assert set(found.live) == {"g1", "g2"}


@pytest.mark.asyncio
async def test_devices_are_ranked_over_the_live_gateways() -> None:
    cluster = MemoryCluster(gateways={G2.grpc_address: G2, G3.grpc_address: G3})
    found, _ = directory(cluster, Seconds())
    await found.refresh()
    for device in ("a", "b", "c", "d"):
        ranked = [g.gateway_id for g in found.ranked(device)]
        assert ranked == placement.rank(device, ["g1", "g2", "g3"])
        assert found.primary(device).gateway_id == ranked[0]
        after_me = [g for g in ranked if g != "g1"][0]
        nxt = found.next_after_me(device)
        assert nxt is not None and nxt.gateway_id == after_me
        assert found.backup_http(device) == nxt.http_address
