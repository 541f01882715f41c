"""``launcher/statefulset.py``: a pod's plan from its name alone (peers,
join, dht seeds, advertised host), bad names, specs and templates refused
naming what is wrong; ``request_membership`` against a scripted Ledger
server (retries what passes by itself, stops at a refusal, gives up at its
deadline). The real cluster: tests/integration/test_statefulset_scale.py."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest

from fleetsuit.v1 import consensus_pb2 as pb
from fleetsuit.v1 import consensus_pb2_grpc as pb_grpc
from launcher.statefulset import (
    MembershipError,
    PodPlan,
    StatefulSetError,
    StatefulSetSpec,
    parse_pod_name,
    pod_plan,
    request_membership,
)
from tests.support.ports import free_port

PORTS = {"consensus": 7101, "dht": 7102}
SPEC = StatefulSetSpec(service="fleetsuit", bootstrap_replicas=3)


def test_a_bootstrap_pod_names_every_bootstrap_member_and_seeds_the_others() -> None:
    plan = pod_plan("fleetsuit-1", SPEC, PORTS)
    assert plan == PodPlan(
        pod="fleetsuit-1", ordinal=1,
        peers={"fleetsuit-0": "fleetsuit-0.fleetsuit:7101", "fleetsuit-1": "fleetsuit-1.fleetsuit:7101",
               "fleetsuit-2": "fleetsuit-2.fleetsuit:7101"},
        join=False,
        dht_seeds=("fleetsuit-0.fleetsuit:7102", "fleetsuit-2.fleetsuit:7102"),
        advertise="fleetsuit-1.fleetsuit", address="fleetsuit-1.fleetsuit:7101",
    )  # fmt: skip
    assert plan.consensus_peers == plan.peers


def test_an_ordinal_beyond_the_bootstrap_joins_through_the_bootstrap_members() -> None:
    plan = pod_plan("fleetsuit-4", SPEC, PORTS)
    assert (plan.ordinal, plan.join, plan.advertise) == (4, True, "fleetsuit-4.fleetsuit")
    assert sorted(plan.peers) == ["fleetsuit-0", "fleetsuit-1", "fleetsuit-2"]
    assert plan.dht_seeds == tuple(f"fleetsuit-{i}.fleetsuit:7102" for i in range(3))
    # Its consensus also names itself: the address it re-joins with after a wipe.
    assert plan.consensus_peers == {**plan.peers, "fleetsuit-4": "fleetsuit-4.fleetsuit:7101"}


@pytest.mark.parametrize(("pod", "join"), [("fleetsuit-0", False), ("fleetsuit-2", False),
                                           ("fleetsuit-3", True), ("fleetsuit-10", True)])
def test_join_is_the_ordinal_at_or_beyond_bootstrap_replicas(pod: str, join: bool) -> None:
    assert pod_plan(pod, SPEC, PORTS).join is join


def test_one_bootstrap_replica_has_no_dht_seed_of_its_own() -> None:
    spec = StatefulSetSpec(service="fs", bootstrap_replicas=1)
    only = pod_plan("fs-0", spec, PORTS)
    assert (only.peers, only.dht_seeds, only.join) == ({"fs-0": "fs-0.fs:7101"}, (), False)
    assert pod_plan("fs-1", spec, PORTS).dht_seeds == ("fs-0.fs:7102",)


def test_the_set_name_may_hold_dashes_and_digits() -> None:
    plan = pod_plan("fleet-suit-2-3", StatefulSetSpec("svc", 3), PORTS)
    assert parse_pod_name("fleet-suit-2-3") == ("fleet-suit-2", 3)
    assert (plan.ordinal, plan.join) == (3, True)
    assert sorted(plan.peers) == ["fleet-suit-2-0", "fleet-suit-2-1", "fleet-suit-2-2"]


def test_ordinal_ports_put_pods_on_loopback() -> None:
    spec = StatefulSetSpec("fleetsuit", 3, "127.0.0.1:{ordinal_port}")
    plan = pod_plan("fleetsuit-3", spec, {"consensus": 20001, "dht": 20002})
    assert plan.peers == {f"fleetsuit-{i}": f"127.0.0.1:{20001 + 10 * i}" for i in range(3)}
    assert plan.dht_seeds == ("127.0.0.1:20002", "127.0.0.1:20012", "127.0.0.1:20022")
    assert (plan.address, plan.advertise) == ("127.0.0.1:20031", "127.0.0.1")


def test_every_place_of_the_template() -> None:
    spec = StatefulSetSpec("hl", 2, "{pod}.{service}.ns.svc-{ordinal}:{port}")
    assert pod_plan("fs-1", spec, PORTS).address == "fs-1.hl.ns.svc-1:7101"
    ipv6 = StatefulSetSpec("hl", 2, "[fd00::{ordinal}]:{port}")
    assert pod_plan("fs-1", ipv6, PORTS).advertise == "[fd00::1]"


@pytest.mark.parametrize(
    "pod",
    ["fleetsuit", "fleetsuit-", "fleetsuit-01", "Fleetsuit-1", "fleetsuit-x", "-1", "fleetsuit--1",
     "fleetsuit-1.fleetsuit", "a" * 62 + "-1", "fleetsuit_1-1", ""],
)
def test_a_name_without_an_ordinal_is_refused_naming_it(pod: str) -> None:
    with pytest.raises(StatefulSetError, match="is not <statefulset>-<ordinal>") as refused:
        pod_plan(pod, SPEC, PORTS)
    assert repr(pod) in str(refused.value)


@pytest.mark.parametrize(
    ("spec", "named"),
    [
        (StatefulSetSpec("Fleet_Suit", 3), "service 'Fleet_Suit' is not a DNS label"),
        (StatefulSetSpec("", 3), "service '' is not a DNS label"),
        (StatefulSetSpec("fleetsuit", 0), "bootstrap_replicas must be at least 1, got 0"),
        (StatefulSetSpec("fleetsuit", 3, "{pod}.{service}:{prot}"), "{prot} is not one of"),
        (StatefulSetSpec("fleetsuit", 3, "{pod}.{service}:{port:05d}"), "{port} is not one of"),
        (StatefulSetSpec("fleetsuit", 3, "{pod!r}:{port}"), "{pod} is not one of"),
        (StatefulSetSpec("fleetsuit", 3, "{pod}.{service}:{port"), "address_template"),
        (StatefulSetSpec("fleetsuit", 3, "{service}:{port}"), "gives every pod the same address"),
        (StatefulSetSpec("fleetsuit", 3, "{pod}.{service}:7101"), "gives every service the same address"),
        (StatefulSetSpec("fleetsuit", 3, "{pod}.{service}"), "gives every service the same address"),
        (StatefulSetSpec("fleetsuit", 3, "{pod}-{port}"), "not HOST:PORT"),
        # "07101" for ordinal 0: not how a port is written
        (StatefulSetSpec("fleetsuit", 3, "{pod}:{ordinal}{port}"), "gives 'fleetsuit-0:07101' for"),
    ],
)
def test_a_bad_spec_or_template_is_refused_naming_it(spec: StatefulSetSpec, named: str) -> None:
    with pytest.raises(StatefulSetError) as refused:
        pod_plan("fleetsuit-0", spec, PORTS)
    assert named in str(refused.value)


@pytest.mark.parametrize(
    ("ports", "named"),
    [
        ({"consensus": 7101}, "ports: no dht port"),
        ({"dht": 7102}, "ports: no consensus port"),
        ({"consensus": 0, "dht": 7102}, "consensus port 0 out of range"),
        ({"consensus": 7101, "dht": 70000}, "dht port 70000 out of range"),
    ],
)
def test_missing_or_bad_ports_are_refused(ports: dict[str, int], named: str) -> None:
    with pytest.raises(StatefulSetError, match=named):
        pod_plan("fleetsuit-0", SPEC, ports)


def test_an_ordinal_port_beyond_65535_is_refused() -> None:
    spec = StatefulSetSpec("fleetsuit", 3, "127.0.0.1:{ordinal_port}")
    with pytest.raises(StatefulSetError, match="not HOST:PORT with a port in 1..65535"):
        pod_plan("fleetsuit-9", spec, {"consensus": 65500, "dht": 65501})


# ---------------------------------------------------------------- request_membership


class ScriptedLedger(pb_grpc.LedgerServicer):
    """A Ledger whose AddMember answers come from a script: a status code and
    details per call, None for success."""

    def __init__(self, answers: list[tuple[grpc.StatusCode, str] | None], role: str = "leader") -> None:
        self.answers = answers
        self.role = role
        self.requests: list[pb.AddMemberRequest] = []

    def Status(self, request: pb.StatusRequest, context: grpc.ServicerContext) -> pb.StatusResponse:  # noqa: N802
        return pb.StatusResponse(role=self.role, node_id="fleetsuit-0", leader_id="fleetsuit-0")

    def AddMember(  # noqa: N802
        self, request: pb.AddMemberRequest, context: grpc.ServicerContext
    ) -> pb.MembershipResponse:
        self.requests.append(request)
        answer = self.answers.pop(0) if self.answers else None
        if answer is not None:
            context.abort(*answer)
        return pb.MembershipResponse(
            index=7, leader_id="fleetsuit-0",
            members=[pb.Member(node_id=request.node_id, address=request.address, voter=False)],
        )  # fmt: skip


@pytest.fixture
def ledger() -> Iterator[tuple[ScriptedLedger, str]]:
    servicer = ScriptedLedger([])
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_LedgerServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield servicer, f"127.0.0.1:{port}"
    finally:
        server.stop(None).wait()


def _join_plan(member: str) -> PodPlan:
    return PodPlan(pod="fleetsuit-3", ordinal=3, peers={"fleetsuit-0": member}, join=True,
                   dht_seeds=(), advertise="127.0.0.1", address="127.0.0.1:7131")


def test_no_leader_and_a_pending_change_are_retried_until_added(
    ledger: tuple[ScriptedLedger, str],
) -> None:
    servicer, address = ledger
    servicer.answers = [(grpc.StatusCode.UNAVAILABLE, "NO_LEADER: no leader"),
                        (grpc.StatusCode.UNAVAILABLE, "CHANGE_PENDING: another change is pending"),
                        (grpc.StatusCode.FAILED_PRECONDITION, "NOT_LEADER: not the leader")]
    request_membership(_join_plan(address), "127.0.0.1:7131", deadline_s=30)
    assert [(r.node_id, r.address) for r in servicer.requests] == [("fleetsuit-3", "127.0.0.1:7131")] * 4


def test_already_a_member_is_done(ledger: tuple[ScriptedLedger, str]) -> None:
    servicer, address = ledger
    servicer.answers = [(grpc.StatusCode.FAILED_PRECONDITION,
                         "MEMBERSHIP_REFUSED: fleetsuit-3 is already a member")]
    request_membership(_join_plan(address), "127.0.0.1:7131", deadline_s=30)
    assert len(servicer.requests) == 1


def test_a_refusal_is_not_retried(ledger: tuple[ScriptedLedger, str]) -> None:
    servicer, address = ledger
    servicer.answers = [(grpc.StatusCode.PERMISSION_DENIED, "WRONG_CLUSTER: cluster fs-other")]
    with pytest.raises(MembershipError, match="fleetsuit-3 refused by the cluster: .*WRONG_CLUSTER"):
        request_membership(_join_plan(address), "127.0.0.1:7131", deadline_s=30)
    assert len(servicer.requests) == 1


def test_a_member_that_knows_no_leader_is_asked_again_until_the_deadline(
    ledger: tuple[ScriptedLedger, str],
) -> None:
    servicer, address = ledger
    servicer.role = "follower"
    with pytest.raises(MembershipError, match=f"not added within 1s \\(asked {address}\\): "):
        request_membership(_join_plan(address), "127.0.0.1:7131", deadline_s=1)
    assert servicer.requests == []


def test_nobody_answering_ends_at_the_deadline_naming_the_members() -> None:
    member = f"127.0.0.1:{free_port()}"
    with pytest.raises(MembershipError, match=f"asked {member}\\): {member}: UNAVAILABLE"):
        request_membership(_join_plan(member), "127.0.0.1:7131", deadline_s=1)


def test_a_bootstrap_pod_asks_nothing_and_a_bad_own_address_is_refused() -> None:
    member = f"127.0.0.1:{free_port()}"  # nobody there: a call would fail
    request_membership(pod_plan("fleetsuit-1", SPEC, PORTS), "fleetsuit-1.fleetsuit:7101", 1)
    with pytest.raises(StatefulSetError, match="own_address 'fleetsuit-3' is not HOST:PORT"):
        request_membership(_join_plan(member), "fleetsuit-3", 1)
