"""Deterministic whole-node scenarios about what a failed submission's
answer promises (issue 11: idempotency that cannot lose work).

- ``forwarded_then_cut``: a follower forwards a submission to the leader and
  is cut off from everyone the moment the proposal reaches it; the leader
  commits the entry. The follower cannot know that: its answer at the
  deadline must be OUTCOME_UNKNOWN (not definite), never NO_LEADER, which
  would tell the client the entry never left the node. After healing, a
  resubmission with the same key at any node answers ``duplicate`` with the
  one application.
- ``never_proposed``: a follower cut off until it knows no leader takes a
  submission it can hand to no one: its answer is a definite NO_LEADER, and
  the entry indeed never commits; resubmitted after healing it is applied
  for the first time.

The network drops, delays and duplicates nothing here beyond its seeded
delays: the seed picks the delays and the follower. The invariants
(``invariants.py``) are checked throughout, as in the chaos runs.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from fleetsuit.v1 import consensus_pb2 as pb
from services.consensus.errors import ConsensusError, NoLeader, OutcomeUnknown
from services.consensus.ledger.codec import decode_batch, decode_entry
from services.consensus.ledger.keys import RequestKey, entry_digest
from services.consensus.ledger.machine import Applied
from services.consensus.raft.types import Message, MessageType, Role
from services.consensus.runtime import ConsensusNode

from .invariants import InvariantViolation
from .scenario import Plan, SimCluster
from .vloop import VirtualTimeLoop

KEY = RequestKey("outcome-client", 1)
PAYLOAD = pb.LedgerEntry(
    client_id=KEY.client_id, request_id=KEY.request_id, app=pb.AppEntry(payload=b"exactly once")
).SerializeToString()
SUBMIT_TIMEOUT_S = 1.0


class ScenarioFailure(AssertionError):
    pass


async def wait_until(cluster: SimCluster, ready: Callable[[], bool], within_s: float, what: str) -> None:
    """Wait on a condition with a deadline (virtual time)."""
    deadline = cluster.loop.time() + within_s
    while not ready():
        if cluster.loop.time() > deadline:
            raise ScenarioFailure(f"not within {within_s} s: {what}")
        await asyncio.sleep(0.01)


async def stable_leader(cluster: SimCluster) -> str:
    """Every node follows one leader."""
    nodes = cluster.net.nodes

    def agreed() -> bool:
        leaders = {node.leader_id for node in nodes.values()}
        return len(leaders) == 1 and "" not in leaders and nodes[next(iter(leaders))].role is Role.LEADER

    await wait_until(cluster, agreed, 10.0, "a leader every node follows")
    return next(iter(nodes.values())).leader_id


def _carries(msg: Message, payload: bytes) -> bool:
    return any(payload in decode_batch(proposal) for proposal in msg.proposals)


def _copies(node: ConsensusNode, key: RequestKey) -> list[tuple[int, int]]:
    """Where ``key`` is in ``node``'s chain: (height, position) of each copy."""
    out = []
    for height in range(1, node.machine.height + 1):
        block = node.machine.get_block(height)
        assert block is not None
        for position, payload in enumerate(block.entries):
            view = decode_entry(payload)
            if view is not None and view.key == key:
                out.append((height, position))
    return out


async def _converged(cluster: SimCluster) -> None:
    nodes = cluster.net.nodes

    def same() -> bool:
        return len({n.machine.height for n in nodes.values()}) == 1 and len({n.leader_id for n in nodes.values()}) == 1

    await wait_until(cluster, same, 10.0, "every node at the same height after healing")


async def _resubmit_everywhere(cluster: SimCluster) -> list[Applied]:
    answers = []
    for node_id in cluster.ids:
        answer = await cluster.net.nodes[node_id].submit(PAYLOAD, KEY, SUBMIT_TIMEOUT_S)
        cluster.checker.acknowledged(answer, entry_digest(PAYLOAD))
        answers.append(answer)
    return answers


async def forwarded_then_cut(cluster: SimCluster) -> None:
    net = cluster.net
    leader = await stable_leader(cluster)
    followers = sorted(n for n in cluster.ids if n != leader)
    follower = cluster.rng.choice(followers)
    cut_at: list[float] = []

    def probe(msg: Message) -> None:
        if not cut_at and msg.type is MessageType.PROPOSE and msg.src == follower and _carries(msg, PAYLOAD):
            # The proposal reached the leader: nothing of what follows
            # reaches the follower.
            net.partition([[follower], [n for n in cluster.ids if n != follower]])
            cut_at.append(cluster.loop.time())

    net.probe = probe
    try:
        await net.nodes[follower].submit(PAYLOAD, KEY, SUBMIT_TIMEOUT_S)
    except ConsensusError as exc:
        answer: ConsensusError = exc
    else:
        raise ScenarioFailure(f"{follower} answered a submission it was cut off from")
    if not cut_at:
        raise ScenarioFailure(f"{follower} never forwarded the submission to {leader}")
    if type(answer) is not OutcomeUnknown or answer.definite:
        raise ScenarioFailure(
            f"{follower}, cut off after forwarding, answered {answer.code} (definite={answer.definite}): "
            f"{answer}; the entry may have committed, so the answer must be OUTCOME_UNKNOWN"
        )
    await wait_until(cluster, lambda: net.nodes[leader].submissions.known(KEY), 5.0, f"{leader} applies the entry")
    if net.nodes[follower].submissions.known(KEY):
        raise ScenarioFailure(f"{follower} learnt of the commit while cut off")
    net.probe = None
    net.heal()
    await _converged(cluster)
    answers = await _resubmit_everywhere(cluster)
    if not all(a.duplicate for a in answers):
        raise ScenarioFailure(f"a resubmission was applied again: {answers}")
    if len({(a.index, a.block_height, a.position) for a in answers}) != 1:
        raise ScenarioFailure(f"the nodes answer different applications: {answers}")
    for node_id, node in net.nodes.items():
        copies = _copies(node, KEY)
        if copies != [(answers[0].block_height, answers[0].position)]:
            raise ScenarioFailure(f"{node_id} holds the entry at {copies}, not once where answered")


async def never_proposed(cluster: SimCluster) -> None:
    net = cluster.net
    leader = await stable_leader(cluster)
    follower = cluster.rng.choice(sorted(n for n in cluster.ids if n != leader))
    left: list[Message] = []

    def probe(msg: Message) -> None:
        if msg.type is MessageType.PROPOSE and _carries(msg, PAYLOAD):
            left.append(msg)

    net.probe = probe
    net.partition([[follower], [n for n in cluster.ids if n != follower]])
    await wait_until(cluster, lambda: net.nodes[follower].leader_id == "", 5.0, f"{follower} knows no leader")
    try:
        await net.nodes[follower].submit(PAYLOAD, KEY, SUBMIT_TIMEOUT_S)
    except ConsensusError as exc:
        answer: ConsensusError = exc
    else:
        raise ScenarioFailure(f"{follower} answered a submission while knowing no leader")
    if type(answer) is not NoLeader or not answer.definite:
        raise ScenarioFailure(
            f"{follower} never proposed the entry, yet answered {answer.code} (definite={answer.definite})"
        )
    net.heal()
    await _converged(cluster)
    await asyncio.sleep(3 * SUBMIT_TIMEOUT_S)  # time for a stray copy to commit, were there one
    if left or any(node.submissions.known(KEY) or _copies(node, KEY) for node in net.nodes.values()):
        raise ScenarioFailure(f"a definite NO_LEADER, yet the entry left {follower} or was applied")
    net.probe = None
    first = await net.nodes[leader].submit(PAYLOAD, KEY, SUBMIT_TIMEOUT_S)
    cluster.checker.acknowledged(first, entry_digest(PAYLOAD))
    if first.duplicate:
        raise ScenarioFailure("the entry answered NO_LEADER had been applied before")
    # (A node that has not applied it yet would answer with its own first
    # application, duplicate=False: a retry is asked once every node has.)
    await wait_until(cluster, lambda: all(n.submissions.known(KEY) for n in net.nodes.values()), 5.0,
                 "every node applies the entry")
    answers = await _resubmit_everywhere(cluster)
    if not all(a.duplicate and (a.index, a.position) == (first.index, first.position) for a in answers):
        raise ScenarioFailure(f"resubmissions do not answer the one application {first}: {answers}")


Scenario = Callable[[SimCluster], Coroutine[Any, Any, None]]


async def _run(seed: int, scenario: Scenario, workdir: Path) -> None:
    cluster = SimCluster(seed, Plan(size=3), workdir)
    for node_id in cluster.ids:
        cluster.start(node_id)
    checking = asyncio.create_task(cluster.checking())
    try:
        await scenario(cluster)
        cluster.checker.check(cluster.net.nodes)
        if checking.done():
            checking.result()  # an invariant broken in the background
    finally:
        checking.cancel()
        await cluster.stop_all()


def run(seed: int, scenario: Scenario) -> None:
    """Run ``scenario`` on a fresh virtual-time loop; raises
    ScenarioFailure or InvariantViolation on a failure."""
    loop = VirtualTimeLoop()
    try:
        with tempfile.TemporaryDirectory(prefix="fleetsuit-nodesim-") as tmp:
            loop.run_until_complete(_run(seed, scenario, Path(tmp)))
    finally:
        loop.close()


__all__ = [
    "InvariantViolation", "ScenarioFailure", "forwarded_then_cut", "never_proposed", "run", "stable_leader", "wait_until",
]
