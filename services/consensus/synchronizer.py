"""The Synchronizer role at process level: a node whose data directory was
wiped comes back on its own.

Raft assumes storage is never lost: a leader that saw a follower's log up to
index M keeps probing it from M and ignores its rejections, and a voter that
forgot its vote could vote twice in one term. So a blank node that a running
cluster already knows (a member with a recorded key, i.e. one that ran
before) does not come back as the voter it was. It starts as a learner and
asks the leader to remove it and add it again (dissertation §4.1, one change
at a time); the leader then tracks it afresh and catches it up, from a
snapshot when the log it needs is compacted, and promotes it once it is
current. Removal also forgets its old block-signing key, so a node whose key
file was wiped too registers its new key.

A blank node whose peers have no leader or do not know it (the first start of
a cluster) starts normally. A node that crashed before its key was recorded
and was then wiped is not recognised; remove and add it by hand
(``fleetsuit cluster remove`` / ``add``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

import grpc

from fleetsuit.grpcutil import insecure_channel
from fleetsuit.v1 import consensus_pb2 as pb
from fleetsuit.v1 import consensus_pb2_grpc as pb_grpc

from .config import ConsensusConfig

if TYPE_CHECKING:
    from .runtime import ConsensusNode

log = logging.getLogger(__name__)

PROBE_ROUNDS = 3
PROBE_TIMEOUT_S = 1.0
RETRY_S = 0.5


def advertised_address(config: ConsensusConfig) -> str:
    return config.peer_addresses.get(config.node_id, config.listen)


async def _statuses(config: ConsensusConfig) -> list[pb.StatusResponse]:
    async def one(address: str) -> pb.StatusResponse | None:
        async with insecure_channel(address) as channel:
            with contextlib.suppress(grpc.RpcError):
                status: pb.StatusResponse = await pb_grpc.LedgerStub(channel).Status(
                    pb.StatusRequest(), timeout=PROBE_TIMEOUT_S
                )
                return status
        return None

    others = [addr for nid, addr in config.peers if nid != config.node_id]
    answers = await asyncio.gather(*(one(a) for a in others))
    return [a for a in answers if a is not None and a.cluster_id == config.cluster_id]


async def plan_rejoin(config: ConsensusConfig) -> tuple[tuple[str, str], ...] | None:
    """For a blank node: the cluster's current voters (id, address) when a
    running cluster knows this node from before; None to start normally."""
    for round_no in range(PROBE_ROUNDS):
        running = [s for s in await _statuses(config) if s.leader_id and s.commit_index > 0]
        if running:
            # Members and keys are applied state: a lagging peer may not have
            # applied the entry that recorded this node's key yet, and a known
            # node that started as a blank voter could vote twice in a term.
            # Trust the view that applied the most.
            status = max(running, key=lambda s: s.applied_index)
            known = any(m.node_id == config.node_id and m.public_key for m in status.members)
            if not known:
                return None
            voters = tuple((m.node_id, m.address) for m in status.members if m.voter and m.address)
            return tuple(v for v in voters if v[0] != config.node_id) or None
        if round_no + 1 < PROBE_ROUNDS:
            await asyncio.sleep(RETRY_S)
    return None


async def _leader_stub(
    config: ConsensusConfig, node: ConsensusNode
) -> tuple[grpc.aio.Channel, pb_grpc.LedgerStub, pb.StatusResponse] | None:
    addresses = {nid: a for nid, a in node.addresses.items() if nid != config.node_id}
    addresses.update({nid: a for nid, a in config.peers if nid != config.node_id})
    for address in addresses.values():
        channel = insecure_channel(address)
        stub = pb_grpc.LedgerStub(channel)
        try:
            status = await stub.Status(pb.StatusRequest(), timeout=PROBE_TIMEOUT_S)
        except grpc.RpcError:
            await channel.close()
            continue
        if status.role == "leader":
            return channel, stub, status
        await channel.close()
    return None


async def rejoin(config: ConsensusConfig, address: str, node: ConsensusNode) -> None:
    """Remove this node, then add it back as a learner; retried until done."""
    removed = False
    while True:
        found = await _leader_stub(config, node)
        if found is None:
            await asyncio.sleep(RETRY_S)
            continue
        channel, stub, status = found
        try:
            members = {m.node_id for m in status.members}
            if not removed and config.node_id in members:
                await stub.RemoveMember(pb.RemoveMemberRequest(node_id=config.node_id), timeout=10.0)
                log.info("rejoin: removed from the configuration")
            removed = True
            await stub.AddMember(pb.AddMemberRequest(node_id=config.node_id, address=address), timeout=10.0)
            log.info("rejoin: added back as a learner; catching up")
            return
        except grpc.RpcError as exc:
            if removed and "already a member" in (exc.details() or ""):
                return
            log.info("rejoin: %s: %s; retrying", exc.code().name, exc.details())
        finally:
            await channel.close()
        await asyncio.sleep(RETRY_S)
