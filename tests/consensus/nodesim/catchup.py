"""A deterministic whole-node scenario: a wiped node catches up (issue 11:
the release state survives a wiped node's catch-up, identical on every
node).

Release entries (``releases.py``'s workload) and app entries come in over a
quiet network. Once some are applied everywhere, a follower goes down and
loses its data directory (its store and its snapshots; not its key). The
others go on, and compact their logs past everything it had. It comes back
the way the Synchronizer brings a wiped node back (``synchronizer.py``):
started as a learner of the other voters, it is removed from the
configuration and added again by the leader, which catches it up (from a
snapshot: the log it needs is compacted) and promotes it. Then every node
must hold the same chain, certified, and the release state the chain's
entries give (``ReleaseChecker.check_converged``, which also checks the
state the snapshot install left), and the wiped node must have come back
through a snapshot that carried release state.

The seed picks the delays, when the follower goes down, which one, and the
release script. The invariants (``invariants.py``) are checked throughout.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from services.consensus.errors import ConsensusError
from services.consensus.ledger.machine import encode_member_context
from services.consensus.raft.membership import ConfChange, ConfChangeKind
from services.consensus.raft.types import Role

from .outcomes import ScenarioFailure, stable_leader, wait_until
from .releases import ReleaseWorkload
from .scenario import SimCluster

WORKLOAD_S = 2.5  # virtual seconds of entries; the follower is away for most of them


async def _change(cluster: SimCluster, change: ConfChange, done: Callable[[tuple[str, ...], tuple[str, ...]], bool],
                  what: str) -> None:
    """Have the leader make ``change`` (retried across leader changes and
    pending changes) until its configuration is ``done``."""
    address = f"{change.node_id}:0" if change.kind is ConfChangeKind.ADD_LEARNER else ""
    deadline = cluster.loop.time() + 10.0
    while True:
        leader = next((n for n in cluster.net.nodes.values() if n.role is Role.LEADER), None)
        if leader is not None:
            if done(*leader.members()):
                return
            with contextlib.suppress(ConsensusError):  # not the leader any more, a change pending: again
                await leader.change_membership(change, address)
        if cluster.loop.time() > deadline:
            raise ScenarioFailure(f"not within 10 s: {what}")
        await asyncio.sleep(0.05)


async def wiped_follower_catches_up(cluster: SimCluster) -> None:
    loop, net, plan = cluster.loop, cluster.net, cluster.plan
    leader = await stable_leader(cluster)
    workload = cluster.workload = ReleaseWorkload(
        cluster.seed, plan.release_components, plan.release_ops, cluster.checker
    )
    end = loop.time() + WORKLOAD_S
    clients = [asyncio.create_task(workload.run(net.nodes, end)), asyncio.create_task(cluster.client("c0", end))]
    try:
        await asyncio.sleep(cluster.rng.uniform(0.3, 0.6))  # some releases applied everywhere first
        wiped = cluster.rng.choice(sorted(n for n in cluster.ids if n != leader))
        await cluster.crash(wiped)
        cluster.wipe(wiped)
        await asyncio.gather(*clients)
    finally:
        for task in clients:
            task.cancel()
    # Back as the Synchronizer brings it: a learner, removed, added again.
    cluster.start(wiped, join=True)
    await _change(cluster, ConfChange(ConfChangeKind.REMOVE, wiped), lambda v, lr: wiped not in v + lr,
                  f"{wiped} removed")
    await _change(cluster, ConfChange(ConfChangeKind.ADD_LEARNER, wiped, encode_member_context(f"{wiped}:0")),
                  lambda v, lr: wiped in v + lr, f"{wiped} added again")
    await wait_until(cluster, lambda: any(wiped in n.members()[0] for n in net.nodes.values() if n.role is Role.LEADER),
                10.0, f"{wiped} promoted to voter")
    await cluster.converge(loop.time() + plan.heal_bound_s, f"{wiped} rejoined")
    installs = [c for c in cluster.releases.checkpoints if c.node_id == wiped and c.why == "a snapshot install"]
    if not any(c.summary["anchors"] for c in installs):
        raise ScenarioFailure(f"{wiped} caught up without a snapshot carrying release state ({len(installs)} installed)")
