"""The read rule the public read APIs share (Releases, Devices): a
linearizable read waits for a ReadIndex barrier within the call's own
deadline, so a node cut off from the majority answers READ_TIMEOUT before
the client gives up; ``stale_ok`` answers at once from this node's applied
state."""

from __future__ import annotations

import grpc

from .config import ConsensusConfig
from .runtime import ConsensusNode

MIN_BARRIER_S = 0.05
DEADLINE_SHARE = 0.8  # of the call's remaining time, the rest to answer


async def barrier(
    node: ConsensusNode, config: ConsensusConfig, stale_ok: bool, context: grpc.aio.ServicerContext
) -> None:
    if stale_ok:
        return
    timeout_s = config.submit_timeout_s
    remaining = context.time_remaining()
    if remaining is not None:
        timeout_s = max(MIN_BARRIER_S, min(timeout_s, remaining * DEADLINE_SHARE))
    await node.read_barrier(timeout_s)
