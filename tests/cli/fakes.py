"""In-process gRPC servers for command-line tests: a Ledger that records
what it is sent and answers fixed replies, and a server of another service
(health only) to point a command at by mistake."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from fleetsuit.v1 import consensus_pb2 as pb
from fleetsuit.v1 import consensus_pb2_grpc as pb_grpc

MEMBERS = [pb.Member(node_id="n1", address="127.0.0.1:7101", voter=True),
           pb.Member(node_id="n4", address="127.0.0.1:7131", voter=False)]


class FakeLedger(pb_grpc.LedgerServicer):
    def __init__(self) -> None:
        self.submitted: list[pb.LedgerEntry] = []
        self.membership: list[tuple[str, Any]] = []

    def Status(self, request: pb.StatusRequest, context: Any) -> pb.StatusResponse:  # noqa: N802
        return pb.StatusResponse(node_id="n1", role="leader", term=3, leader_id="n1", commit_index=9,
                                 applied_index=9, block_height=4, certified_height=4, cluster_id="fs-feed",
                                 members=MEMBERS[:1])

    def Submit(self, request: pb.SubmitRequest, context: Any) -> pb.SubmitResponse:  # noqa: N802
        self.submitted.append(request.entry)
        return pb.SubmitResponse(index=10 + len(self.submitted), block_height=5)

    def AddMember(self, request: pb.AddMemberRequest, context: Any) -> pb.MembershipResponse:  # noqa: N802
        self.membership.append(("add", request))
        return pb.MembershipResponse(index=12, leader_id="n1", members=MEMBERS)

    def RemoveMember(self, request: pb.RemoveMemberRequest, context: Any) -> pb.MembershipResponse:  # noqa: N802
        self.membership.append(("remove", request))
        return pb.MembershipResponse(index=13, leader_id="n1", members=MEMBERS[:1])

    def TransferLeader(self, request: pb.TransferLeaderRequest, context: Any) -> pb.MembershipResponse:  # noqa: N802
        self.membership.append(("transfer", request))
        return pb.MembershipResponse(index=0, leader_id=request.target, members=MEMBERS[:1])


@contextmanager
def serving(ledger: FakeLedger | None) -> Iterator[str]:
    """A server on 127.0.0.1:0 with health, and ``ledger`` when given;
    yields its address and stops it afterwards."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    servicer = health.HealthServicer()
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    if ledger is not None:
        pb_grpc.add_LedgerServicer_to_server(ledger, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(None).wait()
