"""What must hold of the release state in the whole-node simulation
(issue 11: the ledger machine's release state survives restart, snapshot
install and catch-up, identical on every node), checked once every node
holds the same chain (``ReleaseChecker.check_converged``):

- A reference LedgerMachine on fresh in-memory storage replays the final
  chain's blocks and must rebuild the very chain. (Exact: each block is the
  included entries of one Raft entry, made at that entry's index and term,
  so replaying them gives back the same blocks, positions and release
  state; the entries left out of blocks are key retries, which touch
  nothing, and CONFIG entries make no block and touch no release.)
- Every node's release state (``state_digest``: releases, sequence
  numbers, anchors, refusals, and the device tables: enrolments, outcomes
  per release and their counts) is the reference's; so is every state a node
  held right after a restart or a snapshot install, compared with the
  reference at the same applied index.
- Every release is a ReleasePublished entry of the chain, where it says,
  and no release id took effect twice.
- With the workload (``releases.py``): the reference state is the release
  rules' (``ReleaseModel``); every entry of the scripts was answered; one
  answered "" took effect (a publish is the release at its index and
  position), one answered with a refusal code is no release and is recorded
  as refused with that code; the only refusals are those.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from services.consensus.ledger.block import BlockData
from services.consensus.ledger.codec import decode_entry, encode_batch
from services.consensus.ledger.devices import DeviceState
from services.consensus.ledger.entries import Applied, Publish
from services.consensus.ledger.keys import RequestKey
from services.consensus.ledger.machine import LedgerMachine
from services.consensus.ledger.releases import ReleaseState
from services.consensus.raft.types import Entry, EntryType
from services.consensus.runtime import ConsensusNode
from services.consensus.storage import NodeStorage

from .invariants import InvariantViolation
from .releases import ReleaseWorkload

Summary = dict[str, dict[Any, object]]


@dataclass(frozen=True)
class Checkpoint:
    """The release state a node held right after a restart or a snapshot
    install, at its applied index."""

    node_id: str
    why: str
    index: int
    digest: str
    summary: Summary  # what the digest covers, readably (for the message when it is wrong)


@dataclass
class ReleaseChecker:
    checkpoints: list[Checkpoint] = field(default_factory=list)
    snapshots_with_releases: int = 0  # snapshot installs that brought release state

    def restarted(self, node_id: str, node: ConsensusNode) -> None:
        machine = node.machine
        if machine.applied_index() > 0:
            self.checkpoints.append(
                Checkpoint(node_id, "a restart", machine.applied_index(),
                           state_digest(machine.releases, machine.devices),
                           summary(machine.releases, machine.devices))
            )

    def installed(self, node_id: str, storage: NodeStorage, index: int) -> None:
        state = ReleaseState(storage)
        devices = DeviceState(storage, state)
        if state.anchors() or state.refusals():
            self.snapshots_with_releases += 1
        self.checkpoints.append(Checkpoint(node_id, "a snapshot install", index, state_digest(state, devices),
                                           summary(state, devices)))

    def check_converged(
        self, cluster_id: str, nodes: Mapping[str, ConsensusNode], workload: ReleaseWorkload | None
    ) -> None:
        """Once every node holds the same chain (``LedgerChecker.converged``)."""
        some = next(iter(nodes.values())).machine
        chain = []
        for height in range(1, some.height + 1):
            block = some.get_block(height)
            assert block is not None  # LedgerChecker: no node loses a block
            chain.append(block)
        replayed = replay(cluster_id, chain, sorted({c.index for c in self.checkpoints}))
        reference, at = replayed.machine, replayed.digests
        if (reference.height, reference.head_hash) != (some.height, some.head_hash):
            raise InvariantViolation(
                f"replaying the chain's entries gives another chain (height {reference.height}, not {some.height})"
            )
        for c in sorted(self.checkpoints, key=lambda c: c.index):  # the first state known wrong
            digest, want = at[c.index]
            if c.digest != digest:
                raise InvariantViolation(
                    f"{c.node_id}'s release state after {c.why} (applied index {c.index}) is not the one the "
                    f"chain's entries up to that index give: {differences(c.summary, want)}"
                )
        expected = state_digest(reference.releases, reference.devices)
        for node_id, node in nodes.items():
            machine = node.machine
            if state_digest(machine.releases, machine.devices) != expected:
                mine, want = summary(machine.releases, machine.devices), summary(reference.releases, reference.devices)
                raise InvariantViolation(
                    f"{node_id}'s release state differs from the one the chain's entries give: "
                    f"{differences(mine, want)}"
                )
        _check_chain(reference.releases, chain)
        if workload is not None:
            _check_model(reference.releases, workload, replayed.results)
            _check_devices(reference.devices, workload)


@dataclass
class Replay:
    machine: LedgerMachine
    digests: dict[int, tuple[str, Summary]]  # applied index -> the release state as of it
    results: dict[RequestKey, Applied]  # what each keyed entry of the chain was answered


def replay(cluster_id: str, chain: Sequence[BlockData], indexes: Sequence[int]) -> Replay:
    """A fresh machine that applied ``chain``'s blocks as the Raft entries
    they came from, and its release digest as of each of ``indexes`` (sorted
    applied indexes; the blocks are applied in runs between them, one call
    each, as a node applies what commits between two of its loop turns)."""
    machine = LedgerMachine(NodeStorage.in_memory(node_id="reference", cluster_id=cluster_id), cluster_id=cluster_id)
    out = Replay(machine, {}, {})
    run: list[Entry] = []
    pending = list(indexes)

    def apply() -> None:
        out.results.update((r.key, r) for r in machine.apply(run) if r.key is not None and not r.duplicate)
        run.clear()

    for block in chain:
        if block.first_index != block.last_index:
            raise InvariantViolation(f"block {block.height} spans Raft entries {block.first_index}..{block.last_index}")
        while pending and pending[0] < block.first_index:
            apply()
            out.digests[pending.pop(0)] = _digest_of(machine)
        run.append(Entry(block.term, block.first_index, EntryType.NORMAL, encode_batch(block.entries)))
    apply()
    for index in pending:
        out.digests[index] = _digest_of(machine)
    return out


def _digest_of(machine: LedgerMachine) -> tuple[str, Summary]:
    return state_digest(machine.releases, machine.devices), summary(machine.releases, machine.devices)


def state_digest(releases: ReleaseState, devices: DeviceState) -> str:
    """The fingerprint of the release and device tables together."""
    return f"{releases.digest()}:{devices.digest()}"


def _check_chain(state: ReleaseState, chain: Sequence[BlockData]) -> None:
    """Every release is a ReleasePublished entry of the chain, where it says,
    and no release id took effect twice."""
    refused = {(f.index, f.position) for f in state.refusals()}
    took_effect: Counter[str] = Counter()
    published: dict[tuple[int, int], str] = {}
    for block in chain:
        for position, payload in enumerate(block.entries):
            view = decode_entry(payload)
            if view is None or not isinstance(view.body, Publish) or (block.first_index, position) in refused:
                continue
            release_id = view.body.release_id or f"{view.body.component}@{view.body.sequence_number}"
            took_effect[release_id] += 1
            published[(block.first_index, position)] = release_id
    twice = [r for r, n in took_effect.items() if n > 1]
    if twice:
        raise InvariantViolation(f"release ids published twice without a refusal: {twice[:3]}")
    for release in state.releases():
        if published.get((release.index, release.position)) != release.release_id:
            raise InvariantViolation(
                f"release {release.release_id} says it was published at index {release.index}, position "
                f"{release.position}, where the chain holds no such entry"
            )


def _check_model(state: ReleaseState, workload: ReleaseWorkload, results: Mapping[RequestKey, Applied]) -> None:
    """The chain's release state is the rules', and every answer a client
    got is what the chain's entry did."""
    model = workload.model
    missing = [op.what for op in workload.ops if op.key not in workload.answers]
    if missing:
        raise InvariantViolation(f"release entries never answered: {missing[:3]}")
    got = {r.release_id: (r.component, r.sequence_number, r.state) for r in state.releases()}
    if got != model.releases:
        raise InvariantViolation(f"the releases are not the rules': {_dict_diff(got, model.releases)}")
    if state.sequences() != model.sequences:
        raise InvariantViolation(
            f"the sequence numbers are not the rules': {_dict_diff(state.sequences(), model.sequences)}"
        )
    if tuple(a.key_id for a in state.anchors()) != model.anchors:
        raise InvariantViolation(f"the trust anchors are {[a.key_id for a in state.anchors()]}, not {model.anchors}")
    releases = {(r.index, r.position): r for r in state.releases()}
    refusals = {(f.index, f.position): f for f in state.refusals()}
    for op, outcome in workload.answers.values():
        said = outcome or "applied"
        result = results.get(op.key)
        if result is None:
            raise InvariantViolation(f"{op.what}, answered {said}, is not in the chain")
        where = (result.index, result.position)
        if result.outcome != outcome:
            raise InvariantViolation(f"{op.what}, answered {said}, is {result.outcome or 'applied'} in the chain")
        if outcome:
            refusal = refusals.get(where)
            if refusal is None or refusal.code != outcome:
                raise InvariantViolation(
                    f"{op.what}, answered {outcome}, is recorded as refused with {refusal.code if refusal else 'nothing'}"
                )
            if where in releases:
                raise InvariantViolation(f"{op.what}, answered {outcome}, is release {releases[where].release_id}")
        elif where in refusals:
            raise InvariantViolation(f"{op.what}, answered applied, is recorded as refused ({refusals[where].code})")
        elif op.kind == "publish":
            release = releases.get(where)
            if release is None or (release.release_id, release.block_height) != (op.release_id, result.block_height):
                raise InvariantViolation(f"{op.what}, answered applied, is not the release at {where}")
    refused = sum(1 for _, outcome in workload.answers.values() if outcome)
    if len(refusals) != refused:
        raise InvariantViolation(f"{len(refusals)} refusals recorded, {refused} entries answered refused")


def _check_devices(devices: DeviceState, workload: ReleaseWorkload) -> None:
    """The chain's device state is the rules': the devices enrolled, and
    each release's outcomes counted per device."""
    model = workload.model
    got = {d.device_id: d.state for d in devices.devices()}
    if got != model.devices:
        raise InvariantViolation(f"the devices are not the rules': {_dict_diff(got, model.devices)}")
    counted = {o.release_id: (o.installed, o.failed) for o in devices.all_outcomes()}
    want = model.release_outcomes()
    if counted != want:
        raise InvariantViolation(f"the outcomes per release are not the rules': {_dict_diff(counted, want)}")


def summary(state: ReleaseState, devices: DeviceState) -> Summary:
    """The release and device tables, readably (what ``state_digest`` covers)."""
    return {
        "releases": {r.release_id: (r.sequence_number, r.state, r.index, r.position) for r in state.releases()},
        "sequences": dict(state.sequences()),
        "anchors": {a.key_id: (a.components, a.device_classes) for a in state.anchors()},
        "refusals": {(f.index, f.position): f.code for f in state.refusals()},
        "devices": {d.device_id: (d.state, d.installed, d.index) for d in devices.devices()},
        "outcomes": {o.release_id: (o.installed, o.failed) for o in devices.all_outcomes()},
    }


def differences(mine: Summary, reference: Summary) -> str:
    """What differs between two release states, briefly (for messages)."""
    out = [f"{name}: {_dict_diff(mine[name], reference[name])}" for name in mine if mine[name] != reference[name]]
    return "; ".join(out) or "(the tables' records differ in other fields)"


def _dict_diff(got: Mapping[Any, object], want: Mapping[Any, object]) -> str:
    keys = sorted({*got, *want} - {k for k in got if k in want and got[k] == want[k]}, key=repr)
    return ", ".join(f"{k!r}: {got.get(k, '-')!r} (want {want.get(k, '-')!r})" for k in keys[:4])
