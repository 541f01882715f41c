"""Validation before commit (issue 11): a release entry is checked by the
node it is submitted to before that node proposes it — the ledger's own
deterministic checks, its manifest service's Validate and its dht's Stat —
and a refusal is definite (nothing was proposed). Real grpc.aio servers on
127.0.0.1:0: a one-voter consensus node (the server.py wiring: the Ledger
API with its ReleaseChecker, the trust-anchor bootstrap), a manifest
service and a dht node, in this process."""

from __future__ import annotations

import hashlib
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from prometheus_client import CollectorRegistry

from fleetsuit import grpcutil, rpc
from fleetsuit.v1 import consensus_pb2 as pb
from fleetsuit.v1 import consensus_pb2_grpc as pb_grpc
from fleetsuit.v1 import dht_pb2, dht_pb2_grpc
from services.consensus.ledger.keys import RequestKey
from services.consensus.metrics import ConsensusMetrics
from services.consensus.runtime import ConsensusNode
from services.dht.config import DhtConfig
from services.dht.kv import MemoryKeyValue
from services.dht.metrics import DhtMetrics
from services.dht.server import DhtDeps
from services.dht.server import build_server as build_dht
from services.dht.store import BlobStore
from services.manifest.config import ManifestConfig
from services.manifest.server import ManifestDeps
from services.manifest.server import build_server as build_manifest
from suit.build import build_envelope, sign_envelope
from tests.support.releases import VENDOR, Publisher, cid_of, envelope, publish, revoke
from tests.support.wait import ready, wait_for

from .one_voter import start_one_voter

FIRMWARE = random.Random(11).randbytes(200_000)
MIB = 1024 * 1024
Stop = Callable[[], Awaitable[None]]


async def _nothing() -> None:
    return None


@dataclass
class Harness:
    node: ConsensusNode
    ledger: pb_grpc.LedgerStub
    dht: dht_pb2_grpc.DhtStub | None
    metrics: ConsensusMetrics
    manifest_registry: CollectorRegistry
    stop_manifest: Stop

    def checks(self, outcome: str) -> float:
        return self.metrics.registry.get_sample_value("fleetsuit_release_checks_total", {"outcome": outcome}) or 0.0

    async def put(self, data: bytes) -> str:
        assert self.dht is not None
        reply = await self.dht.Put(iter([dht_pb2.BlobPutRequest(data=data)]))
        return str(reply.content_id)

    async def submit(self, raw: bytes) -> pb.SubmitResponse:
        answer: pb.SubmitResponse = await self.ledger.Submit(
            pb.SubmitRequest(entry=pb.LedgerEntry.FromString(raw), timeout_ms=5_000), timeout=10
        )
        return answer

    async def refused(self, raw: bytes) -> tuple[grpc.StatusCode, str, str]:
        """(status, fleetsuit-error-code, fleetsuit-outcome) of a refused submission."""
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await self.submit(raw)
        trailers = dict(info.value.trailing_metadata() or ())
        return info.value.code(), str(trailers.get(rpc.ERROR_CODE_KEY)), str(trailers.get("fleetsuit-outcome"))


async def _manifest(stack: AsyncExitStack, registry: CollectorRegistry) -> tuple[str, Stop]:
    """A manifest service's address, and how to stop it (once)."""
    deps = ManifestDeps(registry=registry)
    server, port = build_manifest(ManifestConfig(listen="127.0.0.1:0", metrics_port=-1), deps)
    await server.start()
    stopped = False

    async def stop() -> None:
        nonlocal stopped
        if not stopped:
            stopped = True
            await server.stop(None)

    stack.push_async_callback(stop)
    return f"127.0.0.1:{port}", stop


async def _dht(stack: AsyncExitStack) -> str:
    config = DhtConfig(node_id="d1", listen="127.0.0.1:0", chunk_bytes=64 * 1024, max_disk_bytes=64 * MIB,
                       rpc_timeout_ms=500, metrics_port=-1).validate()
    deps = DhtDeps(store=BlobStore(MemoryKeyValue(), 64 * MIB), metrics=DhtMetrics(CollectorRegistry()),
                   rng=random.Random(0))
    server, port = build_dht(config, deps)
    await server.start()
    assert deps.node is not None
    node = deps.node
    stack.push_async_callback(server.stop, 0)
    stack.push_async_callback(node.close)
    return f"127.0.0.1:{port}"


@asynccontextmanager
async def harness(
    tmp_path: Path, anchors: Sequence[Path] = (), *, services: bool = True, extra: Sequence[str] = ()
) -> AsyncIterator[Harness]:
    """A one-voter consensus node with ``anchors`` configured and, with
    ``services``, a manifest and a dht of its own; the anchors in the
    ledger before it yields."""
    async with AsyncExitStack() as stack:
        manifest_registry = CollectorRegistry()
        stop_manifest: Stop = _nothing
        tmp_path.mkdir(parents=True, exist_ok=True)
        args = ["--node-id", "n1", "--listen", "127.0.0.1:0", "--data", str(tmp_path), "--cluster-id", "checks",
                *(a for path in anchors for a in ("--trust-anchor", str(path))), *extra]
        dht_stub = None
        if services:
            manifest_at, stop_manifest = await _manifest(stack, manifest_registry)
            dht_at = await _dht(stack)
            args += ["--manifest-endpoint", manifest_at, "--dht-endpoint", dht_at]
            channel = grpcutil.insecure_channel(dht_at)
            stack.push_async_callback(channel.close)
            dht_stub = dht_pb2_grpc.DhtStub(channel)
        started = await start_one_voter(stack, tmp_path, args, "checks")
        node, metrics, channel = started.node, started.metrics, started.channel
        if anchors:
            await wait_for(lambda: ready(bool(node.machine.releases.anchors())), 10, "the trust anchors")
        yield Harness(node, pb_grpc.LedgerStub(channel), dht_stub, metrics, manifest_registry, stop_manifest)


@pytest.fixture
def ci() -> Publisher:
    return Publisher.new(1)


@pytest.fixture
def ci_pem(tmp_path: Path, ci: Publisher) -> Path:
    path = tmp_path / "ci.pem"
    path.write_bytes(ci.pem)
    return path


def _envelope_stating(publisher: Publisher, component: str, sequence: int, digest_of: bytes, size: int) -> bytes:
    """An envelope whose manifest states the digest of ``digest_of`` and ``size``."""
    description = {
        "manifest-version": 1,
        "manifest-sequence-number": sequence,
        "components": [{
            "install-id": [component.encode().hex()],
            "vendor-domain": VENDOR,
            "class-info": "default",
            "install-digest": {"algorithm-id": "sha256", "digest-bytes": hashlib.sha256(digest_of).hexdigest()},
            "install-size": size,
            "uri": f"fleetsuit:{cid_of(digest_of)}",
        }],
    }
    signed: bytes = sign_envelope(build_envelope(description, {}), publisher.key)
    return signed


@pytest.mark.asyncio
async def test_a_release_that_passes_every_check_is_committed_and_its_retry_answered_by_the_ledger(
    tmp_path: Path, ci: Publisher, ci_pem: Path
) -> None:
    async with harness(tmp_path, [ci_pem]) as h:
        assert await h.put(FIRMWARE) == cid_of(FIRMWARE)
        entry = publish(ci, "fw", 3, FIRMWARE)
        first = await h.submit(entry)
        assert first.index > 0 and not first.duplicate
        again = await h.submit(entry)
        assert again.duplicate and again.index == first.index
        release = h.node.machine.releases.release("fw@3")
        assert release is not None and release.state == "active"
        # The retry is the release in effect: it passes at once and the
        # ledger answers it; the manifest service judged the first only.
        assert h.checks("passed") == 2.0
        assert h.manifest_registry.get_sample_value(
            "fleetsuit_manifest_validations_total", {"result": "accepted", "code": "OK"}
        ) == 1.0
        # Once revoked, the very same push is refused REVOKED, retry or not.
        await h.submit(revoke("fw@3", RequestKey("op", 1)))
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await h.submit(entry)
        assert dict(refused.value.trailing_metadata() or ())["fleetsuit-error-code"] == "REVOKED"


@pytest.mark.asyncio
async def test_refusals_before_proposal_are_definite_and_leave_nothing_in_the_ledger(
    tmp_path: Path, ci: Publisher, ci_pem: Path
) -> None:
    async with harness(tmp_path, [ci_pem]) as h:
        await h.put(FIRMWARE)
        await h.submit(publish(ci, "fw", 3, FIRMWARE))
        applied = h.node.machine.applied_index()
        stranger = Publisher.new(99)
        absent = FIRMWARE[:-1]
        cases = {
            # The ledger's own check (the code every node runs on apply).
            "UNTRUSTED_KEY": publish(stranger, "fw", 4, FIRMWARE),
            "STALE_SEQUENCE": publish(ci, "fw", 2, FIRMWARE),
            "INVALID_RELEASE": publish(ci, "fw", 5, FIRMWARE, envelope_bytes=envelope(ci, "boot", 5, FIRMWARE)),
            # The dht: nobody stores the payload.
            "PAYLOAD_MISSING": publish(ci, "fw", 6, absent),
        }
        # The dht holds the payload the manifest's digest names, but not at
        # the size the entry and the manifest say.
        oversized = pb.LedgerEntry.FromString(publish(ci, "fw", 7, FIRMWARE, key=RequestKey("ci", 7)))
        oversized.release_published.payload_size = len(FIRMWARE) + 1
        oversized.release_published.envelope = _envelope_stating(ci, "fw", 7, FIRMWARE, len(FIRMWARE) + 1)
        cases["DIGEST_MISMATCH"] = oversized.SerializeToString()
        for want, raw in cases.items():
            status, code, outcome = await h.refused(raw)
            assert (status, code, outcome) == (grpc.StatusCode.FAILED_PRECONDITION, want, "definite"), want
            assert h.checks(want) == 1.0, want
        assert h.node.machine.applied_index() == applied  # nothing was proposed
        assert h.node.machine.releases.refusals() == []
        assert [r.release_id for r in h.node.machine.releases.releases()] == ["fw@3"]


@pytest.mark.asyncio
async def test_an_unreachable_manifest_service_is_check_unavailable_and_nothing_is_proposed(
    tmp_path: Path, ci: Publisher, ci_pem: Path
) -> None:
    async with harness(tmp_path, [ci_pem]) as h:
        await h.put(FIRMWARE)
        await h.stop_manifest()
        applied = h.node.machine.applied_index()
        status, code, outcome = await h.refused(publish(ci, "fw", 3, FIRMWARE))
        assert (status, code, outcome) == (grpc.StatusCode.UNAVAILABLE, "CHECK_UNAVAILABLE", "definite")
        assert h.node.machine.applied_index() == applied
        assert h.checks("CHECK_UNAVAILABLE") == 1.0


@pytest.mark.asyncio
async def test_with_the_checks_skipped_the_node_proposes_and_applying_refuses(
    tmp_path: Path, ci: Publisher, ci_pem: Path
) -> None:
    async with harness(tmp_path, [ci_pem], extra=["--unsafe-skip-release-checks"]) as h:
        status, code, _ = await h.refused(publish(Publisher.new(99), "fw", 3, FIRMWARE))
        assert (status, code) == (grpc.StatusCode.FAILED_PRECONDITION, "UNTRUSTED_KEY")
        [refusal] = h.node.machine.releases.refusals()  # proposed, ordered, refused on apply
        assert (refusal.code, refusal.release_id) == ("UNTRUSTED_KEY", "fw@3")
        assert h.checks("skipped") == 1.0


@pytest.mark.asyncio
async def test_without_anchors_no_release_passes_and_without_services_their_checks_are_skipped(
    tmp_path: Path, ci: Publisher, ci_pem: Path
) -> None:
    async with harness(tmp_path / "none", services=False) as h:
        status, code, _ = await h.refused(publish(ci, "fw", 3, FIRMWARE))
        assert (status, code) == (grpc.StatusCode.FAILED_PRECONDITION, "NO_TRUST_ANCHORS")
    async with harness(tmp_path / "ledger-only", [ci_pem], services=False) as h:
        # No dht to ask: a payload stored nowhere is not noticed before commit.
        answer = await h.submit(publish(ci, "fw", 3, FIRMWARE))
        assert answer.index > 0 and h.checks("passed") == 1.0
