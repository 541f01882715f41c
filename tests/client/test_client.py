"""FleetClient against an in-process double of a node's edge (tests/client/
fakes.py; the real cluster: tests/integration). Retries send the same
bytes under the same key; a reused key is a conflict unless the release
already published is this one (a P-256 re-run); refusals are typed and not
retried; the upload is skipped when the node's dht holds the payload; a
node that stops answering is replaced by another member; a proof is asked
for once its block is certified. Time is a fake clock: no test sleeps."""

from __future__ import annotations

import contextlib
import hashlib
import random
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from fleetsuit.client import (
    FleetClient,
    FleetError,
    IdempotencyConflict,
    NotFound,
    OutcomeUnknownError,
    Refused,
    RolloutPolicy,
    Unreachable,
    build_release_envelope,
)
from fleetsuit.v1 import consensus_pb2 as pb
from suit import keys

from .fakes import NO_LEADER, OUTCOME_UNKNOWN, Failure, FakeNode, fake_node

PAYLOAD = b"\x7fELF firmware" * 4096
CID = "sha256:" + hashlib.sha256(PAYLOAD).hexdigest()
ED25519 = keys.private_pem(keys.generate(keys.KeyAlgorithm.ED25519))
P256 = keys.private_pem(keys.generate(keys.KeyAlgorithm.ES256))


class FakeClock:
    """Monotonic time that moves only when the client sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []
        self.on_sleep: list[Callable[[], None]] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds
        for hook in self.on_sleep:
            hook()


@pytest.fixture
def node() -> Iterator[FakeNode]:
    with fake_node() as served:
        yield served


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def _client(endpoint: str, clock: FakeClock, retry_deadline_s: float = 30.0) -> FleetClient:
    return FleetClient(endpoint, timeout_s=5.0, retry_deadline_s=retry_deadline_s,
                       rng=random.Random(7), sleep=clock.sleep, clock=clock)


def _entries(node: FakeNode) -> list[pb.LedgerEntry]:
    return [pb.LedgerEntry.FromString(raw) for raw in node.submitted]


def test_a_push_uploads_signs_and_commits_under_the_key_of_the_release(node: FakeNode, clock: FakeClock) -> None:
    progress: list[tuple[int, int]] = []
    with _client(node.address, clock) as client:
        result = client.push_release(
            PAYLOAD, component="ota", sequence=7, key_pem=ED25519, device_class="board-a",
            stages=(10, 100), progress=lambda done, total: progress.append((done, total)),
        )
    assert (result.release_id, result.duplicate, result.uploaded) == ("ota@7", False, True)
    assert (result.payload_cid, result.payload_size) == (CID, len(PAYLOAD))
    assert (result.index, result.block_height, result.position) == (11, 1, 0)
    assert node.blobs[CID] == PAYLOAD and progress[-1] == (len(PAYLOAD), len(PAYLOAD))
    (entry,) = _entries(node)
    assert (entry.client_id, entry.request_id) == ("release/ota", 7)
    published = entry.release_published
    assert (published.release_id, published.component, published.sequence_number) == ("ota@7", "ota", 7)
    assert list(published.device_classes) == ["board-a"] and published.vendor_domain == "fleetsuit.example"
    assert (published.payload_cid, published.payload_size) == (CID, len(PAYLOAD))
    assert RolloutPolicy.from_pb(published.rollout) == RolloutPolicy(stages=(10, 100))


def test_a_file_payload_is_uploaded_in_pieces_of_at_most_one_mebibyte(
    node: FakeNode, clock: FakeClock, tmp_path: Path
) -> None:
    big = random.Random(3).randbytes(2 * 1024 * 1024 + 5)
    path = tmp_path / "fw.bin"
    path.write_bytes(big)
    seen: list[int] = []
    with _client(node.address, clock) as client:
        result = client.push_release(path, component="ota", sequence=2, key_pem=ED25519,
                                     progress=lambda done, total: seen.append(done))
    assert result.payload_cid == "sha256:" + hashlib.sha256(big).hexdigest()
    assert node.blobs[result.payload_cid] == big
    assert seen == [1024 * 1024, 2 * 1024 * 1024, len(big)]


def test_retries_after_an_unknown_outcome_send_the_same_bytes_under_the_same_key(
    node: FakeNode, clock: FakeClock
) -> None:
    node.submit_script = [OUTCOME_UNKNOWN, NO_LEADER, OUTCOME_UNKNOWN]
    with _client(node.address, clock) as client:
        result = client.push_release(PAYLOAD, component="ota", sequence=3, key_pem=P256)
    assert not result.duplicate and len(node.submitted) == 4
    assert len(set(node.submitted)) == 1  # one entry: same key, same envelope, same bytes
    assert len(clock.slept) == 3 and clock.slept == sorted(clock.slept)  # backoff grows


def test_retries_running_out_after_an_unknown_outcome_say_retry_with_the_same_command(
    node: FakeNode, clock: FakeClock
) -> None:
    node.submit_script = [NO_LEADER, OUTCOME_UNKNOWN] + [NO_LEADER] * 1000
    with _client(node.address, clock, retry_deadline_s=10.0) as client, \
            pytest.raises(OutcomeUnknownError) as caught:
        client.push_release(PAYLOAD, component="ota", sequence=3, key_pem=ED25519)
    assert caught.value.code == "OUTCOME_UNKNOWN" and not caught.value.definite
    assert "retry with the same command" in str(caught.value)
    assert 3 <= len(node.submitted) < 50 and len(set(node.submitted)) == 1
    assert clock.now - 1000.0 <= 10.0


def test_retries_running_out_on_definite_answers_report_the_last_one(node: FakeNode, clock: FakeClock) -> None:
    node.submit_script = [NO_LEADER] * 1000
    with _client(node.address, clock, retry_deadline_s=5.0) as client, pytest.raises(FleetError) as caught:
        client.push_release(PAYLOAD, component="ota", sequence=3, key_pem=ED25519)
    assert caught.value.code == "NO_LEADER" and caught.value.definite


def test_a_re_run_with_ed25519_is_answered_as_a_duplicate_by_the_node(node: FakeNode, clock: FakeClock) -> None:
    with _client(node.address, clock) as client:
        first = client.push_release(PAYLOAD, component="ota", sequence=4, key_pem=ED25519)
        again = client.push_release(PAYLOAD, component="ota", sequence=4, key_pem=ED25519)
    assert node.submitted[0] == node.submitted[1]
    assert again.duplicate and (again.index, again.block_height, again.position) == (
        first.index, first.block_height, first.position)
    assert not again.uploaded and node.puts == 1


def test_a_re_run_with_p256_finds_its_release_published_and_is_a_duplicate(
    node: FakeNode, clock: FakeClock
) -> None:
    with _client(node.address, clock) as client:
        first = client.push_release(PAYLOAD, component="ota", sequence=5, key_pem=P256, stages=(50, 100))
        again = client.push_release(PAYLOAD, component="ota", sequence=5, key_pem=P256, stages=(50, 100))
    one, two = _entries(node)
    assert one.release_published.envelope != two.release_published.envelope  # ECDSA is randomized
    assert again.duplicate and not first.duplicate
    assert (again.release_id, again.index, again.block_height, again.position) == (
        first.release_id, first.index, first.block_height, first.position)


def test_another_release_under_the_same_key_is_an_idempotency_conflict(node: FakeNode, clock: FakeClock) -> None:
    with _client(node.address, clock) as client:
        client.push_release(PAYLOAD, component="ota", sequence=6, key_pem=ED25519)
        with pytest.raises(IdempotencyConflict) as caught:
            client.push_release(PAYLOAD + b"!", component="ota", sequence=6, key_pem=ED25519)
        assert caught.value.code == "IDEMPOTENCY_KEY_REUSED" and "other content" in caught.value.message
        with pytest.raises(IdempotencyConflict):  # same payload, another rollout
            client.push_release(PAYLOAD, component="ota", sequence=6, key_pem=ED25519, stages=(1, 100))


def test_a_release_of_that_id_pushed_under_another_key_is_a_duplicate_only_if_it_is_this_one(
    node: FakeNode, clock: FakeClock
) -> None:
    node.releases["ota@8"] = pb.Release(
        release_id="ota@8", component="ota", sequence_number=8, payload_cid=CID, payload_size=len(PAYLOAD),
        device_classes=["default"], vendor_domain="fleetsuit.example", state="active", index=30,
        block_height=9, position=2)
    with _client(node.address, clock) as client:
        same = client.push_release(PAYLOAD, component="ota", sequence=8, key_pem=P256)
        assert same.duplicate and (same.index, same.block_height, same.position) == (30, 9, 2)
        with pytest.raises(Refused) as caught:
            client.push_release(PAYLOAD, component="ota", sequence=8, key_pem=P256, device_class="other")
    assert caught.value.code == "DUPLICATE_RELEASE"


@pytest.mark.parametrize("code", ["UNTRUSTED_KEY", "STALE_SEQUENCE", "PAYLOAD_MISSING", "INVALID_RELEASE"])
def test_refusals_are_typed_with_their_code_and_not_retried(node: FakeNode, clock: FakeClock, code: str) -> None:
    node.refuse_with = Failure(grpc.StatusCode.FAILED_PRECONDITION, code, "because")
    with _client(node.address, clock) as client, pytest.raises(Refused) as caught:
        client.push_release(PAYLOAD, component="ota", sequence=9, key_pem=ED25519)
    assert (caught.value.code, caught.value.message, caught.value.definite) == (code, "because", True)
    assert len(node.submitted) == 1 and not clock.slept


def test_the_upload_is_skipped_when_the_nodes_dht_has_the_payload(node: FakeNode, clock: FakeClock) -> None:
    node.blobs[CID] = PAYLOAD
    with _client(node.address, clock) as client:
        result = client.push_release(PAYLOAD, component="ota", sequence=10, key_pem=ED25519)
    assert not result.uploaded and node.puts == 0


def test_a_payload_named_by_its_cid_is_not_uploaded(node: FakeNode, clock: FakeClock) -> None:
    with _client(node.address, clock) as client:
        result = client.push_release(None, component="ota", sequence=11, key_pem=ED25519,
                                     payload_cid=CID, payload_size=len(PAYLOAD))
    assert not result.uploaded and node.puts == 0 and result.payload_cid == CID


def test_a_prebuilt_envelope_is_pushed_as_is_and_must_name_the_release(node: FakeNode, clock: FakeClock) -> None:
    envelope = build_release_envelope(component="ota", sequence=12, payload_cid=CID,
                                      payload_size=len(PAYLOAD), key_pem=P256)
    with _client(node.address, clock) as client:
        client.push_release(PAYLOAD, component="ota", sequence=12, envelope=envelope)
        with pytest.raises(ValueError, match="sequence number is 12"):
            client.push_release(PAYLOAD, component="ota", sequence=13, envelope=envelope)
        with pytest.raises(ValueError, match="not both"):
            client.push_release(PAYLOAD, component="ota", sequence=12, envelope=envelope, key_pem=P256)
    assert _entries(node)[0].release_published.envelope == envelope and len(node.submitted) == 1


def test_bad_arguments_are_refused_before_anything_is_sent(node: FakeNode, clock: FakeClock) -> None:
    with _client(node.address, clock) as client:
        for bad in ({"experimental": True}, {"stages": (10, 50)}, {"start_at": 20.0, "end_at": 10.0}):
            with pytest.raises(ValueError):
                client.push_release(PAYLOAD, component="ota", sequence=1, key_pem=ED25519, **bad)
    assert not node.submitted and node.puts == 0


def test_when_the_node_stops_answering_another_member_takes_the_push(clock: FakeClock) -> None:
    with fake_node(FakeNode(node_id="n2")) as n2, contextlib.ExitStack() as first:
        n1 = first.enter_context(fake_node(FakeNode(node_id="n1")))
        members = [pb.Member(node_id="n1", address=n1.address, voter=True),
                   pb.Member(node_id="n2", address=n2.address, voter=True)]
        n1.members = n2.members = members
        with _client(n1.address, clock) as client:
            assert client.status().node_id == "n1"
            assert client.endpoints == (n1.address, n2.address)
            first.close()  # n1 is gone
            result = client.push_release(PAYLOAD, component="ota", sequence=1, key_pem=ED25519)
            assert client.endpoint == n2.address
    assert result.uploaded and n2.blobs[CID] == PAYLOAD and len(n2.submitted) == 1


def test_an_endpoint_that_never_answers_is_unreachable(clock: FakeClock) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{s.getsockname()[1]}"
    with _client(closed, clock, retry_deadline_s=3.0) as client, pytest.raises(Unreachable) as caught:
        client.status()
    assert caught.value.code == "UNREACHABLE" and closed in caught.value.message


def test_a_proof_is_asked_for_once_the_block_is_certified(node: FakeNode, clock: FakeClock) -> None:
    with _client(node.address, clock) as client:
        result = client.push_release(PAYLOAD, component="ota", sequence=1, key_pem=ED25519)
        polls = 0

        def certify_later() -> None:
            nonlocal polls
            polls += 1
            if polls == 3:
                node.certified_height = result.block_height

        clock.on_sleep.append(certify_later)
        raw = client.proof(result.block_height, result.position, wait_certified_s=10.0)
        assert pb.EntryProof.FromString(raw).height == result.block_height and polls == 3
        node.block_height += 1
        with pytest.raises(FleetError) as caught:
            client.proof(node.block_height, 0, wait_certified_s=1.0)
    assert caught.value.code == "NOT_CERTIFIED"


def test_rollout_actions_draw_a_fresh_key_that_their_retries_reuse(node: FakeNode, clock: FakeClock) -> None:
    with _client(node.address, clock) as client:
        node.submit_script = [OUTCOME_UNKNOWN]
        paused = client.rollout("ota@1", "pause", "too many reboots")
        resumed = client.rollout("ota@1", "resume")
        revoked = client.revoke("ota@1", "bad build")
        with pytest.raises(ValueError, match="pause, resume, halt"):
            client.rollout("ota@1", "stop")
    first, retry, second, third = _entries(node)
    assert first == retry and first.rollout_changed.action == "pause"
    assert first.rollout_changed.reason == "too many reboots"
    assert first.client_id == second.client_id == "rollout/ota@1" and first.request_id != second.request_id
    assert 0 < first.request_id < 2**63 and (paused.client_id, paused.request_id) == ("rollout/ota@1", first.request_id)
    assert third.release_revoked.release_id == "ota@1" and third.release_revoked.reason == "bad build"
    assert not resumed.duplicate and revoked.release_id == "ota@1"


def test_reads_return_typed_results(node: FakeNode, clock: FakeClock) -> None:
    with _client(node.address, clock) as client:
        client.push_release(PAYLOAD, component="ota", sequence=1, key_pem=ED25519)
        client.push_release(PAYLOAD, component="ota", sequence=2, key_pem=ED25519, device_class="b")
        (one,) = client.list_releases(component="ota", state="active", stale_ok=True)[:1]
        assert one.release_id == "ota@1" and one.rollout == RolloutPolicy() and one.envelope is None
        assert client.get_release("ota@2").device_classes == ("b",)
        assert client.current_release("ota", "default").release_id == "ota@1"
        assert client.current_release("ota").release_id == "ota@2"
        assert client.refusals()[0].code == "UNTRUSTED_KEY"
        assert client.trust_anchors()[0].components == ("ota",)
        status = client.status()
        assert status.services["dht"] == node.address and status.members[0].node_id == "n1"
        with pytest.raises(NotFound) as caught:
            client.get_release("ota@99")
    assert caught.value.code == "RELEASE_NOT_FOUND"


def test_a_reused_key_whose_first_entry_was_refused_is_a_conflict_saying_so(
    node: FakeNode, clock: FakeClock
) -> None:
    node.answers[("release/ota", 20)] = (b"an earlier, refused entry", pb.SubmitResponse(index=3))
    with _client(node.address, clock) as client, pytest.raises(IdempotencyConflict) as caught:
        client.push_release(PAYLOAD, component="ota", sequence=20, key_pem=P256)
    assert "no release ota@20" in caught.value.message and "refused" in caught.value.message
