"""The public Releases API: reads of the release state every node derives
from the ledger (``ledger/releases.py``). Linearizable by default: a read
waits for a ReadIndex barrier, so it sees every release committed before it
arrived, on any node; ``stale_ok`` answers at once from this node's applied
state (a partitioned node still answers, possibly behind). Writes are
ledger entries, submitted through the Ledger API."""

from __future__ import annotations

import time
from collections.abc import Callable

import grpc

from fleetsuit.v1 import consensus_pb2 as pb
from fleetsuit.v1 import consensus_pb2_grpc as pb_grpc

from . import api_reads
from .config import ConsensusConfig
from .errors import REFUSALS, InvalidEntry, ReleaseNotFound
from .ledger.codec import anchor_to_pb, refusal_to_pb, release_to_pb
from .ledger.entries import Release
from .ledger.releases import STATES, effective_state
from .metrics import ConsensusMetrics
from .runtime import ConsensusNode


def _now_ms() -> int:
    return int(time.time() * 1000)


class ReleasesServicer(pb_grpc.ReleasesServicer):
    def __init__(
        self,
        node: ConsensusNode,
        config: ConsensusConfig,
        metrics: ConsensusMetrics | None = None,
        clock_ms: Callable[[], int] = _now_ms,
    ) -> None:
        self._node = node
        self._config = config
        self._clock_ms = clock_ms
        if metrics is not None:
            self._bind_gauges(metrics)

    def _bind_gauges(self, metrics: ConsensusMetrics) -> None:
        """The release gauges are counted from the tables when scraped."""
        for name in STATES:
            metrics.releases.labels(name).set_function(self._count_state(name))
        for code in REFUSALS:
            metrics.release_refusals.labels(code).set_function(self._count_refusals(code))

    def _count_state(self, name: str) -> Callable[[], float]:
        state = self._node.machine.releases
        return lambda: sum(1 for r in state.releases() if effective_state(r, self._clock_ms()) == name)

    def _count_refusals(self, code: str) -> Callable[[], float]:
        state = self._node.machine.releases
        return lambda: sum(1 for r in state.refusals() if r.code == code)

    async def _barrier(self, stale_ok: bool, context: grpc.aio.ServicerContext) -> None:
        await api_reads.barrier(self._node, self._config, stale_ok, context)

    def _release(self, release: Release, include_envelope: bool) -> pb.Release:
        msg = release_to_pb(release, include_envelope=include_envelope)
        msg.state = effective_state(release, self._clock_ms())
        return msg

    async def ListReleases(  # noqa: N802
        self, request: pb.ListReleasesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListReleasesResponse:
        if request.state and request.state not in STATES:
            raise InvalidEntry(f"unknown state {request.state!r} (one of {', '.join(STATES)})")
        await self._barrier(request.stale_ok, context)
        applied = self._node.machine.applied_index()
        out = []
        for release in self._node.machine.releases.releases():
            if request.component and release.component != request.component:
                continue
            msg = self._release(release, request.include_envelope)
            if request.state and msg.state != request.state:
                continue
            out.append(msg)
        out.sort(key=lambda r: (r.component, r.sequence_number))
        return pb.ListReleasesResponse(releases=out, applied_index=applied)

    async def GetRelease(  # noqa: N802
        self, request: pb.GetReleaseRequest, context: grpc.aio.ServicerContext
    ) -> pb.Release:
        await self._barrier(request.stale_ok, context)
        release = self._node.machine.releases.release(request.release_id)
        if release is None:
            raise ReleaseNotFound(f"no release {request.release_id!r} in the ledger")
        return self._release(release, request.include_envelope)

    async def CurrentRelease(  # noqa: N802
        self, request: pb.CurrentReleaseRequest, context: grpc.aio.ServicerContext
    ) -> pb.Release:
        if not request.component:
            raise InvalidEntry("component is required")
        await self._barrier(request.stale_ok, context)
        best = self._node.machine.releases.current(request.component, request.device_class, self._clock_ms())
        if best is None:
            what = f" for device class {request.device_class!r}" if request.device_class else ""
            raise ReleaseNotFound(f"no active release of component {request.component!r}{what}")
        return self._release(best, request.include_envelope)

    async def ListRefusals(  # noqa: N802
        self, request: pb.ListRefusalsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListRefusalsResponse:
        await self._barrier(request.stale_ok, context)
        refusals = self._node.machine.releases.refusals()
        return pb.ListRefusalsResponse(
            refusals=[refusal_to_pb(r) for r in refusals], applied_index=self._node.machine.applied_index()
        )

    async def TrustAnchors(  # noqa: N802
        self, request: pb.TrustAnchorsRequest, context: grpc.aio.ServicerContext
    ) -> pb.TrustAnchorsResponse:
        await self._barrier(request.stale_ok, context)
        anchors = self._node.machine.releases.anchors()
        return pb.TrustAnchorsResponse(
            anchors=[anchor_to_pb(a) for a in anchors], applied_index=self._node.machine.applied_index()
        )

    async def Sequences(  # noqa: N802
        self, request: pb.TrustAnchorsRequest, context: grpc.aio.ServicerContext
    ) -> pb.SequencesResponse:
        await self._barrier(request.stale_ok, context)
        sequences = self._node.machine.releases.sequences()
        return pb.SequencesResponse(
            components=[pb.ComponentSequence(component=c, sequence_number=n) for c, n in sorted(sequences.items())],
            applied_index=self._node.machine.applied_index(),
        )
