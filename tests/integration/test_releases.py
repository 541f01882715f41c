"""The path of a release on real processes (issue: releases as ledger state):
a 3-node cluster started with a CI publisher's trust anchor, pushed to with
``fleetsuit release push`` as a pipeline runs it, and asked on every node.

Shown here: a 20 MiB push with a progress bar in a terminal, listed on every
node; the same push re-run after the leader was killed mid-push gives the
same release, once; each refusal end to end through the CLI with its code
and nothing committed; a node that proposes a release without its checks
(the test-only hook) cannot make it a release, and every chain agrees; a
reused idempotency key refused through the CLI and the batching client; a
release's proof checked offline; the release state identical on every node
after a restart and after a wiped node caught up through a snapshot."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import pty
import random
import select
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from fleetsuit.grpcutil import insecure_channel
from fleetsuit.ledger_client import SubmitBatcher, SubmitFailed
from fleetsuit.v1 import consensus_pb2 as pb
from fleetsuit.v1 import consensus_pb2_grpc as pb_grpc
from fleetsuit.v1 import dht_pb2, dht_pb2_grpc
from suit.keys import KeyAlgorithm, generate, private_pem, public_pem
from tests.support.cli import CLI, run_cli
from tests.support.cluster import LocalCluster
from tests.support.releases import VENDOR, Publisher, cid_of, envelope
from tests.support.wait import wait_until

pytestmark = pytest.mark.slow

MIB = 1024 * 1024
COMPACT_EVERY = 120


# ---------------------------------------------------------------- fixtures


class Keys:
    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.ci_key = generate(KeyAlgorithm.ED25519)
        self.ci = root / "ci.pem"
        self.ci.write_bytes(private_pem(self.ci_key))
        self.ci_pub = root / "ci.pub.pem"
        self.ci_pub.write_bytes(public_pem(self.ci_key.public_key()))
        rogue = generate(KeyAlgorithm.ED25519)
        self.rogue = root / "rogue.pem"
        self.rogue.write_bytes(private_pem(rogue))


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    return Keys(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, keys: Keys) -> Iterator[LocalCluster]:
    env = {
        "FLEETSUIT_CONSENSUS_COMPACT_EVERY_ENTRIES": str(COMPACT_EVERY),
        "FLEETSUIT_CONSENSUS_COMPACT_KEEP_ENTRIES": "20",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # for the nodes started now and those restarted by the tests
    c = LocalCluster(3, tmp_path_factory.mktemp("cluster"), trust_anchors=[keys.ci_pub])
    try:
        wait_until(lambda: _anchors_everywhere(c), 60, "the trust anchors applied on every node")
        yield c
    finally:
        c.close()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _ids(cluster: LocalCluster) -> list[str]:
    return [n["id"] for n in cluster.nodes]


def _releases_stub(cluster: LocalCluster, node_id: str) -> tuple[grpc.Channel, pb_grpc.ReleasesStub]:
    channel = grpc.insecure_channel(cluster.endpoint(node_id))
    return channel, pb_grpc.ReleasesStub(channel)


def _ledger_stub(cluster: LocalCluster, node_id: str) -> tuple[grpc.Channel, pb_grpc.LedgerStub]:
    channel = grpc.insecure_channel(cluster.endpoint(node_id))
    return channel, pb_grpc.LedgerStub(channel)


def _anchors_everywhere(cluster: LocalCluster) -> bool:
    for nid in _ids(cluster):
        channel, stub = _releases_stub(cluster, nid)
        with channel:
            if not stub.TrustAnchors(pb.TrustAnchorsRequest(stale_ok=True), timeout=2).anchors:
                return False
    return True


def _leader(cluster: LocalCluster, among: list[str] | None = None) -> str | None:
    for nid in among or _ids(cluster):
        channel, stub = _ledger_stub(cluster, nid)
        with channel:
            try:
                s = stub.Status(pb.StatusRequest(), timeout=1)
            except grpc.RpcError:
                continue
            if s.role == "leader":
                return nid
    return None


def _state(cluster: LocalCluster, node_id: str) -> tuple[Any, ...]:
    """What a node holds of the release state (its own applied state)."""
    channel, stub = _releases_stub(cluster, node_id)
    with channel:
        releases = stub.ListReleases(pb.ListReleasesRequest(stale_ok=True, include_envelope=True), timeout=5)
        refusals = stub.ListRefusals(pb.ListRefusalsRequest(stale_ok=True), timeout=5)
        anchors = stub.TrustAnchors(pb.TrustAnchorsRequest(stale_ok=True), timeout=5)
    return (
        [r.SerializeToString(deterministic=True) for r in releases.releases],
        [r.SerializeToString(deterministic=True) for r in refusals.refusals],
        [a.SerializeToString(deterministic=True) for a in anchors.anchors],
    )


def _same_state_everywhere(cluster: LocalCluster, among: list[str] | None = None) -> tuple[Any, ...] | None:
    states = [_state(cluster, nid) for nid in among or _ids(cluster)]
    return states[0] if all(s == states[0] for s in states) else None


def _chains_agree(cluster: LocalCluster) -> bool:
    heads = []
    for nid in _ids(cluster):
        channel, stub = _ledger_stub(cluster, nid)
        with channel:
            heads.append(stub.Status(pb.StatusRequest(consistent=True), timeout=5).block_height)
    height = min(heads)
    hashes = set()
    for nid in _ids(cluster):
        channel, stub = _ledger_stub(cluster, nid)
        with channel:
            hashes.add(stub.GetBlock(pb.GetBlockRequest(height=height), timeout=5).hash)
    return len(hashes) == 1


def _push(cluster: LocalCluster, node_id: str, payload: Path | None, component: str, sequence: int,
          key: Path | None, *extra: str) -> subprocess.CompletedProcess[str]:
    given = [str(payload)] if payload is not None else []
    signing = ["--key", str(key)] if key is not None else []
    return run_cli("release", "push", *given, "--component", component, "--sequence", str(sequence),
                   *signing, "--endpoint", cluster.endpoint(node_id), "--json", *extra,
                   timeout_s=180)


def _write_payload(path: Path, size: int, seed: int) -> Path:
    path.write_bytes(random.Random(seed).randbytes(size))
    return path


def _list(cluster: LocalCluster, node_id: str, *extra: str) -> list[dict[str, Any]]:
    out = run_cli("release", "list", "--json", "--endpoint", cluster.endpoint(node_id), *extra, check=True)
    doc = json.loads(out.stdout)
    releases: list[dict[str, Any]] = doc["releases"] if isinstance(doc, dict) else doc
    return releases


# ---------------------------------------------------------------- tests


def _run_in_terminal(args: list[str], timeout_s: float) -> tuple[int, str]:
    """Run a command with its stdout and stderr on a pseudo-terminal (as a
    person at a terminal sees it); its exit code and everything it wrote."""
    main, secondary = pty.openpty()
    proc = subprocess.Popen(args, stdout=secondary, stderr=secondary, stdin=subprocess.DEVNULL)
    os.close(secondary)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([main], [], [], 0.2)
            if ready:
                try:
                    data = os.read(main, 65536)
                except OSError:
                    break  # the terminal closed: the command ended
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
        code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        os.close(main)
    return code, b"".join(chunks).decode(errors="replace")


def test_a_20_mib_push_shows_progress_and_every_node_lists_it(
    cluster: LocalCluster, keys: Keys, tmp_path: Path
) -> None:
    payload = _write_payload(tmp_path / "fw-1.bin", 20 * MIB, seed=1)
    node = _ids(cluster)[1]
    code, screen = _run_in_terminal(
        [*CLI, "release", "push", str(payload), "--component", "fw", "--sequence", "1", "--key", str(keys.ci),
         "--device-class", "board-a", "--endpoint", cluster.endpoint(node)], timeout_s=180)
    assert code == 0, screen
    assert "\r" in screen and "%" in screen  # a progress bar redrawn in place
    assert "fw@1" in screen
    digest = cid_of(payload.read_bytes())
    for nid in _ids(cluster):
        [release] = [r for r in _list(cluster, nid) if r["release_id"] == "fw@1"]
        assert release["payload_cid"] == digest and release["payload_size"] == 20 * MIB
        assert release["state"] == "active" and release["sequence_number"] == 1


def test_a_push_rerun_after_the_leader_was_killed_mid_push_gives_the_same_release_once(
    cluster: LocalCluster, keys: Keys, tmp_path: Path
) -> None:
    payload = _write_payload(tmp_path / "fw-2.bin", 20 * MIB, seed=2)
    leader = wait_until(lambda: _leader(cluster), 30, "a leader")
    follower = next(n for n in _ids(cluster) if n != leader)
    args = [*CLI, "release", "push", str(payload), "--component", "fw", "--sequence", "2", "--key", str(keys.ci),
            "--device-class", "board-a", "--endpoint", cluster.endpoint(follower), "--json"]
    push = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert push.stderr is not None
        push.stderr.readline()  # the upload has started
        cluster.kill(leader)
        out, err = push.communicate(timeout=180)
    finally:
        if push.poll() is None:
            push.kill()
            push.wait(timeout=10)
    survivors = [n for n in _ids(cluster) if n != leader]
    rerun = _push(cluster, survivors[-1], payload, "fw", 2, keys.ci, "--device-class", "board-a")
    assert rerun.returncode == 0, rerun.stderr
    again = json.loads(rerun.stdout)
    if push.returncode == 0:
        first = json.loads(out)
        assert (again["release_id"], again["block_height"], again["position"]) == (
            first["release_id"], first["block_height"], first["position"])
        assert again["duplicate"] is True
    cluster.restart(leader)
    wait_until(lambda: _same_state_everywhere(cluster), 60, "the same release state on every node")
    for nid in _ids(cluster):
        assert [r["release_id"] for r in _list(cluster, nid, "--component", "fw")].count("fw@2") == 1


def _assert_refused(cluster: LocalCluster, result: subprocess.CompletedProcess[str], code: str,
                    before: tuple[Any, ...]) -> None:
    assert result.returncode == 1, result.stdout + result.stderr
    last = result.stderr.strip().splitlines()[-1]  # progress notes come before it
    assert last.startswith(f"fleetsuit: {code}: "), result.stderr
    assert "Traceback" not in result.stderr
    releases_before = before[0]
    assert _state(cluster, _ids(cluster)[0])[0] == releases_before  # nothing committed


def test_each_refusal_end_to_end_with_its_code_and_nothing_committed(
    cluster: LocalCluster, keys: Keys, tmp_path: Path
) -> None:
    node = _ids(cluster)[0]
    small = _write_payload(tmp_path / "app-5.bin", 64 * 1024, seed=5)
    ok = _push(cluster, node, small, "app", 5, keys.ci)
    assert ok.returncode == 0, ok.stderr
    wait_until(lambda: _same_state_everywhere(cluster), 30, "the release everywhere")
    before = _state(cluster, node)

    other = _write_payload(tmp_path / "app-6.bin", 64 * 1024, seed=6)
    _assert_refused(cluster, _push(cluster, node, other, "app", 6, keys.rogue), "UNTRUSTED_KEY", before)
    # The refused push took back the pin it placed on the payload.
    with grpc.insecure_channel(cluster.endpoint(node, "dht")) as channel:
        stat = dht_pb2_grpc.DhtStub(channel).Stat(
            dht_pb2.BlobStatRequest(content_id=cid_of(other.read_bytes()), lookup=False), timeout=5)
    assert stat.local and not stat.pinned
    _assert_refused(cluster, _push(cluster, node, other, "app", 3, keys.ci), "STALE_SEQUENCE", before)
    missing = "sha256:" + hashlib.sha256(b"never uploaded").hexdigest()
    _assert_refused(cluster, _push(cluster, node, None, "app", 6, keys.ci, "--payload-cid", missing,
                                   "--payload-size", "14"), "PAYLOAD_MISSING", before)
    # An envelope signed for one payload, pushed with another.
    ci = Publisher(keys.ci_key)  # type: ignore[arg-type]
    env = tmp_path / "app-6.suit"
    env.write_bytes(envelope(ci, "app", 6, small.read_bytes(), vendor=VENDOR))
    _assert_refused(cluster, _push(cluster, node, other, "app", 6, None, "--envelope", str(env)),
                    "DIGEST_MISMATCH", before)
    # A revoked release pushed again.
    seven = _write_payload(tmp_path / "app-7.bin", 64 * 1024, seed=7)
    assert _push(cluster, node, seven, "app", 7, keys.ci).returncode == 0
    revoked = run_cli("release", "revoke", "app@7", "--reason", "bad build", "--endpoint", cluster.endpoint(node))
    assert revoked.returncode == 0, revoked.stderr
    before = _state(cluster, node)
    _assert_refused(cluster, _push(cluster, node, seven, "app", 7, keys.ci), "REVOKED", before)
    shown = json.loads(run_cli("release", "show", "app@7", "--json", "--endpoint", cluster.endpoint(node),
                               check=True).stdout)
    assert shown["state"] == "revoked"


def test_a_release_proposed_without_checks_is_refused_by_every_node(
    cluster: LocalCluster, keys: Keys, tmp_path: Path
) -> None:
    """The test-only hook: one node proposes release entries without its
    checks, as a faulty or malicious leader would; every node records them
    as refused when applying, and the chains still agree."""
    ids = _ids(cluster)
    rogue_node = ids[2]
    node = cluster.node(rogue_node)
    cluster.kill(rogue_node)
    node["commands"]["consensus"] = [*node["commands"]["consensus"], "--unsafe-skip-release-checks"]
    cluster.restart(rogue_node)
    try:
        rogue = Publisher.new(77)
        payload = b"unsigned by any anchor"
        entry = pb.LedgerEntry(client_id="rogue", request_id=1, release_published=pb.ReleasePublished(
            release_id="evil@100", envelope=envelope(rogue, "evil", 100, payload), component="evil",
            sequence_number=100, payload_cid=cid_of(payload), payload_size=len(payload),
            device_classes=["default"], vendor_domain=VENDOR))

        def submit() -> grpc.RpcError | None:
            channel, stub = _ledger_stub(cluster, rogue_node)
            with channel:
                try:
                    stub.Submit(pb.SubmitRequest(entry=entry, timeout_ms=5000), timeout=10)
                except grpc.RpcError as exc:
                    if dict(exc.trailing_metadata() or ()).get("fleetsuit-error-code") == "UNTRUSTED_KEY":
                        return exc
                    raise
            return None

        refused = wait_until(submit, 60, "the unchecked entry answered as refused")
        assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION
        wait_until(lambda: _same_state_everywhere(cluster), 30, "the same release state on every node")
        for nid in ids:
            channel, stub = _releases_stub(cluster, nid)
            with channel:
                refusals = stub.ListRefusals(pb.ListRefusalsRequest(stale_ok=True), timeout=5).refusals
                assert [r.code for r in refusals if r.release_id == "evil@100"] == ["UNTRUSTED_KEY"]
                with pytest.raises(grpc.RpcError) as missing:
                    stub.GetRelease(pb.GetReleaseRequest(release_id="evil@100", stale_ok=True), timeout=5)
                assert missing.value.code() == grpc.StatusCode.NOT_FOUND
        assert wait_until(lambda: _chains_agree(cluster), 30, "one chain")
    finally:
        cluster.kill(rogue_node)
        node["commands"]["consensus"] = node["commands"]["consensus"][:-1]
        cluster.restart(rogue_node)


def test_a_reused_idempotency_key_is_refused_through_the_cli_and_the_batching_client(
    cluster: LocalCluster
) -> None:
    node = _ids(cluster)[0]
    endpoint = cluster.endpoint(node)
    first = run_cli("ledger", "append", "--client-id", "pipeline-7", "--request-id", "41", "--endpoint", endpoint,
                    "--json", "one payload")
    assert first.returncode == 0, first.stderr
    again = run_cli("ledger", "append", "--client-id", "pipeline-7", "--request-id", "41", "--endpoint", endpoint,
                    "--json", "one payload")
    assert again.returncode == 0 and json.loads(again.stdout)["duplicate"] is True
    other = run_cli("ledger", "append", "--client-id", "pipeline-7", "--request-id", "41", "--endpoint", endpoint,
                    "another payload")
    assert other.returncode == 1 and "IDEMPOTENCY_KEY_REUSED" in other.stderr, other.stderr

    async def batched() -> SubmitFailed:
        channel = insecure_channel(endpoint)
        batcher = SubmitBatcher(pb_grpc.LedgerStub(channel), client_id="batcher-1")
        try:
            await batcher.submit(pb.LedgerEntry(request_id=9, app=pb.AppEntry(payload=b"a")))
            with pytest.raises(SubmitFailed) as failed:
                await batcher.submit(pb.LedgerEntry(request_id=9, app=pb.AppEntry(payload=b"b")))
            return failed.value
        finally:
            await batcher.close()
            await channel.close()

    failed = asyncio.run(batched())
    assert failed.code == "IDEMPOTENCY_KEY_REUSED"


def test_a_release_proof_checks_offline_against_the_cluster_anchors(
    cluster: LocalCluster, keys: Keys, tmp_path: Path
) -> None:
    payload = _write_payload(tmp_path / "boot-1.bin", 128 * 1024, seed=11)
    proof = tmp_path / "boot-1.proof"
    pushed = _push(cluster, _ids(cluster)[0], payload, "bootloader", 1, keys.ci, "--proof", str(proof))
    assert pushed.returncode == 0, pushed.stderr
    checked = run_cli("ledger", "verify-proof", str(proof), "--anchors", str(cluster.doc["anchors"]), "--json")
    assert checked.returncode == 0, checked.stderr
    doc = json.loads(checked.stdout)
    assert doc["kind"] == "release_published" and doc["height"] == json.loads(pushed.stdout)["block_height"]
    # A byte changed anywhere: the proof no longer verifies.
    raw = bytearray(proof.read_bytes())
    raw[len(raw) // 2] ^= 1
    proof.write_bytes(bytes(raw))
    assert run_cli("ledger", "verify-proof", str(proof), "--anchors", str(cluster.doc["anchors"])).returncode == 1


def test_release_state_is_identical_after_a_restart_and_a_wiped_nodes_snapshot_catch_up(
    cluster: LocalCluster, keys: Keys, tmp_path: Path
) -> None:
    ids = _ids(cluster)
    leader = wait_until(lambda: _leader(cluster), 30, "a leader")
    follower = next(n for n in ids if n != leader)
    cluster.kill(follower, sig=signal.SIGTERM)
    data_dir = Path(cluster.node(follower)["data_dir"])
    for item in data_dir.iterdir():
        if item.name in ("consensus", "snapshots") and item.is_dir():  # the node key stays
            shutil.rmtree(item)
    # Enough entries that the others compact their logs past the wiped node.
    payload = _write_payload(tmp_path / "tool-1.bin", 4096, seed=21)
    assert _push(cluster, leader, payload, "tool", 1, keys.ci).returncode == 0
    channel, stub = _ledger_stub(cluster, leader)
    with channel:
        for rid in range(1, COMPACT_EVERY * 2):
            entry = pb.LedgerEntry(client_id="filler", request_id=rid, app=pb.AppEntry(payload=b"x" * 32))
            stub.Submit(pb.SubmitRequest(entry=entry, timeout_ms=5000), timeout=10)
        snapshot_index = stub.Status(pb.StatusRequest(), timeout=5).snapshot_index
    assert snapshot_index > 0
    cluster.restart(follower)
    state = wait_until(lambda: _same_state_everywhere(cluster), 90, "the wiped node's release state")
    assert any(b"tool@1" in r for r in state[0])
    # A restart (kill -9) of another node: the state it reads back is the same.
    other = next(n for n in ids if n not in (leader, follower))
    cluster.kill(other)
    cluster.restart(other)
    wait_until(lambda: _same_state_everywhere(cluster), 60, "the restarted node's release state")
    assert _chains_agree(cluster)



def _scrape(cluster: LocalCluster, node_id: str) -> dict[tuple[str, str], float]:
    """A node's consensus /metrics: {(name, labels): value}."""
    address = cluster.node(node_id)["metrics"]["consensus"]
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    out: dict[tuple[str, str], float] = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith("fleetsuit_release"):
            continue
        name_labels, _, value = line.rpartition(" ")
        name, _, labels = name_labels.partition("{")
        out[(name, labels.rstrip("}"))] = float(value)
    return out


def test_release_metrics_count_states_refusals_and_pushes(
    cluster: LocalCluster, keys: Keys, tmp_path: Path
) -> None:
    """Releases by state (alike on every node), the refusals recorded on
    apply by code (the unchecked entry of the test above), and the pushes a
    node answered by outcome (counted from here: a restart resets them)."""
    ids = _ids(cluster)
    node = ids[0]
    before = wait_until(lambda: _scrape(cluster, node), 30, f"{node}'s metrics")
    payload = _write_payload(tmp_path / "meter-1.bin", 4096, seed=31)
    assert _push(cluster, node, payload, "meter", 1, keys.ci).returncode == 0
    assert _push(cluster, node, payload, "meter", 2, keys.rogue).returncode == 1
    wait_until(lambda: _same_state_everywhere(cluster), 30, "the same release state on every node")
    scraped = {nid: wait_until(lambda nid=nid: _scrape(cluster, nid), 30, f"{nid}'s metrics") for nid in ids}
    listed = _list(cluster, node)
    for state in ("active", "revoked"):
        expected = sum(1 for r in listed if r["state"] == state)
        assert {s[("fleetsuit_releases", f'state="{state}"')] for s in scraped.values()} == {expected}, state
    assert {s[("fleetsuit_release_refusals", 'code="UNTRUSTED_KEY"')] for s in scraped.values()} == {1.0}
    after = scraped[node]

    def pushed(doc: dict[tuple[str, str], float], outcome: str) -> float:
        return doc.get(("fleetsuit_release_pushes_total", f'outcome="{outcome}"'), 0.0)

    assert pushed(after, "published") - pushed(before, "published") == 1
    assert pushed(after, "UNTRUSTED_KEY") - pushed(before, "UNTRUSTED_KEY") == 1


def test_a_node_cut_off_from_the_majority_still_lists_releases_when_stale_reads_are_asked(
    cluster: LocalCluster, keys: Keys, tmp_path: Path
) -> None:
    """DESIGN: a partitioned minority keeps serving committed releases. With
    the two other nodes down, the survivor answers a stale read from its own
    state and refuses a linearizable one (it cannot know it is current), in
    one line and a non-zero exit."""
    ids = _ids(cluster)
    survivor, others = ids[0], ids[1:]
    expected = sorted(r["release_id"] for r in _list(cluster, survivor))
    for nid in others:
        cluster.kill(nid, sig=signal.SIGTERM)
    try:
        stale = run_cli("release", "list", "--json", "--stale", "--endpoint", cluster.endpoint(survivor),
                        "--retry-deadline", "2")
        assert stale.returncode == 0, stale.stderr
        doc = json.loads(stale.stdout)
        listed = doc["releases"] if isinstance(doc, dict) else doc
        assert sorted(r["release_id"] for r in listed) == expected
        current = run_cli("release", "list", "--json", "--endpoint", cluster.endpoint(survivor),
                          "--retry-deadline", "2", "--timeout", "2")
        # The node answers READ_TIMEOUT within the call's deadline (definite:
        # nothing to retry blindly); the command retries, then says so.
        assert current.returncode == 1, current.stdout
        assert current.stderr.strip().splitlines()[-1].startswith("fleetsuit: READ_TIMEOUT: "), current.stderr
        # A push cannot commit without a majority: it gives up at its retry
        # deadline, and nothing of it was committed.
        payload = _write_payload(tmp_path / "lonely-1.bin", 4096, seed=41)
        pushed = _push(cluster, survivor, payload, "lonely", 1, keys.ci, "--retry-deadline", "3", "--timeout", "2")
        assert pushed.returncode == 1, pushed.stdout
        last = pushed.stderr.strip().splitlines()[-1]
        assert "Traceback" not in pushed.stderr, pushed.stderr
        # Definite: its checks (a read barrier first) could not finish in a
        # minority, so the node says nothing was proposed.
        assert last.startswith("fleetsuit: CHECK_UNAVAILABLE: "), pushed.stderr
    finally:
        for nid in others:
            cluster.restart(nid)
        state = wait_until(lambda: _same_state_everywhere(cluster), 60, "the nodes back")
    assert not any(b"lonely@1" in r for r in state[0])
