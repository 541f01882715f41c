"""The checks a node runs on a release entry before it proposes it (issue 11:
validation before commit). The Ledger API awaits ``ReleaseChecker`` for a
new ``release_published`` entry; a refusal is raised as a ConsensusError and
nothing is proposed (definite).

1. a read barrier, so the release state is current (Raft dissertation §6.4);
2. the deterministic checks, the very code every node runs when it applies
   the entry (``releases.ReleaseState.check_publish``): the entry's fields,
   a release id not taken nor revoked, a sequence number above the
   component's, the envelope signed by a ledger trust anchor allowed for the
   component and each device class, the manifest saying what the entry says;
3. this node's manifest service ``Validate`` (DESIGN: local manifest,
   validate before propose), for each device class: the envelope against
   the ledger's anchors and a device of that class running the component's
   current sequence number, the payload known by its digest and size (an
   empty ``uri``: any URI the manifest names);
4. this node's dht ``Stat`` with a network lookup: the payload is stored
   somewhere, with the size the entry says.

Steps 1-2 can only refuse what every node would refuse on apply; steps 3-4
refuse what applying cannot see (a payload nobody can download). A manifest
or dht that cannot be reached or fails is ``CheckUnavailable``: nothing was
proposed, retry. Without a manifest or dht endpoint, its step is skipped
(the server logs it once at startup); ``unsafe_skip_release_checks`` skips
every step (tests: the nodes must then refuse the entry on apply).

A release that is already published with this very envelope and payload,
and not revoked, passes at once: it is a retry, and the request table gives
it its first answer (the same key) or refuses it (another key: a duplicate
release on apply). A revoked one is refused REVOKED, even on a retry.

Not here: the checks on apply (``ledger/releases.py``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import grpc
from prometheus_client import Counter

from fleetsuit.grpcutil import insecure_channel
from fleetsuit.rpc import ERROR_CODE_KEY
from fleetsuit.v1 import consensus_pb2 as pb
from fleetsuit.v1 import dht_pb2, dht_pb2_grpc, manifest_pb2, manifest_pb2_grpc
from suit.device import class_id, vendor_id
from suit.keys import load_public_pem, public_der

from .errors import CheckUnavailable, ConsensusError, DigestMismatch, PayloadMissing
from .ledger.codec import decode_entry
from .ledger.entries import Anchor, Publish, Release
from .ledger.releases import (
    REVOKED,
    default_release_id,
    payload_digest,
    refusal_for_suit,
)
from .runtime import ConsensusNode

log = logging.getLogger(__name__)

_MANIFEST_CODE_PREFIX = "MANIFEST_ERROR_"
# Statuses with which the manifest service refuses an envelope it cannot
# judge (services/manifest/convert.py ERRORS): a verdict on the release, not
# a failure of the service.
_MANIFEST_REFUSALS = frozenset({
    grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.FAILED_PRECONDITION,
})


def manifest_anchor(anchor: Anchor, vendor_domain: str) -> manifest_pb2.ManifestTrustAnchor:
    """A ledger anchor as the manifest service takes it, scoped as
    ``releases.suit_anchors`` scopes it: class ids under ``vendor_domain``,
    components as one-part ids."""
    return manifest_pb2.ManifestTrustAnchor(
        public_key_der=public_der(load_public_pem(anchor.public_key_pem)),
        key_id=anchor.key_id.encode(),
        class_ids=[class_id(vendor_domain, c) for c in anchor.device_classes],
        components=[manifest_pb2.ManifestComponentId(parts=[c.encode()]) for c in anchor.components],
    )


def validate_requests(
    publish: Publish, anchors: Sequence[Anchor], current_sequence: int
) -> list[manifest_pb2.ManifestValidateRequest]:
    """One Validate request per device class of the release."""
    component = manifest_pb2.ManifestComponentId(parts=[publish.component.encode()])
    digest = payload_digest(publish.payload_cid) or b""
    trust = [manifest_anchor(a, publish.vendor_domain) for a in anchors]
    installed = (
        [manifest_pb2.ManifestInstalledSequence(component=component, sequence_number=current_sequence)]
        if current_sequence else []
    )
    return [
        manifest_pb2.ManifestValidateRequest(
            envelope=publish.envelope,
            trust_anchors=trust,
            context=manifest_pb2.ManifestDeviceContext(
                vendor_id=vendor_id(publish.vendor_domain),
                class_id=class_id(publish.vendor_domain, device_class),
                installed=installed,
                # An empty uri: the payload, whatever URI the manifest names.
                fetchable=[manifest_pb2.ManifestPayload(uri="", sha256=digest, size=publish.payload_size)],
            ),
            procedure=manifest_pb2.MANIFEST_PROCEDURE_UPDATE,
        )
        for device_class in publish.device_classes
    ]


def _resubmitted(existing: Release | None, publish: Publish) -> bool:
    """The entry is the very release already published and still in effect
    (not revoked): a pipeline's retry or re-run, answered by the ledger's
    request table (the same key) or refused there (another key)."""
    return (
        existing is not None and existing.state != REVOKED and existing.envelope == publish.envelope
        and existing.payload_cid == publish.payload_cid and existing.payload_size == publish.payload_size
    )


def _error_code(exc: grpc.aio.AioRpcError) -> str:
    for key, value in exc.trailing_metadata() or ():
        if key == ERROR_CODE_KEY:
            return str(value)
    return ""


def _without_code(details: str, code: str) -> str:
    prefix = f"{code}: "
    return details[len(prefix):] if details.startswith(prefix) else details


class ReleaseChecker:
    """The Ledger API's ``release_check``. ``manifest`` and ``dht``: stubs
    on this node's services, or None to skip their step; ``close`` closes
    the channels given to ``connect``."""

    def __init__(
        self,
        node: ConsensusNode,
        outcomes: Counter,
        *,
        timeout_s: float,
        manifest: manifest_pb2_grpc.ManifestStub | None = None,
        dht: dht_pb2_grpc.DhtStub | None = None,
        endpoints: dict[str, str] | None = None,
        skip: bool = False,
        channels: Sequence[grpc.aio.Channel] = (),
    ) -> None:
        self._node = node
        self._outcomes = outcomes
        self._timeout_s = timeout_s
        self._manifest = manifest
        self._dht = dht
        self._endpoints = endpoints or {}
        self._skip = skip
        self._channels = list(channels)

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()
        self._channels = []

    async def __call__(self, entry: pb.LedgerEntry) -> None:
        if self._skip:
            self._outcomes.labels("skipped").inc()
            return
        try:
            await self._check(entry)
        except ConsensusError as exc:
            self._outcomes.labels(exc.code).inc()
            raise
        except Exception:
            self._outcomes.labels("error").inc()
            raise
        self._outcomes.labels("passed").inc()

    async def _check(self, entry: pb.LedgerEntry) -> None:
        view = decode_entry(entry.SerializeToString())
        publish = view.body if view is not None else None
        if not isinstance(publish, Publish):
            return  # only releases are checked here
        await self._node.read_barrier(self._timeout_s)
        releases = self._node.machine.releases
        if _resubmitted(releases.release(publish.release_id or default_release_id(
                publish.component, publish.sequence_number)), publish):
            return  # a retry of a release in effect: the request table answers it
        publish, _signer = releases.check_publish(publish)
        if self._manifest is not None:
            await self._validate(publish, releases.anchors(), releases.sequence(publish.component))
        if self._dht is not None:
            await self._stat(publish)

    async def _validate(self, publish: Publish, anchors: Sequence[Anchor], current: int) -> None:
        assert self._manifest is not None
        where = self._endpoints.get("manifest", "this node's manifest service")
        for request in validate_requests(publish, anchors, current):
            try:
                verdict = await self._manifest.Validate(request, timeout=self._timeout_s)
            except grpc.aio.AioRpcError as exc:
                code = _error_code(exc)
                if code and exc.code() in _MANIFEST_REFUSALS:
                    raise refusal_for_suit(code, _without_code(exc.details() or "", code)) from None
                raise CheckUnavailable(
                    f"the manifest service at {where} could not validate the release: "
                    f"{exc.code().name}: {exc.details()}"
                ) from None
            if not verdict.accepted:
                name = manifest_pb2.ManifestErrorCode.Name(verdict.code).removeprefix(_MANIFEST_CODE_PREFIX)
                raise refusal_for_suit(name, verdict.message)

    async def _stat(self, publish: Publish) -> None:
        assert self._dht is not None
        where = self._endpoints.get("dht", "this node's dht service")
        try:
            stat = await self._dht.Stat(
                dht_pb2.BlobStatRequest(content_id=publish.payload_cid, lookup=True), timeout=self._timeout_s
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                raise PayloadMissing(f"payload {publish.payload_cid} is not stored in the dht") from None
            raise CheckUnavailable(
                f"the dht service at {where} could not look up the payload: {exc.code().name}: {exc.details()}"
            ) from None
        if not stat.local and not stat.holders:
            raise PayloadMissing(f"payload {publish.payload_cid} has no complete copy in the dht")
        if stat.size and stat.size != publish.payload_size:
            raise DigestMismatch(
                f"payload {publish.payload_cid} is {stat.size} bytes in the dht; the release says "
                f"{publish.payload_size}"
            )


def connect(
    node: ConsensusNode,
    outcomes: Counter,
    *,
    timeout_s: float,
    manifest_endpoint: str = "",
    dht_endpoint: str = "",
    skip: bool = False,
) -> ReleaseChecker:
    """A checker on channels of its own to the endpoints given (none for an
    empty one); log once which steps are skipped."""
    channels: list[grpc.aio.Channel] = []
    manifest = dht = None
    if manifest_endpoint:
        channels.append(insecure_channel(manifest_endpoint))
        manifest = manifest_pb2_grpc.ManifestStub(channels[-1])
    if dht_endpoint:
        channels.append(insecure_channel(dht_endpoint))
        dht = dht_pb2_grpc.DhtStub(channels[-1])
    if skip:
        log.warning("unsafe_skip_release_checks: release entries are proposed UNCHECKED (tests only)")
    else:
        skipped = [name for name, endpoint in (("manifest", manifest_endpoint), ("dht", dht_endpoint))
                   if not endpoint]
        if skipped:
            log.info("no %s endpoint configured: releases are proposed without the %s check",
                     " or ".join(skipped), " and ".join(skipped))
    return ReleaseChecker(
        node, outcomes, timeout_s=timeout_s, manifest=manifest, dht=dht, skip=skip, channels=channels,
        endpoints={"manifest": manifest_endpoint, "dht": dht_endpoint},
    )
