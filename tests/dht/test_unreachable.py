"""A peer unreachable for longer than a call's timeout is logged, once per
peer and interval: the tracker with a fake clock, then a node whose seed is
down."""

from __future__ import annotations

import logging
import random

import pytest
from prometheus_client import CollectorRegistry

from fleetsuit.unreachable import Unreachable
from services.dht.config import DhtConfig
from services.dht.errors import PeerUnavailable
from services.dht.kv import MemoryKeyValue
from services.dht.metrics import DhtMetrics
from services.dht.node import DhtNode
from services.dht.routing import Contact, node_id_from_name
from services.dht.store import BlobStore
from services.dht.transport import GrpcTransport


def test_a_peer_counts_as_unreachable_only_past_the_timeout() -> None:
    tracker = Unreachable(after_s=2.0)
    assert tracker.failed("a", now=0.0) is None  # one failure is common
    assert tracker.failed("a", now=2.0) is None  # not longer than the timeout yet
    assert tracker.failed("a", now=2.5) == pytest.approx(2.5)
    assert tracker.failed("a", now=9.0) == pytest.approx(9.0)


def test_an_answer_starts_the_count_again() -> None:
    tracker = Unreachable(after_s=2.0)
    tracker.failed("a", now=0.0)
    tracker.answered("a")
    assert tracker.failed("a", now=10.0) is None
    assert tracker.failed("a", now=12.5) == pytest.approx(2.5)
    tracker.answered("never failed")  # harmless


def test_the_tracker_is_bounded() -> None:
    tracker = Unreachable(after_s=1.0, max_peers=3)
    for i in range(10):
        tracker.failed(f"peer-{i}", now=0.0)
    assert len(tracker) <= 3


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class DownTransport(GrpcTransport):
    """Every peer is down."""

    async def ping(self, address: str) -> Contact:
        raise PeerUnavailable("UNAVAILABLE: connection refused")


@pytest.mark.asyncio
async def test_a_seed_down_longer_than_the_call_timeout_is_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    seed = "127.0.0.1:9"
    config = DhtConfig(node_id="lone", seeds=(seed,), rpc_timeout_ms=2_000).validate()
    contact = Contact(node_id_from_name("lone"), "127.0.0.1:8")
    node = DhtNode(
        config,
        contact,
        BlobStore(MemoryKeyValue(), 1 << 20),
        DownTransport(contact, 1, 1),
        DhtMetrics(CollectorRegistry()),
        random.Random(1),
        clock=clock,
    )

    def unreachable_lines() -> list[str]:
        return [r.getMessage() for r in caplog.records if "unreachable for" in r.getMessage()]

    try:
        with caplog.at_level(logging.WARNING, logger="fleetsuit.dht.node"):
            await node.bootstrap()
            clock.now = 1.5
            await node.bootstrap()
            assert unreachable_lines() == []  # within the call timeout: not news
            clock.now = 3.0
            await node.bootstrap()
            assert unreachable_lines() == [
                "peer 127.0.0.1:9 unreachable for 3.0 s (call timeout 2.0 s): "
                "UNAVAILABLE: connection refused"
            ]
            clock.now = 4.0
            await node.bootstrap()
            assert len(unreachable_lines()) == 1  # rate limited per peer
    finally:
        await node.close()
