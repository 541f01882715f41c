"""The Synchronizer (a wiped node rejoins) against fake Ledger services: real
grpc.aio servers on 127.0.0.1 that answer Status with a scripted view of the
cluster and record the membership calls they receive."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar, cast

import grpc
import pytest
import pytest_asyncio

from fleetsuit.v1 import consensus_pb2 as pb
from fleetsuit.v1 import consensus_pb2_grpc as pb_grpc
from services.consensus import synchronizer
from services.consensus.config import ConsensusConfig
from services.consensus.synchronizer import plan_rejoin, rejoin
from tests.support.ports import free_port

if TYPE_CHECKING:
    from services.consensus.runtime import ConsensusNode

ME = "n3"
KEY = b"k" * 32
BOUND_S = 10.0  # no test here should come near it
T = TypeVar("T")

# What a membership call does: nothing (success), or abort with (code, details).
Outcome = tuple[grpc.StatusCode, str] | None
ALREADY_A_MEMBER: Outcome = (
    grpc.StatusCode.FAILED_PRECONDITION,
    f"MEMBERSHIP_REFUSED: {ME} is already a member",
)
PENDING: Outcome = (grpc.StatusCode.UNAVAILABLE, "CHANGE_PENDING: another change is pending")


def member(node_id: str, address: str = "", *, voter: bool = True, key: bytes = KEY) -> pb.Member:
    return pb.Member(
        node_id=node_id, address=address or f"{node_id}.invalid:1", voter=voter, public_key=key
    )


@dataclass
class FakeLedger(pb_grpc.LedgerServicer):
    """Status from ``statuses`` (the last one repeats); RemoveMember and
    AddMember take their outcomes from the scripts (success once empty)."""

    calls: list[tuple[str, ...]]
    statuses: list[pb.StatusResponse] = field(default_factory=list)
    remove_script: list[Outcome] = field(default_factory=list)
    add_script: list[Outcome] = field(default_factory=list)
    address: str = ""
    status_calls: int = 0

    async def Status(  # noqa: N802
        self, request: pb.StatusRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.StatusResponse:
        status = self.statuses[min(self.status_calls, len(self.statuses) - 1)]
        self.status_calls += 1
        return status

    async def RemoveMember(  # noqa: N802
        self, request: pb.RemoveMemberRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.MembershipResponse:
        self.calls.append((self.address, "remove", request.node_id))
        await self._outcome(self.remove_script, context)
        return pb.MembershipResponse(index=1)

    async def AddMember(  # noqa: N802
        self, request: pb.AddMemberRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.MembershipResponse:
        self.calls.append((self.address, "add", request.node_id, request.address))
        await self._outcome(self.add_script, context)
        return pb.MembershipResponse(index=2)

    @staticmethod
    async def _outcome(script: list[Outcome], context: grpc.aio.ServicerContext[Any, Any]) -> None:
        outcome = script.pop(0) if script else None
        if outcome is not None:
            await context.abort(*outcome)


class Peers:
    """Fake Ledger servers sharing one log of membership calls, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, ...]] = []
        self.servers: list[grpc.aio.Server] = []

    async def start(
        self,
        *statuses: pb.StatusResponse,
        remove_script: list[Outcome] | None = None,
        add_script: list[Outcome] | None = None,
    ) -> FakeLedger:
        fake = FakeLedger(
            self.calls, list(statuses), list(remove_script or []), list(add_script or [])
        )
        server = grpc.aio.server()
        pb_grpc.add_LedgerServicer_to_server(fake, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        fake.address = f"127.0.0.1:{port}"
        self.servers.append(server)
        return fake

    async def stop(self) -> None:
        for server in self.servers:
            await server.stop(None)


@pytest_asyncio.fixture
async def peers(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Peers]:
    monkeypatch.setattr(synchronizer, "RETRY_S", 0.01)
    out = Peers()
    try:
        yield out
    finally:
        await out.stop()


def status(
    node_id: str,
    *members: pb.Member,
    leader_id: str = "n1",
    role: str = "follower",
    commit_index: int = 10,
    applied_index: int = 10,
    cluster_id: str = "fleetsuit",
) -> pb.StatusResponse:
    return pb.StatusResponse(
        node_id=node_id,
        role=role,
        term=2,
        leader_id=leader_id,
        commit_index=commit_index,
        applied_index=applied_index,
        members=list(members),
        cluster_id=cluster_id,
    )


def config_for(*others: tuple[str, str]) -> ConsensusConfig:
    config = ConsensusConfig(
        node_id=ME,
        listen="127.0.0.1:0",  # unused: nothing here serves
        peers=(*others, (ME, "n3.invalid:1")),
        data_dir="unused",
    )
    config.validate()
    return config


def node_with(addresses: dict[str, str]) -> ConsensusNode:
    """rejoin reads only ``node.addresses`` (the addresses the node learned)."""

    @dataclass
    class StandIn:
        addresses: dict[str, str]

    return cast("ConsensusNode", StandIn(addresses))


async def bounded(aw: Awaitable[T]) -> T:
    return await asyncio.wait_for(aw, BOUND_S)


def unreachable() -> str:
    return f"127.0.0.1:{free_port()}"  # nothing listens there


# ---------------------------------------------------------------- plan_rejoin

KNOWN = (member("n1"), member("n2"), member(ME))


@pytest.mark.asyncio
async def test_plan_is_none_on_the_first_start_of_a_cluster(peers: Peers) -> None:
    # No leader yet, or a leader that committed nothing: nobody knows us.
    a = await peers.start(status("n1", *KNOWN, leader_id=""))
    b = await peers.start(status("n2", *KNOWN, commit_index=0))
    config = config_for(("n1", a.address), ("n2", b.address))
    assert await bounded(plan_rejoin(config)) is None
    # It waited for a leader through every probe round before deciding.
    assert a.status_calls == b.status_calls == synchronizer.PROBE_ROUNDS


@pytest.mark.asyncio
async def test_plan_waits_for_a_leader_across_probe_rounds(peers: Peers) -> None:
    a = await peers.start(
        status("n1", *KNOWN, leader_id=""),
        status("n1", member("n1", "10.0.0.1:7101"), member("n2", "10.0.0.2:7101"), member(ME)),
    )
    config = config_for(("n1", a.address))
    assert await bounded(plan_rejoin(config)) == (("n1", "10.0.0.1:7101"), ("n2", "10.0.0.2:7101"))
    assert a.status_calls == 2


@pytest.mark.asyncio
async def test_plan_is_none_for_a_node_the_cluster_does_not_know(peers: Peers) -> None:
    a = await peers.start(status("n1", member("n1"), member("n2"), role="leader"))
    config = config_for(("n1", a.address))
    assert await bounded(plan_rejoin(config)) is None


@pytest.mark.asyncio
async def test_plan_is_none_for_a_member_whose_key_was_never_recorded(peers: Peers) -> None:
    # It crashed before its key was registered: not recognised (see the
    # module docstring), so it starts normally.
    a = await peers.start(
        status("n1", member("n1"), member("n2"), member(ME, key=b""), role="leader")
    )
    config = config_for(("n1", a.address))
    assert await bounded(plan_rejoin(config)) is None


@pytest.mark.asyncio
async def test_plan_ignores_peers_of_another_cluster(peers: Peers) -> None:
    a = await peers.start(status("n1", *KNOWN, role="leader", cluster_id="other"))
    b = await peers.start(status("n2", *KNOWN, cluster_id="other"))
    config = config_for(("n1", a.address), ("n2", b.address))
    assert await bounded(plan_rejoin(config)) is None


@pytest.mark.asyncio
async def test_plan_returns_the_other_voters_of_a_cluster_that_knows_us(peers: Peers) -> None:
    members = (
        member("n1", "10.0.0.1:7101"),
        member("n2", "10.0.0.2:7101"),
        member(ME, "10.0.0.3:7101"),
        member("n4", "10.0.0.4:7101", voter=False),  # a learner is not a voter
    )
    a = await peers.start(status("n1", *members, role="leader"))
    config = config_for(("n1", a.address), ("n2", unreachable()))
    assert await bounded(plan_rejoin(config)) == (("n1", "10.0.0.1:7101"), ("n2", "10.0.0.2:7101"))


@pytest.mark.asyncio
async def test_plan_trusts_the_most_recently_applied_view_of_the_members(peers: Peers) -> None:
    # n2 lags: it has not applied the entry that recorded our key. n1 has.
    # Starting as a blank voter on n2's word could let us vote twice in a term.
    lagging = await peers.start(
        status("n2", member("n1"), member("n2"), member(ME, key=b""), applied_index=5)
    )
    current = await peers.start(status("n1", *KNOWN, role="leader", applied_index=9))
    config = config_for(("n2", lagging.address), ("n1", current.address))
    voters = await bounded(plan_rejoin(config))
    assert voters is not None
    assert {nid for nid, _ in voters} == {"n1", "n2"}


# ---------------------------------------------------------------- rejoin


async def leader(
    peers: Peers,
    *members: pb.Member,
    remove_script: list[Outcome] | None = None,
    add_script: list[Outcome] | None = None,
) -> FakeLedger:
    return await peers.start(
        status("n1", *members, role="leader"), remove_script=remove_script, add_script=add_script
    )


@pytest.mark.asyncio
async def test_rejoin_removes_then_adds_back_a_node_still_in_the_configuration(
    peers: Peers,
) -> None:
    fake = await leader(peers, *KNOWN)
    config = config_for(("n1", fake.address))
    await bounded(rejoin(config, "10.0.0.3:7101", node_with({})))
    assert peers.calls == [
        (fake.address, "remove", ME),
        (fake.address, "add", ME, "10.0.0.3:7101"),
    ]


@pytest.mark.asyncio
async def test_rejoin_skips_the_removal_when_no_longer_a_member(peers: Peers) -> None:
    fake = await leader(peers, member("n1"), member("n2"))
    config = config_for(("n1", fake.address))
    await bounded(rejoin(config, "10.0.0.3:7101", node_with({})))
    assert peers.calls == [(fake.address, "add", ME, "10.0.0.3:7101")]


@pytest.mark.asyncio
async def test_rejoin_retries_a_failed_removal(peers: Peers) -> None:
    fake = await leader(peers, *KNOWN, remove_script=[PENDING])
    config = config_for(("n1", fake.address))
    await bounded(rejoin(config, "10.0.0.3:7101", node_with({})))
    assert [c[1] for c in peers.calls] == ["remove", "remove", "add"]


@pytest.mark.asyncio
async def test_rejoin_does_not_remove_twice_when_the_add_must_be_retried(peers: Peers) -> None:
    # The leader's Status still lists us (it is scripted not to change): the
    # removal went through once and must not be repeated.
    fake = await leader(peers, *KNOWN, add_script=[PENDING, PENDING])
    config = config_for(("n1", fake.address))
    await bounded(rejoin(config, "10.0.0.3:7101", node_with({})))
    assert [c[1] for c in peers.calls] == ["remove", "add", "add", "add"]


@pytest.mark.asyncio
async def test_rejoin_is_done_when_the_add_after_removal_finds_us_a_member(peers: Peers) -> None:
    # The first AddMember was applied but its answer lost; the retry is told
    # we are already a member: that is success.
    fake = await leader(peers, *KNOWN, add_script=[PENDING, ALREADY_A_MEMBER, PENDING])
    config = config_for(("n1", fake.address))
    await bounded(rejoin(config, "10.0.0.3:7101", node_with({})))
    assert [c[1] for c in peers.calls] == ["remove", "add", "add"]


@pytest.mark.asyncio
async def test_rejoin_goes_past_followers_and_unreachable_peers_to_the_leader(peers: Peers) -> None:
    follower = await peers.start(status("n1", *KNOWN))
    fake = await peers.start(status("n4", *KNOWN, member("n4"), role="leader", leader_id="n4"))
    # Learned addresses are tried first, then the configured peers.
    node = node_with({"n1": follower.address, "n2": unreachable(), ME: "10.0.0.3:7101"})
    config = config_for(("n1", follower.address), ("n4", fake.address))
    await bounded(rejoin(config, "10.0.0.3:7101", node))
    assert follower.status_calls == 1
    assert peers.calls == [
        (fake.address, "remove", ME),
        (fake.address, "add", ME, "10.0.0.3:7101"),
    ]


@pytest.mark.asyncio
async def test_rejoin_keeps_looking_until_a_leader_is_elected(peers: Peers) -> None:
    fake = await peers.start(
        status("n1", *KNOWN, leader_id=""),
        status("n1", *KNOWN, leader_id=""),
        status("n1", *KNOWN, role="leader"),
    )
    config = config_for(("n1", fake.address), ("n2", unreachable()))
    await bounded(rejoin(config, "10.0.0.3:7101", node_with({})))
    assert fake.status_calls == 3
    assert [c[1] for c in peers.calls] == ["remove", "add"]
