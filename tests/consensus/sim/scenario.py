"""One seeded simulation run: a chaos phase, then healing and a liveness check.

Chaos: clients keep proposing on random nodes while the network drops,
delays, duplicates and reorders messages, partitions come and go (random
splits, an isolated leader, three-way splits), nodes crash (also in the middle
of handling a Ready) and restart, and the leader is sometimes asked to hand
over. Meanwhile nodes compact their logs at random applied indexes (so lagging
nodes need InstallSnapshot), the membership changes (a new server is added as
a learner and promoted by the leader once caught up; voters, learners and the
leader itself are removed), and clients issue ReadIndex reads. Then every
fault stops: the network heals and quiets, every server restarts (from its
snapshot and log; removed servers too, which must not disrupt the others),
and a new proposal must commit on every member within a bound.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from services.consensus.raft.membership import ConfChange, ConfChangeKind

from .cluster import BEFORE_APPLY, BEFORE_SAVE, Cluster


@dataclass(frozen=True)
class Plan:
    size: int
    chaos_ticks: int = 300
    heal_ticks: int = 400  # liveness bound once faults stop
    crash_rate: float = 0.01  # per tick
    restart_rate: float = 0.04  # per crashed node and tick
    partition_rate: float = 0.02
    heal_rate: float = 0.03
    transfer_rate: float = 0.004
    submit_rate: float = 0.35
    max_pending: int = 4
    compact_rate: float = 0.05  # per tick: one random node snapshots
    conf_change_rate: float = 0.015
    max_members: int = 7
    read_rate: float = 0.15
    max_reads: int = 2
    lease_reads: bool = False  # reads from the leader lease instead of ReadIndex rounds


class LivenessFailure(AssertionError):
    pass


def run(seed: int, plan: Plan) -> Cluster:
    rng = random.Random(seed)
    cluster = Cluster(
        plan.size,
        rng.getrandbits(64),
        heartbeat_ticks=rng.choice((1, 2, 3)),
        max_entries_per_append=rng.choice((1, 3, 16)),
        max_inflight_appends=rng.choice((1, 2, 8)),
        lease_reads=plan.lease_reads,
        # Half the seeds send every append at once (no Nagle hold); a bit of
        # the seed, not a draw, so the rest of each seed's scenario is unchanged.
        hold_small_appends=not seed & 4,
    )
    net = cluster.network
    net.drop_rate = rng.choice((0.0, 0.02, 0.1, 0.25))
    net.duplicate_rate = rng.choice((0.0, 0.05, 0.2))
    net.max_delay = rng.choice((1, 2, 4))
    ids = list(cluster.nodes)

    for _ in range(plan.chaos_ticks):
        _inject_faults(cluster, rng, plan, ids)
        if len(cluster.pending) < plan.max_pending and rng.random() < plan.submit_rate:
            cluster.submit()
        if len(cluster.reads) < plan.max_reads and rng.random() < plan.read_rate:
            cluster.read()
        if rng.random() < plan.compact_rate:
            live = cluster.live()
            if live:
                cluster.compact(rng.choice(live).node_id)
        if rng.random() < plan.conf_change_rate:
            _change_membership(cluster, rng, plan)
        cluster.expire_reads()
        cluster.tick()

    _heal(cluster, plan, restart_all=rng.random() < 0.5)
    return cluster


def _inject_faults(cluster: Cluster, rng: random.Random, plan: Plan, ids: list[str]) -> None:
    net = cluster.network
    if rng.random() < plan.crash_rate:
        live = cluster.live()
        if live:
            victim = rng.choice(live)
            if rng.random() < 0.5:
                cluster.crash(victim.node_id)
            else:
                victim.crash_at = rng.randint(BEFORE_SAVE, BEFORE_APPLY)
    for node in cluster.nodes.values():
        if node.raft is None and rng.random() < plan.restart_rate:
            cluster.start(node.node_id)
    if rng.random() < plan.partition_rate:
        kind = rng.randrange(3)
        leader = cluster.leader()
        if kind == 0 and leader is not None:
            net.partition([[leader.node_id]])
        elif kind == 1:
            shuffled = rng.sample(ids, len(ids))
            net.partition([shuffled[: rng.randint(1, len(ids) - 1)]])
        else:
            groups: list[list[str]] = [[], [], []]
            for n in ids:
                groups[rng.randrange(3)].append(n)
            net.partition(groups)
    elif rng.random() < plan.heal_rate:
        net.heal()
    if rng.random() < plan.transfer_rate:
        leader = cluster.leader()
        if leader is not None and leader.raft is not None:
            leader.raft.transfer_leadership(rng.choice(ids))


def _change_membership(cluster: Cluster, rng: random.Random, plan: Plan) -> None:
    leader = cluster.leader()
    if leader is None or leader.raft is None:
        return
    voters, learners = leader.raft.voters, leader.raft.learners
    if rng.random() < 0.5:
        if len(voters | learners) < plan.max_members:
            nid = f"n{len(cluster.nodes) + 1}"
            cluster.change_membership(ConfChange(ConfChangeKind.ADD_LEARNER, nid))
        return
    # Keep at least three voters, so a crash or partition can still be survived.
    removable = sorted(learners | (voters if len(voters) > 3 else frozenset()))
    if not removable:
        return
    target = rng.choice(removable)
    if len(voters) > 3 and rng.random() < 0.3:
        target = leader.node_id  # the leader removes itself and steps down
    cluster.change_membership(ConfChange(ConfChangeKind.REMOVE, target))


def _heal(cluster: Cluster, plan: Plan, *, restart_all: bool) -> None:
    cluster.network.heal()
    cluster.network.quiet()
    for node in cluster.nodes.values():
        node.crash_at = None
        if restart_all and node.raft is not None:
            cluster.crash(node.node_id)
        if node.raft is None:
            cluster.start(node.node_id)
    probe = cluster.submit()
    for _ in range(plan.heal_ticks):
        cluster.tick()
        if probe not in cluster.acked:
            continue
        # Every member must also catch up with entries acknowledged after the probe.
        index = max(cluster.acked.values())
        members = cluster.members
        if all(cluster.checker.applied_index(n) >= index for n in members):
            for n in members:
                cluster.checker.check_all_acknowledged_applied(n)
            return
    leader = cluster.leader()
    raise LivenessFailure(
        f"no progress {plan.heal_ticks} ticks after faults stopped: leader="
        f"{leader.node_id if leader else None}, pending={len(cluster.pending)}, "
        f"applied={ {n: cluster.checker.applied_index(n) for n in cluster.nodes} }, "
        f"members={sorted(cluster.members)}"
    )
