"""The ledger's release state (ledger/releases.py through the ledger
machine): what every node derives from release entries, the checks on
apply that refuse what a leader should not have proposed, and that the
state survives a restart and a snapshot identically."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from services.consensus.ledger.codec import encode_batch
from services.consensus.ledger.entries import Applied
from services.consensus.ledger.keys import RequestKey
from services.consensus.ledger.machine import LedgerMachine
from services.consensus.raft.types import Entry, SnapshotMeta
from services.consensus.storage import RocksStorage
from services.consensus.storage.snapshot_format import read_snapshot, write_snapshot
from tests.support.releases import Publisher, bootstrap, publish, revoke, rollout

FIRMWARE = b"firmware image " * 100


class Ledger:
    """A ledger machine on RocksDB with a log index of its own."""

    def __init__(self, path: Path, node_id: str = "n1") -> None:
        self.storage = RocksStorage(str(path), node_id=node_id, cluster_id="c")
        self.machine = LedgerMachine(self.storage, cluster_id="c")
        self.index = self.machine.applied_index()

    def apply(self, *payloads: bytes) -> list[Applied]:
        self.index += 1
        return self.machine.apply([Entry(term=1, index=self.index, data=encode_batch(list(payloads)))])

    def close(self) -> None:
        self.storage.close()


@pytest.fixture
def ci() -> Publisher:
    return Publisher.new(1)


@pytest.fixture
def ledger(tmp_path: Path, ci: Publisher) -> Ledger:
    ledger = Ledger(tmp_path / "n1")
    [answer] = ledger.apply(bootstrap(ci.anchor()))
    assert answer.outcome == ""
    return ledger


def test_a_signed_release_becomes_the_components_current_one(ledger: Ledger, ci: Publisher) -> None:
    [answer] = ledger.apply(publish(ci, "fw", 3, FIRMWARE))
    assert answer.outcome == "" and answer.position == 0
    releases = ledger.machine.releases
    release = releases.release("fw@3")
    assert release is not None
    assert (release.state, release.sequence_number, release.block_height, release.signer_key_id) == (
        "active", 3, answer.block_height, ci.anchor().key_id)
    assert releases.sequence("fw") == 3
    assert releases.current("fw", "default", 0) == release
    assert releases.current("fw", "other-board", 0) is None
    ledger.close()


@pytest.mark.parametrize(("case", "code"), [
    ("untrusted key", "UNTRUSTED_KEY"),
    ("stale sequence", "STALE_SEQUENCE"),
    ("digest differs", "DIGEST_MISMATCH"),
    ("size differs", "DIGEST_MISMATCH"),
    ("manifest for another component", "INVALID_RELEASE"),
    ("manifest for another class", "INVALID_RELEASE"),
    ("same release id again", "DUPLICATE_RELEASE"),
    ("anchor scoped to another component", "UNTRUSTED_KEY"),
])
def test_an_entry_a_leader_should_have_refused_is_recorded_as_refused(
    tmp_path: Path, ci: Publisher, case: str, code: str
) -> None:
    """What the leader's checks would refuse, proposed anyway: every node
    keeps it in the block (the log ordered it) but it never becomes a
    release, and its refusal is recorded with its code."""
    ledger = Ledger(tmp_path / "n1")
    scoped = Publisher.new(2)
    ledger.apply(bootstrap(ci.anchor(), scoped.anchor(components=["bootloader"])))
    ledger.apply(publish(ci, "fw", 5, FIRMWARE))
    other = b"another image"
    bad = {
        "untrusted key": publish(Publisher.new(9), "fw", 6, FIRMWARE),
        "stale sequence": publish(ci, "fw", 5, FIRMWARE, release_id="fw@5-again", key=RequestKey("x", 1)),
        "digest differs": publish(ci, "fw", 6, FIRMWARE, manifest_payload=other),
        "size differs": publish(ci, "fw", 6, FIRMWARE, manifest_payload=FIRMWARE + b"!"),
        "manifest for another component": publish(
            ci, "fw", 6, FIRMWARE, envelope_bytes=_envelope_for(ci, "bootloader", 6)),
        "manifest for another class": publish(
            ci, "fw", 6, FIRMWARE, envelope_bytes=_envelope_for(ci, "fw", 6, device_class="board-b")),
        "same release id again": publish(ci, "fw", 6, FIRMWARE, release_id="fw@5"),
        "anchor scoped to another component": publish(scoped, "fw", 6, FIRMWARE),
    }[case]
    height = ledger.machine.height
    [answer] = ledger.apply(bad)
    assert answer.outcome == code, answer.message
    assert ledger.machine.height == height + 1  # recorded in a block all the same
    releases = ledger.machine.releases
    assert [r.release_id for r in releases.releases()] == ["fw@5"]
    assert releases.sequence("fw") == 5
    [refusal] = releases.refusals()
    assert (refusal.code, refusal.block_height, refusal.position, refusal.kind) == (
        code, height + 1, 0, "release_published")
    ledger.close()


def _envelope_for(ci: Publisher, component: str, sequence: int, device_class: str = "default") -> bytes:
    from tests.support.releases import envelope

    return envelope(ci, component, sequence, FIRMWARE, device_class)


def test_no_release_is_accepted_before_the_cluster_has_trust_anchors(tmp_path: Path, ci: Publisher) -> None:
    ledger = Ledger(tmp_path / "n1")
    [answer] = ledger.apply(publish(ci, "fw", 1, FIRMWARE))
    assert answer.outcome == "NO_TRUST_ANCHORS"
    assert ledger.machine.releases.releases() == []
    ledger.close()


def test_the_first_anchors_stand_and_a_later_set_is_refused(ledger: Ledger, ci: Publisher) -> None:
    intruder = Publisher.new(7)
    [answer] = ledger.apply(bootstrap(intruder.anchor()).replace(b"cluster/trust-anchors", b"cluster/trust-anchorz"))
    assert answer.outcome == "ANCHORS_REFUSED"
    assert [a.key_id for a in ledger.machine.releases.anchors()] == [ci.anchor().key_id]
    [answer] = ledger.apply(publish(intruder, "fw", 1, FIRMWARE))
    assert answer.outcome == "UNTRUSTED_KEY"
    ledger.close()


def test_a_retry_gets_the_same_refusal_and_a_reused_key_is_refused(ledger: Ledger, ci: Publisher) -> None:
    untrusted = publish(Publisher.new(9), "fw", 1, FIRMWARE)
    [first] = ledger.apply(untrusted)
    [again] = ledger.apply(untrusted)
    assert (first.outcome, again.outcome, again.duplicate) == ("UNTRUSTED_KEY", "UNTRUSTED_KEY", True)
    assert (again.index, again.block_height, again.position) == (first.index, first.block_height, first.position)
    stored = ledger.storage.get_request(RequestKey("release/fw", 1))
    assert stored is not None and (stored.outcome, stored.message) == ("UNTRUSTED_KEY", first.message)
    # The same key for other content: refused, left out of any block.
    good = publish(ci, "fw", 2, FIRMWARE, key=RequestKey("release/fw", 1))
    height = ledger.machine.height
    [reused] = ledger.apply(good)
    assert reused.outcome == "IDEMPOTENCY_KEY_REUSED" and ledger.machine.height == height
    assert ledger.machine.releases.releases() == []
    ledger.close()


def test_a_key_reused_inside_one_batch_is_refused_and_left_out(ledger: Ledger, ci: Publisher) -> None:
    key = RequestKey("ci", 7)
    first, second = ledger.apply(publish(ci, "fw", 1, FIRMWARE, key=key), publish(ci, "fw", 2, FIRMWARE, key=key))
    assert first.outcome == "" and second.outcome == "IDEMPOTENCY_KEY_REUSED"
    block = ledger.machine.get_block(first.block_height)
    assert block is not None and len(block.entries) == 1
    assert [r.release_id for r in ledger.machine.releases.releases()] == ["fw@1"]
    ledger.close()


def test_revocation_and_rollout_actions(ledger: Ledger, ci: Publisher) -> None:
    ledger.apply(publish(ci, "fw", 1, FIRMWARE))
    state = ledger.machine.releases

    def act(payload: bytes) -> str:
        [answer] = ledger.apply(payload)
        return answer.outcome

    assert act(rollout("fw@1", "pause", RequestKey("op", 1), "canary alarms")) == ""
    assert state.release("fw@1").state == "paused"  # type: ignore[union-attr]
    assert act(rollout("fw@1", "pause", RequestKey("op", 2))) == "INVALID_TRANSITION"
    assert act(rollout("fw@1", "resume", RequestKey("op", 3))) == ""
    assert act(rollout("fw@1", "halt", RequestKey("op", 4))) == ""
    assert act(rollout("fw@1", "resume", RequestKey("op", 5))) == "INVALID_TRANSITION"
    assert act(rollout("fw@9", "pause", RequestKey("op", 6))) == "UNKNOWN_RELEASE"
    assert act(rollout("fw@1", "jump", RequestKey("op", 7))) == "INVALID_TRANSITION"
    assert act(revoke("fw@1", RequestKey("op", 8), "bricks boards")) == ""
    release = state.release("fw@1")
    assert release is not None and (release.state, release.state_reason) == ("revoked", "bricks boards")
    assert act(revoke("fw@1", RequestKey("op", 9))) == "REVOKED"
    assert act(rollout("fw@1", "resume", RequestKey("op", 10))) == "REVOKED"
    # The revoked release pushed again (another key): REVOKED, nothing changes.
    assert act(publish(ci, "fw", 1, FIRMWARE, key=RequestKey("ci", 99))) == "REVOKED"
    assert state.current("fw", "default", 0) is None
    assert state.sequence("fw") == 1  # a revoked sequence number is never reused
    ledger.close()


def test_an_experimental_release_reads_as_ended_after_its_end_time(ledger: Ledger, ci: Publisher) -> None:
    from fleetsuit.v1 import consensus_pb2 as pb
    from services.consensus.ledger.releases import effective_state

    entry = pb.LedgerEntry.FromString(publish(ci, "fw", 1, FIRMWARE))
    entry.release_published.rollout.CopyFrom(pb.RolloutPolicy(
        start_at_unix_ms=1_000, end_at_unix_ms=2_000, experimental=True, stages=[10, 100]))
    [answer] = ledger.apply(entry.SerializeToString())
    assert answer.outcome == ""
    release = ledger.machine.releases.release("fw@1")
    assert release is not None and release.rollout.stages == (10, 100)
    assert effective_state(release, 1_500) == "active" and effective_state(release, 2_000) == "ended"
    assert ledger.machine.releases.current("fw", "default", 2_500) is None
    entry.release_published.rollout.end_at_unix_ms = 0
    entry.release_published.sequence_number = 2
    entry.request_id = 2
    [answer] = ledger.apply(entry.SerializeToString())
    assert answer.outcome == "INVALID_RELEASE"  # experimental without an end time
    ledger.close()


def test_release_state_survives_a_restart_and_a_snapshot_identically(tmp_path: Path, ci: Publisher) -> None:
    ledger = Ledger(tmp_path / "a")
    ledger.apply(bootstrap(ci.anchor()))
    for seq in range(1, 6):
        ledger.apply(publish(ci, "fw", seq, FIRMWARE), publish(ci, "bootloader", seq, FIRMWARE[:99]))
    ledger.apply(publish(Publisher.new(3), "fw", 9, FIRMWARE))  # refused
    ledger.apply(revoke("fw@2", RequestKey("op", 1)), rollout("fw@5", "pause", RequestKey("op", 2)))
    digest = ledger.machine.releases.digest()
    assert len(ledger.machine.releases.releases()) == 10
    applied = ledger.machine.applied_index()
    ledger.close()

    again = Ledger(tmp_path / "a")
    assert again.machine.releases.digest() == digest
    out = io.BytesIO()
    meta = SnapshotMeta(index=applied, term=1, voters=("n1",), learners=())
    write_snapshot(out, meta, again.storage.state_records(again.storage.state_view()))
    again.close()

    other = Ledger(tmp_path / "b", node_id="n2")
    data = out.getvalue()
    read_meta, records = read_snapshot(io.BytesIO(data), len(data))
    other.storage.install_snapshot(read_meta, records)
    other.machine.reload()
    assert other.machine.releases.digest() == digest
    # ... and the next release applies on top of it as on the source.
    other.index = applied
    [answer] = other.apply(publish(ci, "fw", 6, FIRMWARE))
    assert answer.outcome == "" and other.machine.releases.sequence("fw") == 6
    other.close()


def test_an_entry_the_check_chokes_on_is_refused_not_a_crash(
    ledger: Ledger, ci: Publisher, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A committed entry that made apply raise would stop every node that
    applies it, on every restart: it is refused instead, with a message
    that is the same on every node (the exception's type, not its text)."""
    import services.consensus.ledger.releases as releases

    def choke(*_: object) -> None:
        raise RuntimeError(f"object at {id(ledger):#x}")

    monkeypatch.setattr(releases, "check_envelope", choke)
    [answer] = ledger.apply(publish(ci, "fw", 1, FIRMWARE))
    assert (answer.outcome, answer.message) == ("INVALID_RELEASE", "the entry could not be checked (RuntimeError)")
    assert ledger.machine.releases.releases() == []
    [refusal] = ledger.machine.releases.refusals()
    assert refusal.message == answer.message
    ledger.close()


def test_mangled_envelopes_are_refused_and_never_raise(ledger: Ledger, ci: Publisher) -> None:
    """Bytes flipped, cut or inserted anywhere in a signed envelope: apply
    answers every one with a refusal code (or accepts an envelope whose
    change the signature does not cover), and raises for none."""
    import random

    from fleetsuit.v1 import consensus_pb2 as pb
    from services.consensus.errors import REFUSALS

    rng = random.Random(11)
    good = pb.LedgerEntry.FromString(publish(ci, "fw", 1, FIRMWARE))
    envelope_bytes = good.release_published.envelope
    outcomes = set()
    for i in range(300):
        mangled = bytearray(envelope_bytes)
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(len(mangled))
            what = rng.randrange(3)
            if what == 0:
                mangled[at] ^= 1 << rng.randrange(8)
            elif what == 1:
                del mangled[at:at + rng.randint(1, 16)]
            else:
                mangled[at:at] = rng.randbytes(rng.randint(1, 8))
        entry = pb.LedgerEntry()
        entry.CopyFrom(good)
        entry.request_id = 1000 + i
        entry.release_published.envelope = bytes(mangled)
        [answer] = ledger.apply(entry.SerializeToString())
        assert answer.outcome in REFUSALS or answer.outcome == "", answer
        outcomes.add(answer.outcome)
        if answer.outcome == "":
            break  # the first accepted one takes fw@1; the rest would be duplicates
    assert "UNTRUSTED_KEY" in outcomes or "INVALID_RELEASE" in outcomes
    ledger.close()
