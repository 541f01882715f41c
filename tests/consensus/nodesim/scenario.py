"""One seeded run of whole consensus nodes: a chaos phase, then healing and
a convergence bound.

Chaos: clients submit ledger entries to random nodes (and retry, with the
same key, on another node when an answer does not come): app entries, and
release entries (``releases.py``: trust anchors, releases of a few
components, some of which must be refused on apply, revocations, rollout
pauses, resumptions and halts), while the network
drops, delays and duplicates messages, partitions come and go, nodes crash
(in the middle of whatever their loop was doing) and restart from what they
had stored. Nodes compact their logs every few dozen entries, so a node that
was away comes back through a snapshot. Every node signs its blocks and
gathers certificates. Then the faults stop: every node is restarted, the
network heals, and within a bound every node must hold the same chain with
every acknowledged entry in it and every block certified, and every node
must hold the release state the chain's entries give (as must every node
right after each restart and each snapshot install), the one the release
rules say. The invariants (``invariants.py``) are checked every few virtual
milliseconds throughout.
"""

from __future__ import annotations

import asyncio
import random
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fleetsuit.v1 import consensus_pb2 as pb
from services.consensus.errors import ConsensusError
from services.consensus.ledger.certify import NodeKey
from services.consensus.ledger.keys import RequestKey, entry_digest
from services.consensus.metrics import ConsensusMetrics
from services.consensus.raft.types import RaftConfig, SnapshotMeta
from services.consensus.runtime import ConsensusNode, RuntimeConfig
from services.consensus.storage import FileSnapshotStore, NodeStorage
from services.consensus.storage.kv import MemoryKeyValue

from .invariants import InvariantViolation, LedgerChecker
from .network import SimNetwork, SimTransport
from .release_checks import ReleaseChecker
from .releases import ReleaseWorkload
from .vloop import VirtualTimeLoop

CLUSTER = "sim"


@dataclass(frozen=True)
class Plan:
    size: int = 3
    chaos_s: float = 4.0
    heal_bound_s: float = 20.0  # convergence bound once faults stop
    clients: int = 3
    check_every_s: float = 0.02
    fault_every_s: float = 0.25
    crash_rate: float = 0.08  # per fault step
    restart_rate: float = 0.3  # per crashed node and fault step
    partition_rate: float = 0.1
    heal_rate: float = 0.25
    drop_rate: float = 0.05
    dup_rate: float = 0.02
    compact_every_entries: int = 20
    compact_keep_entries: int = 4
    release_components: tuple[str, ...] = ("fw-a", "fw-b")  # one release client each
    release_ops: int = 12  # entries per component client (a publish signs an envelope: ~0.2 ms)


class ConvergenceFailure(AssertionError):
    pass


async def _inline(fn: object, *args: object) -> object:
    return fn(*args)  # type: ignore[operator]


@dataclass
class Stats:
    crashes: int = 0
    snapshots_installed: int = 0
    acknowledged: int = 0
    height: int = 0
    outcome_unknown: int = 0  # answers OUTCOME_UNKNOWN (the entry may have committed)
    given_up: int = 0  # keys whose every attempt failed definitely (checked never to apply)
    release_acknowledged: int = 0  # release entries answered (applied or refused)
    release_refused: int = 0  # of those, refused on apply
    release_outcomes: dict[str, int] = field(default_factory=dict)  # answers by outcome ("" applied)
    release_envelopes: int = 0  # signed envelopes built
    release_resubmitted: int = 0  # release entries the chaos left unanswered, submitted again after healing
    releases: int = 0  # releases in the final state
    devices: int = 0  # devices enrolled in the final state
    device_outcomes: int = 0  # devices' outcomes counted for releases in the final state
    release_checkpoints: int = 0  # states after a restart or a snapshot install checked against the chain
    snapshots_with_releases: int = 0  # snapshot installs that brought release state


class SimStorage(NodeStorage):
    """A node's in-memory storage that tells the simulation when a snapshot
    was installed into it (what the install left is then read back), and
    knows whose it is (a test injects a bug into one node's ledger by it)."""

    node_id = ""
    on_install: Callable[[NodeStorage, int], None] | None = None

    def install_snapshot(self, meta: SnapshotMeta, records: Iterable[tuple[bytes, bytes]]) -> None:
        super().install_snapshot(meta, records)
        if self.on_install is not None:
            self.on_install(self, meta.index)


class SimCluster:
    def __init__(self, seed: int, plan: Plan, workdir: Path) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.plan = plan
        self.loop = asyncio.get_running_loop()
        self.net = SimNetwork(self.loop, random.Random(self.rng.getrandbits(64)))
        self.ids = tuple(f"n{i + 1}" for i in range(plan.size))
        self.checker = LedgerChecker(CLUSTER, self.ids)
        self._workdir = workdir
        self._kv = {n: MemoryKeyValue() for n in self.ids}
        self._snapshot_dirs = {n: workdir / n for n in self.ids}
        self._keys = {n: NodeKey(Ed25519PrivateKey.from_private_bytes(self.rng.randbytes(32))) for n in self.ids}
        self._metrics: dict[str, ConsensusMetrics] = {}
        self.stats = Stats()
        self.releases = ReleaseChecker()
        self.workload: ReleaseWorkload | None = None  # the chaos runs start one
        self.config = RuntimeConfig(
            RaftConfig(node_id="", peers=self.ids, election_ticks=10, heartbeat_ticks=2),
            cluster_id=CLUSTER,
            tick_s=0.025,
            compact_every_entries=plan.compact_every_entries,
            compact_keep_entries=plan.compact_keep_entries,
            snapshot_chunk_bytes=4096,
        )

    def start(self, node_id: str, *, join: bool = False) -> None:
        """Start (or restart) a node on what it stored; ``join``: as a learner
        of the other voters, the way a wiped node comes back (synchronizer.py)."""
        peers = tuple(n for n in self.ids if n != node_id) if join else self.ids
        raft = RaftConfig(node_id=node_id, peers=peers, learners=(node_id,) if join else (), election_ticks=10,
                          heartbeat_ticks=2)
        config = RuntimeConfig(**{**{f: getattr(self.config, f) for f in self.config.__slots__}, "raft": raft})
        metrics = ConsensusMetrics()
        storage = SimStorage.in_memory(node_id=node_id, cluster_id=CLUSTER, kv=self._kv[node_id])
        assert isinstance(storage, SimStorage)
        storage.node_id = node_id
        storage.on_install = lambda store, index: self.releases.installed(node_id, store, index)
        node = ConsensusNode(
            config,
            storage,
            SimTransport(node_id, self.net),
            metrics,
            random.Random(self.rng.getrandbits(64)),
            node_key=self._keys[node_id],
            snapshots=FileSnapshotStore(self._snapshot_dirs[node_id]),
            addresses={n: f"{n}:0" for n in self.ids},
            offload=_inline,
        )
        self._metrics[node_id] = metrics
        self.net.nodes[node_id] = node
        self.checker.restarted(node_id)
        self.releases.restarted(node_id, node)
        node.start()

    async def crash(self, node_id: str) -> None:
        node = self.net.nodes.pop(node_id)
        self._count_installs(node_id)
        await node.stop()
        self.stats.crashes += 1

    def wipe(self, node_id: str) -> None:
        """A node that is down loses its data directory: its store and its
        snapshots (not its key file)."""
        assert node_id not in self.net.nodes
        self._kv[node_id] = MemoryKeyValue()
        self._snapshot_dirs[node_id] = self._workdir / f"{node_id}-wiped-{self.stats.crashes}"

    def _count_installs(self, node_id: str) -> None:
        metrics = self._metrics.get(node_id)
        if metrics is not None:
            value = metrics.snapshots.labels("installed")._value.get()  # noqa: SLF001
            self.stats.snapshots_installed += int(value)

    async def stop_all(self) -> None:
        for node_id in list(self.net.nodes):
            self._count_installs(node_id)
            await self.net.nodes.pop(node_id).stop()

    # ------------------------------------------------------------ clients

    async def client(self, name: str, until: float) -> None:
        request_id = 0
        while self.loop.time() < until:
            request_id += 1
            key = RequestKey(name, request_id)
            payload = pb.LedgerEntry(
                client_id=name, request_id=request_id, app=pb.AppEntry(payload=self.rng.randbytes(16))
            ).SerializeToString()
            digest = entry_digest(payload)
            unknown = False
            for _attempt in range(4):  # the same key, to another node: applied once
                live = sorted(self.net.nodes)
                if not live:
                    await asyncio.sleep(0.1)
                    continue
                node = self.net.nodes[self.rng.choice(live)]
                try:
                    answer = await node.submit(payload, key, timeout_s=1.0)
                except ConsensusError as exc:
                    if not exc.definite:
                        unknown = True
                        self.stats.outcome_unknown += 1
                    continue
                self.checker.acknowledged(answer, digest)
                break
            else:
                if not unknown:  # it never left a node: it must never apply
                    self.stats.given_up += 1
                    self.checker.never_applied(key)
            await asyncio.sleep(self.rng.uniform(0.01, 0.08))

    # ------------------------------------------------------------ faults

    async def chaos(self, until: float) -> None:
        plan, rng, net = self.plan, self.rng, self.net
        net.drop_rate, net.dup_rate = plan.drop_rate, plan.dup_rate
        while self.loop.time() < until:
            await asyncio.sleep(plan.fault_every_s)
            live = sorted(net.nodes)
            down = [n for n in self.ids if n not in net.nodes]
            # A majority stays up, so that progress is possible most of the time.
            if live and len(down) < (plan.size - 1) // 2 and rng.random() < plan.crash_rate:
                await self.crash(rng.choice(live))
            for node_id in down:
                if rng.random() < plan.restart_rate:
                    self.start(node_id)
            if rng.random() < plan.partition_rate:
                ids = list(self.ids)
                rng.shuffle(ids)
                cut = rng.randint(1, len(ids) - 1)
                net.partition([ids[:cut], ids[cut:]])
            elif rng.random() < plan.heal_rate:
                net.heal()

    async def checking(self) -> None:
        while True:
            self.checker.check(self.net.nodes)
            await asyncio.sleep(self.plan.check_every_s)

    async def heal_and_converge(self) -> None:
        """Faults stop: every node restarts, the network heals and quiets;
        then everything must converge within the bound."""
        for node_id in list(self.net.nodes):
            await self.crash(node_id)
        self.net.heal()
        self.net.quiet()
        for node_id in self.ids:
            self.start(node_id)
        # One more entry after the heal: the cluster must still commit.
        deadline = self.loop.time() + self.plan.heal_bound_s
        final = RequestKey("final", 1)
        payload = pb.LedgerEntry(client_id="final", request_id=1, app=pb.AppEntry(payload=b"end")).SerializeToString()
        while True:
            node = self.net.nodes[self.rng.choice(self.ids)]
            try:
                answer = await node.submit(payload, final, timeout_s=1.0)
                self.checker.acknowledged(answer, entry_digest(payload))
                break
            except ConsensusError:
                if self.loop.time() > deadline:
                    raise ConvergenceFailure("no entry committed after the network healed") from None
        await self.converge(deadline, "healing")

    async def converge(self, deadline: float, after: str) -> None:
        """Every release entry answered, then every node the same, by
        ``deadline``: the chain (``LedgerChecker.converged``), then the
        release state (``ReleaseChecker.check_converged``)."""
        if self.workload is not None and not await self.workload.resubmit_pending(self.net.nodes, deadline):
            raise ConvergenceFailure(f"a release entry left unanswered by the chaos is unanswered after {after}")
        why: str | None = "not checked"
        while self.loop.time() < deadline:
            self.checker.check(self.net.nodes)
            why = self.checker.converged(self.net.nodes)
            if why is None:
                break
            await asyncio.sleep(0.05)
        if why is not None:
            raise ConvergenceFailure(f"not converged {self.plan.heal_bound_s} s after {after}: {why}")
        self.releases.check_converged(CLUSTER, self.net.nodes, self.workload)
        self.stats.acknowledged = len(self.checker.acks)
        self.stats.height = self.net.nodes[self.ids[0]].machine.height
        machine = self.net.nodes[self.ids[0]].machine
        self.stats.releases = len(machine.releases.releases())
        self.stats.devices = len(machine.devices.devices())
        self.stats.device_outcomes = sum(o.installed + o.failed for o in machine.devices.all_outcomes())
        self.stats.release_checkpoints = len(self.releases.checkpoints)
        self.stats.snapshots_with_releases = self.releases.snapshots_with_releases
        if self.workload is not None:
            self.stats.release_acknowledged = self.workload.stats.acknowledged
            self.stats.release_refused = self.workload.stats.refused
            self.stats.release_envelopes = self.workload.stats.envelopes
            self.stats.release_resubmitted = self.workload.stats.resubmitted
            self.stats.release_outcomes = dict(Counter(outcome for _, outcome in self.workload.answers.values()))


async def _run(seed: int, plan: Plan, workdir: Path) -> Stats:
    cluster = SimCluster(seed, plan, workdir)
    for node_id in cluster.ids:
        cluster.start(node_id)
    checking = asyncio.create_task(cluster.checking())
    until = cluster.loop.time() + plan.chaos_s
    cluster.workload = ReleaseWorkload(seed, plan.release_components, plan.release_ops, cluster.checker)
    clients = [asyncio.create_task(cluster.client(f"c{i}", until)) for i in range(plan.clients)]
    clients.append(asyncio.create_task(cluster.workload.run(cluster.net.nodes, until)))
    try:
        await cluster.chaos(until)
        await asyncio.gather(*clients)
        await cluster.heal_and_converge()
        if checking.done():
            checking.result()  # an invariant broken in the background
    except AssertionError:
        if checking.done() and not checking.cancelled() and checking.exception() is not None:
            # The background check broke first; what failed since may only
            # be a consequence (it left its records half-updated): report it.
            checking.result()
        raise
    finally:
        for task in (checking, *clients):
            task.cancel()
        await cluster.stop_all()
    return cluster.stats


def run(seed: int, plan: Plan | None = None) -> Stats:
    """Run one seed on a fresh virtual-time loop; raises InvariantViolation
    or ConvergenceFailure on a failure."""
    loop = VirtualTimeLoop()
    try:
        with tempfile.TemporaryDirectory(prefix="fleetsuit-nodesim-") as tmp:
            return loop.run_until_complete(_run(seed, plan or Plan(), Path(tmp)))
    finally:
        loop.close()


__all__ = ["ConvergenceFailure", "InvariantViolation", "Plan", "Stats", "run"]
