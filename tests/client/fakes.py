"""A test double of one node's remote edge for the release client: Ledger
(Status, Submit, GetProof), Releases and Dht on one in-process gRPC server
bound on 127.0.0.1:0. It keeps the server's promises the client relies on
(idempotency per key: the same bytes get the first answer with
duplicate=true, other bytes IDEMPOTENCY_KEY_REUSED; errors with
``fleetsuit-error-code`` / ``fleetsuit-outcome`` and ``CODE: message``) and
lets a test script failures ahead of them. It checks nothing of a release:
the real checks are the cluster's (tests/integration)."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc

from fleetsuit.v1 import consensus_pb2 as pb
from fleetsuit.v1 import consensus_pb2_grpc as pb_grpc
from fleetsuit.v1 import dht_pb2, dht_pb2_grpc


@dataclass(frozen=True)
class Failure:
    """A scripted error: gRPC status, fleetsuit code, outcome."""

    status: grpc.StatusCode
    code: str
    message: str = "scripted"
    outcome: str = "definite"


OUTCOME_UNKNOWN = Failure(grpc.StatusCode.UNAVAILABLE, "OUTCOME_UNKNOWN", "not applied in time", "unknown")
NO_LEADER = Failure(grpc.StatusCode.UNAVAILABLE, "NO_LEADER", "no leader known")


def _abort(context: grpc.ServicerContext, failure: Failure) -> None:
    context.set_trailing_metadata((
        ("fleetsuit-error-code", failure.code), ("fleetsuit-outcome", failure.outcome)))
    context.abort(failure.status, f"{failure.code}: {failure.message}")


@dataclass
class FakeNode:
    """The state behind the servicers; tests read and script it."""

    node_id: str = "n1"
    address: str = ""
    members: list[pb.Member] = field(default_factory=list)
    # Submit: failures answered (in order) before the real behaviour.
    submit_script: list[Failure] = field(default_factory=list)
    submitted: list[bytes] = field(default_factory=list)  # every Submit's entry, encoded
    answers: dict[tuple[str, int], tuple[bytes, pb.SubmitResponse]] = field(default_factory=dict)
    releases: dict[str, pb.Release] = field(default_factory=dict)
    refuse_with: Failure | None = None  # every release_published entry is refused so
    blobs: dict[str, bytes] = field(default_factory=dict)
    puts: int = 0
    certified_height: int = 0
    block_height: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def status(self) -> pb.StatusResponse:
        return pb.StatusResponse(
            node_id=self.node_id, role="leader", term=2, leader_id=self.node_id,
            block_height=self.block_height, certified_height=self.certified_height, cluster_id="fs-test",
            members=self.members or [pb.Member(node_id=self.node_id, address=self.address, voter=True)],
            services={"consensus": self.address, "dht": self.address},
        )


class FakeLedger(pb_grpc.LedgerServicer):
    def __init__(self, node: FakeNode) -> None:
        self.node = node

    def Status(self, request: pb.StatusRequest, context: grpc.ServicerContext) -> pb.StatusResponse:  # noqa: N802
        return self.node.status()

    def Submit(self, request: pb.SubmitRequest, context: grpc.ServicerContext) -> pb.SubmitResponse:  # noqa: N802
        node = self.node
        raw = request.entry.SerializeToString()
        with node.lock:
            node.submitted.append(raw)
            if node.submit_script:
                _abort(context, node.submit_script.pop(0))
            key = (request.entry.client_id, request.entry.request_id)
            first = node.answers.get(key)
            if first is not None:
                if first[0] != raw:
                    _abort(context, Failure(grpc.StatusCode.ALREADY_EXISTS, "IDEMPOTENCY_KEY_REUSED",
                                            "key used for another entry"))
                answer = pb.SubmitResponse()
                answer.CopyFrom(first[1])
                answer.duplicate = True
                return answer
            entry = request.entry
            if entry.WhichOneof("kind") == "release_published":
                if node.refuse_with is not None:
                    _abort(context, node.refuse_with)
                published = entry.release_published
                if published.release_id in node.releases:
                    _abort(context, Failure(grpc.StatusCode.FAILED_PRECONDITION, "DUPLICATE_RELEASE",
                                            f"release {published.release_id} exists"))
            node.block_height += 1
            answer = pb.SubmitResponse(index=10 + node.block_height, block_height=node.block_height,
                                       position=0)
            node.answers[key] = (raw, answer)
            if entry.WhichOneof("kind") == "release_published":
                p = entry.release_published
                node.releases[p.release_id] = pb.Release(
                    release_id=p.release_id, component=p.component, device_classes=p.device_classes,
                    vendor_domain=p.vendor_domain, sequence_number=p.sequence_number,
                    payload_cid=p.payload_cid, payload_size=p.payload_size, rollout=p.rollout,
                    state="active", index=answer.index, block_height=answer.block_height,
                    position=answer.position, signer_key_id="ci",
                )
            return answer

    def GetProof(self, request: pb.ProofRequest, context: grpc.ServicerContext) -> pb.EntryProof:  # noqa: N802
        if request.height > self.node.certified_height:
            _abort(context, Failure(grpc.StatusCode.FAILED_PRECONDITION, "NOT_CERTIFIED_YET"))
        return pb.EntryProof(cluster_id="fs-test", height=request.height, entry=b"entry")


class FakeReleases(pb_grpc.ReleasesServicer):
    def __init__(self, node: FakeNode) -> None:
        self.node = node

    def _get(self, release_id: str, context: grpc.ServicerContext) -> pb.Release:
        release = self.node.releases.get(release_id)
        if release is None:
            _abort(context, Failure(grpc.StatusCode.NOT_FOUND, "RELEASE_NOT_FOUND", f"no release {release_id}"))
        assert release is not None
        return release

    def GetRelease(self, request: pb.GetReleaseRequest, context: grpc.ServicerContext) -> pb.Release:  # noqa: N802
        return self._get(request.release_id, context)

    def ListReleases(  # noqa: N802
        self, request: pb.ListReleasesRequest, context: grpc.ServicerContext
    ) -> pb.ListReleasesResponse:
        found = [r for r in self.node.releases.values()
                 if (not request.component or r.component == request.component)
                 and (not request.state or r.state == request.state)]
        return pb.ListReleasesResponse(releases=found, applied_index=7)

    def CurrentRelease(  # noqa: N802
        self, request: pb.CurrentReleaseRequest, context: grpc.ServicerContext
    ) -> pb.Release:
        found = sorted((r for r in self.node.releases.values()
                        if r.component == request.component and r.state in ("active", "paused")
                        and (not request.device_class or request.device_class in r.device_classes)),
                       key=lambda r: r.sequence_number)
        if not found:
            _abort(context, Failure(grpc.StatusCode.NOT_FOUND, "RELEASE_NOT_FOUND", "no current release"))
        return found[-1]

    def ListRefusals(  # noqa: N802
        self, request: pb.ListRefusalsRequest, context: grpc.ServicerContext
    ) -> pb.ListRefusalsResponse:
        return pb.ListRefusalsResponse(refusals=[pb.Refusal(
            index=4, block_height=2, position=1, kind="release_published", release_id="ota@1",
            code="UNTRUSTED_KEY", message="signed by no anchor")])

    def TrustAnchors(  # noqa: N802
        self, request: pb.TrustAnchorsRequest, context: grpc.ServicerContext
    ) -> pb.TrustAnchorsResponse:
        return pb.TrustAnchorsResponse(anchors=[pb.TrustAnchor(
            key_id="ci", public_key_pem=b"PEM", components=["ota"], device_classes=["default"])])


class FakeDht(dht_pb2_grpc.DhtServicer):
    def __init__(self, node: FakeNode) -> None:
        self.node = node

    def Stat(self, request: dht_pb2.BlobStatRequest, context: grpc.ServicerContext) -> dht_pb2.BlobStatResponse:  # noqa: N802
        blob = self.node.blobs.get(request.content_id)
        if blob is None:
            return dht_pb2.BlobStatResponse(content_id=request.content_id)
        return dht_pb2.BlobStatResponse(content_id=request.content_id, size=len(blob), local=True, pinned=True)

    def Put(self, request_iterator: Iterator[dht_pb2.BlobPutRequest], context: grpc.ServicerContext) -> Any:  # noqa: N802
        data = b"".join(r.data for r in request_iterator)
        cid = "sha256:" + hashlib.sha256(data).hexdigest()
        with self.node.lock:
            self.node.blobs[cid] = data
            self.node.puts += 1
        return dht_pb2.BlobPutResponse(content_id=cid, size=len(data), chunk_count=1)


@contextmanager
def fake_node(node: FakeNode | None = None) -> Iterator[FakeNode]:
    """A FakeNode served on 127.0.0.1:0 (its address filled in); stopped afterwards."""
    node = node or FakeNode()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_LedgerServicer_to_server(FakeLedger(node), server)
    pb_grpc.add_ReleasesServicer_to_server(FakeReleases(node), server)
    dht_pb2_grpc.add_DhtServicer_to_server(FakeDht(node), server)
    port = server.add_insecure_port("127.0.0.1:0")
    node.address = f"127.0.0.1:{port}"
    server.start()
    try:
        yield node
    finally:
        server.stop(None).wait()
