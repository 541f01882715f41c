"""The trust-anchor bootstrap (``services/consensus/anchors.py``) against a
fake node: it waits for a leader, submits this node's anchors under the one
bootstrap key until the ledger holds anchors, sends the same bytes whatever
order the anchors were configured in, and says once when the ledger's
anchors are not this node's (the ledger's stand)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

import pytest

from services.consensus.anchors import BOOTSTRAP_KEY, bootstrap_anchors
from services.consensus.errors import AnchorsRefused, ConsensusError, IdempotencyKeyReused, NoLeader
from services.consensus.ledger.codec import decode_entry
from services.consensus.ledger.entries import Anchor, AnchorSet, Applied
from services.consensus.ledger.keys import RequestKey
from tests.support.releases import Publisher

A = Publisher.new(1).anchor(components=("fw",))
B = Publisher.new(2).anchor(classes=("board",))
C = Publisher.new(3).anchor()


@dataclass
class FakeReleases:
    recorded: list[Anchor] = field(default_factory=list)

    def anchors(self) -> list[Anchor]:
        return list(self.recorded)


@dataclass
class FakeMachine:
    releases: FakeReleases = field(default_factory=FakeReleases)


@dataclass
class FakeNode:
    """Applies a bootstrap entry as the ledger does (the first set stands),
    after ``failures`` (errors raised by the first submissions)."""

    leader_id: str = "n1"
    machine: FakeMachine = field(default_factory=FakeMachine)
    failures: list[ConsensusError] = field(default_factory=list)
    submitted: list[tuple[bytes, RequestKey, float]] = field(default_factory=list)

    async def submit(self, payload: bytes, key: RequestKey, timeout_s: float) -> Applied:
        self.submitted.append((payload, key, timeout_s))
        if self.failures:
            raise self.failures.pop(0)
        view = decode_entry(payload)
        assert view is not None and isinstance(view.body, AnchorSet)
        if not self.machine.releases.recorded:
            self.machine.releases.recorded = list(view.body.anchors)
        return Applied(key, 1, 1, False)


async def _run(node: FakeNode, anchors: list[Anchor]) -> None:
    await asyncio.wait_for(bootstrap_anchors(node, anchors, attempt_timeout_s=1.5, retry_s=0.001), 5)


@pytest.mark.asyncio
async def test_the_anchors_are_submitted_once_under_the_bootstrap_key_sorted_by_key_id() -> None:
    node = FakeNode()
    await _run(node, [C, A, B])
    [(payload, key, timeout_s)] = node.submitted
    assert key == BOOTSTRAP_KEY == RequestKey("cluster/trust-anchors", 1) and timeout_s == 1.5
    assert node.machine.releases.anchors() == sorted([A, B, C], key=lambda a: a.key_id)
    other = FakeNode()
    await _run(other, [B, C, A])
    assert other.submitted[0][0] == payload  # every node configured alike sends the same bytes


@pytest.mark.asyncio
async def test_nothing_is_submitted_before_a_leader_is_known_and_failures_are_retried() -> None:
    node = FakeNode(leader_id="", failures=[NoLeader("no leader"), NoLeader("still none")])
    task = asyncio.create_task(_run(node, [A]))
    await asyncio.sleep(0.05)
    assert node.submitted == [] and not task.done()
    node.leader_id = "n2"
    await task
    assert len(node.submitted) == 3 and node.machine.releases.anchors() == [A]


@pytest.mark.asyncio
async def test_a_ledger_with_anchors_gets_none_submitted() -> None:
    node = FakeNode(machine=FakeMachine(FakeReleases([A])))
    await _run(node, [A])
    assert node.submitted == []


@pytest.mark.asyncio
async def test_other_anchors_in_the_ledger_are_reported_once_and_stand(caplog: pytest.LogCaptureFixture) -> None:
    node = FakeNode(machine=FakeMachine(FakeReleases([B])))
    with caplog.at_level(logging.WARNING, logger="services.consensus.anchors"):
        await _run(node, [A])
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "differ from this node's configuration" in warning.getMessage()
    assert A.key_id in warning.getMessage() and B.key_id in warning.getMessage()
    assert node.submitted == [] and node.machine.releases.anchors() == [B]


@pytest.mark.asyncio
async def test_another_nodes_set_applied_first_is_reported(caplog: pytest.LogCaptureFixture) -> None:
    node = FakeNode(failures=[IdempotencyKeyReused("used for another entry")])

    async def other_node_wins() -> None:
        while not node.submitted:
            await asyncio.sleep(0.001)
        node.machine.releases.recorded = [C]

    with caplog.at_level(logging.WARNING, logger="services.consensus.anchors"):
        await asyncio.gather(_run(node, [A]), other_node_wins())
    assert node.machine.releases.anchors() == [C]
    assert sum(r.levelno == logging.WARNING for r in caplog.records) == 1


@pytest.mark.asyncio
async def test_a_refused_set_is_an_error_and_not_submitted_again(caplog: pytest.LogCaptureFixture) -> None:
    node = FakeNode(failures=[AnchorsRefused("an empty set of trust anchors")])
    with caplog.at_level(logging.ERROR, logger="services.consensus.anchors"):
        await _run(node, [A])
    assert len(node.submitted) == 1
    assert any("refused this node's trust anchors" in r.getMessage() for r in caplog.records)


@pytest.mark.asyncio
async def test_no_configured_anchors_means_no_bootstrap() -> None:
    node = FakeNode()
    await _run(node, [])
    assert node.submitted == []
