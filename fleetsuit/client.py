"""The typed, synchronous client a CI pipeline imports to publish releases
and drive their rollout: ``FleetClient``.

Given one node's consensus address, it finds that node's other services
(``Status().services``) and the other members (``Status().members``), so it
can fail over to another node when the first stops answering. A push
uploads the payload to the node's dht (skipped when the node has it
already), builds and signs the SUIT envelope here, where the key is (the
key never leaves this process), and submits a ``release_published``
entry. Writes are idempotent: a push's key is derived from the release
(``release/<component>``, sequence), so a re-run of the same push gets the
first answer; every retry sends the same bytes with the same key.

What it does not do: the checks themselves (the node's manifest and dht
services, and every node when it applies the entry), and waiting for
devices. One client per thread; it is not thread-safe.

What a push sends, the release's envelope and its payload, is
``release_content.py``'s.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import TypeVar, cast

import grpc

from fleetsuit.client_errors import (
    FleetError,
    IdempotencyConflict,
    NotFound,
    OutcomeUnknownError,
    Refused,
    TransportError,
    Unreachable,
    from_rpc_error,
)
from fleetsuit.grpcutil import CHANNEL_OPTIONS
from fleetsuit.release_content import (
    Payload,
    build_release_envelope,
    check_envelope,
    release_description,
)
from fleetsuit.release_model import (
    DEFAULT_DEVICE_CLASS,
    DEFAULT_VENDOR_DOMAIN,
    ROLLOUT_ACTIONS,
    MemberInfo,
    PushResult,
    RefusalInfo,
    ReleaseInfo,
    RolloutPolicy,
    StatusInfo,
    TrustAnchorInfo,
    WriteResult,
    check_release_names,
    release_id_of,
    release_key,
    revoke_client_id,
    rollout_client_id,
)
from fleetsuit.v1 import consensus_pb2 as pb
from fleetsuit.v1 import consensus_pb2_grpc as pb_grpc
from fleetsuit.v1 import dht_pb2, dht_pb2_grpc

__all__ = [
    "FleetClient", "FleetError", "IdempotencyConflict", "MemberInfo", "NotFound", "OutcomeUnknownError",
    "PushResult", "RefusalInfo", "Refused", "ReleaseInfo", "RolloutPolicy", "StatusInfo",
    "TrustAnchorInfo", "Unreachable", "WriteResult", "build_release_envelope", "release_description",
]

log = logging.getLogger(__name__)
T = TypeVar("T")

MIN_UPLOAD_BYTES_PER_S = 1024 * 1024  # the upload's deadline assumes at least this rate
BACKOFF_FIRST_S = 0.1
BACKOFF_MAX_S = 2.0
CERTIFIED_POLL_S = 0.2
# The node is asked to wait this share of the call's timeout for the commit,
# so that it answers OUTCOME_UNKNOWN itself before the call's deadline.
COMMIT_WAIT_SHARE = 0.8
# A node's errors after which another node may do better.
_FAILOVER_CODES = frozenset({"NO_LEADER", "CHECK_UNAVAILABLE", "SHUTTING_DOWN", "OVERLOADED"})
_UNSPECIFIED_HOSTS = frozenset({"", "0.0.0.0", "::", "[::]"})

UploadProgress = Callable[[int, int], None]  # (bytes uploaded, total bytes)


def _unix_ms(value: datetime | float | None, name: str) -> int:
    """A time as unix milliseconds: an aware datetime or unix seconds; None is 0."""
    if value is None:
        return 0
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError(f"{name}: give a timezone-aware datetime")
        return round(value.timestamp() * 1000)
    if value < 0:
        raise ValueError(f"{name} must not be before 1970")
    return round(value * 1000)


# ---------------------------------------------------------------- the client


class FleetClient:
    """A synchronous client of a fleetsuit cluster, given any node's
    consensus address. Calls retry what is worth retrying (no leader, a node
    that cannot check, an unknown outcome, a broken connection) with backoff
    until ``retry_deadline_s``, moving on to other members when a node stops
    answering; each single call waits at most ``timeout_s``.

    ``rng`` (request ids of rollout actions, backoff jitter), ``sleep`` and
    ``clock`` are parameters so tests can pin them."""

    def __init__(
        self,
        endpoint: str,
        *,
        timeout_s: float = 10.0,
        retry_deadline_s: float = 60.0,
        rng: random.Random | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if timeout_s <= 0 or retry_deadline_s < 0:
            raise ValueError("timeout_s must be positive and retry_deadline_s not negative")
        self.timeout_s = timeout_s
        self.retry_deadline_s = retry_deadline_s
        self._endpoints = [endpoint]
        self._current = 0
        self._channels: dict[str, grpc.Channel] = {}
        self._services: dict[str, dict[str, str]] = {}  # consensus endpoint -> its services
        self._learned = False
        self._rng = rng or random.SystemRandom()
        self._sleep = sleep
        self._clock = clock

    @property
    def endpoint(self) -> str:
        """The node this client talks to now."""
        return self._endpoints[self._current]

    @property
    def endpoints(self) -> tuple[str, ...]:
        """Every consensus address known: the one given, then the members learned."""
        return tuple(self._endpoints)

    def close(self) -> None:
        channels, self._channels = self._channels, {}
        for channel in channels.values():
            channel.close()

    def __enter__(self) -> FleetClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # ------------------------------------------------------------ reads

    def status(self) -> StatusInfo:
        """The current node's status (and the members and services it names)."""
        return self._call(self._status_of)

    def list_releases(
        self, component: str = "", state: str = "", stale_ok: bool = False
    ) -> list[ReleaseInfo]:
        request = pb.ListReleasesRequest(component=component, state=state, stale_ok=stale_ok)
        answer = cast(pb.ListReleasesResponse, self._call(
            lambda ep: self._releases(ep).ListReleases(request, timeout=self.timeout_s)))
        return [ReleaseInfo.from_pb(r) for r in answer.releases]

    def get_release(
        self, release_id: str, *, include_envelope: bool = False, stale_ok: bool = False
    ) -> ReleaseInfo:
        request = pb.GetReleaseRequest(release_id=release_id, include_envelope=include_envelope,
                                       stale_ok=stale_ok)
        return ReleaseInfo.from_pb(cast(pb.Release, self._call(
            lambda ep: self._releases(ep).GetRelease(request, timeout=self.timeout_s))))

    def current_release(
        self, component: str, device_class: str = "", *, stale_ok: bool = False
    ) -> ReleaseInfo:
        """The newest active (or paused) release of ``component`` for the
        device class (any class when empty); NotFound when there is none."""
        request = pb.CurrentReleaseRequest(component=component, device_class=device_class, stale_ok=stale_ok)
        return ReleaseInfo.from_pb(cast(pb.Release, self._call(
            lambda ep: self._releases(ep).CurrentRelease(request, timeout=self.timeout_s))))

    def refusals(self, *, stale_ok: bool = False) -> list[RefusalInfo]:
        request = pb.ListRefusalsRequest(stale_ok=stale_ok)
        answer = cast(pb.ListRefusalsResponse, self._call(
            lambda ep: self._releases(ep).ListRefusals(request, timeout=self.timeout_s)))
        return [RefusalInfo.from_pb(r) for r in answer.refusals]

    def trust_anchors(self, *, stale_ok: bool = False) -> list[TrustAnchorInfo]:
        request = pb.TrustAnchorsRequest(stale_ok=stale_ok)
        answer = cast(pb.TrustAnchorsResponse, self._call(
            lambda ep: self._releases(ep).TrustAnchors(request, timeout=self.timeout_s)))
        return [TrustAnchorInfo.from_pb(a) for a in answer.anchors]

    def sequences(self, *, stale_ok: bool = False) -> dict[str, int]:
        """The current sequence number of every component."""
        request = pb.TrustAnchorsRequest(stale_ok=stale_ok)
        answer = cast(pb.SequencesResponse, self._call(
            lambda ep: self._releases(ep).Sequences(request, timeout=self.timeout_s)))
        return {c.component: c.sequence_number for c in answer.components}

    def proof(self, height: int, position: int, *, wait_certified_s: float = 30.0) -> bytes:
        """The compact proof of the entry at ``position`` of block ``height``
        (``EntryProof`` bytes, as ``fleetsuit ledger verify-proof`` reads
        them), once that block is certified: waits up to
        ``wait_certified_s`` for its certificate."""
        request = pb.ProofRequest(height=height, position=position)

        def certified_proof(endpoint: str) -> pb.EntryProof | None:
            # Status and proof from the same node: its certificate covers the block.
            status = self._status_of(endpoint)
            if status.certified_height < height:
                return None
            return cast(pb.EntryProof, self._ledger(endpoint).GetProof(request, timeout=self.timeout_s))

        deadline = self._clock() + wait_certified_s
        while True:
            found = self._call(certified_proof)
            if found is not None:
                data: bytes = found.SerializeToString()
                return data
            if self._clock() >= deadline:
                raise FleetError(
                    "NOT_CERTIFIED",
                    f"block {height} was not certified within {wait_certified_s:g}s on {self.endpoint}",
                )
            self._sleep(CERTIFIED_POLL_S)

    # ------------------------------------------------------------ writes

    def push_release(
        self,
        payload: Path | bytes | None,
        *,
        component: str,
        sequence: int,
        key_pem: bytes | None = None,
        envelope: bytes | None = None,
        device_class: str = DEFAULT_DEVICE_CLASS,
        vendor_domain: str = DEFAULT_VENDOR_DOMAIN,
        start_at: datetime | float | None = None,
        end_at: datetime | float | None = None,
        experimental: bool = False,
        stages: Sequence[int] = (),
        stage_interval_s: float = 0.0,
        groups: Sequence[str] = (),
        halt_failure_percent: int = 0,
        halt_min_devices: int = 0,
        payload_cid: str | None = None,
        payload_size: int | None = None,
        progress: UploadProgress | None = None,
    ) -> PushResult:
        """Publish a release: upload ``payload`` (a file or bytes) to the
        node's dht unless it is there already, sign its envelope with
        ``key_pem`` (or push ``envelope``, signed elsewhere, as is), and
        commit it. With ``payload=None``, ``payload_cid`` and
        ``payload_size`` name a payload already in the dht.

        Times are aware datetimes or unix seconds; ``stage_interval_s``
        (seconds between stage openings), ``groups`` (device groups
        targeted, none: all) and the automatic halt's threshold
        (``halt_failure_percent`` of at least ``halt_min_devices`` devices
        reporting) are the rollout policy's. A re-run of the same push
        returns the first result with ``duplicate=True``; a different
        release under the same component and sequence raises
        IdempotencyConflict (or Refused DUPLICATE_RELEASE). Arguments that
        cannot make a release raise ValueError before anything is sent."""
        check_release_names(component, sequence, device_class, vendor_domain)
        if stage_interval_s < 0:
            raise ValueError(f"stage_interval_s must not be negative, not {stage_interval_s}")
        rollout = RolloutPolicy(
            _unix_ms(start_at, "start_at"), _unix_ms(end_at, "end_at"), experimental, tuple(stages),
            round(stage_interval_s * 1000), tuple(groups), halt_failure_percent, halt_min_devices,
        ).validate()
        if (key_pem is None) == (envelope is None):
            raise ValueError("give one of key_pem (to sign here) or envelope (signed elsewhere), not both")
        blob = Payload.of(payload, payload_cid, payload_size)
        if envelope is None:
            assert key_pem is not None
            envelope = build_release_envelope(
                component=component, sequence=sequence, payload_cid=blob.cid, payload_size=blob.size,
                key_pem=key_pem, device_class=device_class, vendor_domain=vendor_domain,
            )
        else:
            check_envelope(envelope, component, sequence)
        release_id = release_id_of(component, sequence)
        client_id, request_id = release_key(component, sequence)
        published = pb.ReleasePublished(
            release_id=release_id, envelope=envelope, component=component, sequence_number=sequence,
            payload_cid=blob.cid, payload_size=blob.size, device_classes=[device_class],
            vendor_domain=vendor_domain, rollout=rollout.to_pb(),
        )
        request = self._submit_request(pb.LedgerEntry(
            client_id=client_id, request_id=request_id, release_published=published))
        self._learn_members()
        uploaded_to: set[str] = set()
        uploaded = False
        pinned: list[str] = []  # dht addresses where this push pinned the payload

        def attempt(endpoint: str) -> pb.SubmitResponse:
            nonlocal uploaded
            if blob.source is not None and endpoint not in uploaded_to:
                uploaded = self._upload(endpoint, blob, progress, pinned) or uploaded
                uploaded_to.add(endpoint)
            return cast(pb.SubmitResponse, self._ledger(endpoint).Submit(request, timeout=self.timeout_s))

        try:
            answer = self._write(attempt, f"release {release_id}")
        except (IdempotencyConflict, Refused) as exc:
            if not isinstance(exc, IdempotencyConflict) and exc.code != "DUPLICATE_RELEASE":
                self._unpin(pinned, blob.cid)  # refused for good: no release holds the payload here
                raise
            existing = self._existing(release_id, exc)
            if not existing.publishes(published):
                raise type(exc)(exc.code, f"{exc.message} (release {release_id} exists with other "
                                f"content: payload {existing.payload_cid}, classes "
                                f"{list(existing.device_classes)}, rollout {existing.rollout})") from None
            log.info("release %s was published already (index %d)", release_id, existing.index)
            return PushResult(release_id, existing.index, existing.block_height, existing.position,
                              True, blob.cid, blob.size, uploaded)
        return PushResult(release_id, answer.index, answer.block_height, answer.position,
                          answer.duplicate, blob.cid, blob.size, uploaded)

    def revoke(self, release_id: str, reason: str) -> WriteResult:
        """Revoke a release: no device is offered it any more."""
        entry = pb.LedgerEntry(client_id=revoke_client_id(release_id), request_id=self.request_id(),
                               release_revoked=pb.ReleaseRevoked(release_id=release_id, reason=reason))
        return self._write_entry(entry, release_id, f"revocation of {release_id}")

    def rollout(self, release_id: str, action: str, reason: str = "") -> WriteResult:
        """Pause, resume or halt a release's rollout."""
        if action not in ROLLOUT_ACTIONS:
            raise ValueError(f"action must be one of {', '.join(ROLLOUT_ACTIONS)}, not {action!r}")
        entry = pb.LedgerEntry(
            client_id=rollout_client_id(release_id), request_id=self.request_id(),
            rollout_changed=pb.RolloutChanged(release_id=release_id, action=action, reason=reason),
        )
        return self._write_entry(entry, release_id, f"{action} of {release_id}")

    # ------------------------------------------------------------ for other clients

    def submit(self, entry: pb.LedgerEntry, what: str) -> pb.SubmitResponse:
        """Submit a ledger entry until a definite answer, with this client's
        retries and failover; every retry sends the same bytes under the
        entry's key. Raises Refused, IdempotencyConflict, OutcomeUnknownError
        (``what`` names the write in it), ... (``fleetsuit.device_admin``
        writes through this)."""
        request = self._submit_request(entry)
        self._learn_members()
        return self._write(
            lambda ep: cast(pb.SubmitResponse, self._ledger(ep).Submit(request, timeout=self.timeout_s)),
            f"{what} (key {entry.client_id}/{entry.request_id})",
        )

    def read(self, call: Callable[[grpc.Channel, float], T]) -> T:
        """``call(channel, timeout_s)`` on the current node's consensus
        channel, with this client's retries and failover (for reads)."""
        return self._call(lambda ep: call(self._channel(ep), self.timeout_s))

    def request_id(self) -> int:
        """A fresh 63-bit request id (never 0, which means none)."""
        return self._rng.getrandbits(63) or 1

    # ------------------------------------------------------------ internals

    def _submit_request(self, entry: pb.LedgerEntry) -> pb.SubmitRequest:
        wait_ms = max(1, int(self.timeout_s * 1000 * COMMIT_WAIT_SHARE))
        return pb.SubmitRequest(entry=entry, timeout_ms=wait_ms)

    def _write_entry(self, entry: pb.LedgerEntry, release_id: str, what: str) -> WriteResult:
        answer = self.submit(entry, what)
        return WriteResult(release_id, answer.index, answer.block_height, answer.position, answer.duplicate,
                           entry.client_id, entry.request_id)

    def _existing(self, release_id: str, conflict: FleetError) -> ReleaseInfo:
        """The release a conflicting push collided with (linearizable read)."""
        try:
            return self.get_release(release_id)
        except NotFound:
            why = ("the entry first submitted under this key was refused (see the refusals)"
                   if isinstance(conflict, IdempotencyConflict) else "it is not found")
            raise type(conflict)(conflict.code, f"{conflict.message} (no release {release_id}: {why})") from None

    def _channel(self, endpoint: str) -> grpc.Channel:
        channel = self._channels.get(endpoint)
        if channel is None:
            channel = self._channels[endpoint] = grpc.insecure_channel(endpoint, options=CHANNEL_OPTIONS)
        return channel

    def _ledger(self, endpoint: str) -> pb_grpc.LedgerStub:
        return pb_grpc.LedgerStub(self._channel(endpoint))

    def _releases(self, endpoint: str) -> pb_grpc.ReleasesStub:
        return pb_grpc.ReleasesStub(self._channel(endpoint))

    def _status_of(self, endpoint: str) -> StatusInfo:
        answer = self._ledger(endpoint).Status(pb.StatusRequest(), timeout=self.timeout_s)
        status = StatusInfo.from_pb(cast(pb.StatusResponse, answer))
        self._services[endpoint] = {
            name: _routable(address, endpoint) for name, address in status.services.items()
        }
        for member in status.members:
            address = _routable(member.address, endpoint) if member.address else ""
            if address and address not in self._endpoints:
                self._endpoints.append(address)
        return status

    def _learn_members(self) -> None:
        """Learn the other members (to fail over to) while the node answers;
        best effort: if it does not, the write's own retries deal with it."""
        if self._learned:
            return
        try:
            self._status_of(self.endpoint)
            self._learned = True
        except grpc.RpcError as exc:
            log.debug("cannot learn the members from %s: %s", self.endpoint, exc)

    def _unpin(self, addresses: Sequence[str], cid: str) -> None:
        """Best effort: drop the pins this push placed (a refused release
        leaves no payload pinned for nothing; unpinned, the dht may evict it)."""
        for address in addresses:
            try:
                dht_pb2_grpc.DhtStub(self._channel(address)).Unpin(
                    dht_pb2.BlobPinRequest(content_id=cid), timeout=self.timeout_s)
            except grpc.RpcError as exc:
                log.debug("cannot unpin %s on %s: %s", cid, address, exc)

    def _upload(
        self, endpoint: str, blob: Payload, progress: UploadProgress | None, pinned: list[str] | None = None
    ) -> bool:
        """Make sure the dht of the node at ``endpoint`` holds the payload,
        pinned; True when it had to be sent. ``pinned`` collects the dht
        addresses where this call placed the pin (not one already there)."""
        if endpoint not in self._services:
            self._status_of(endpoint)
        address = self._services[endpoint].get("dht")
        if not address:
            raise FleetError("NO_DHT", f"{endpoint} names no dht service in its status")
        stub = dht_pb2_grpc.DhtStub(self._channel(address))
        try:
            request = dht_pb2.BlobStatRequest(content_id=blob.cid, lookup=False)
            stat = stub.Stat(request, timeout=self.timeout_s)
            if stat.local and stat.size == blob.size:
                if not stat.pinned:
                    stub.Pin(dht_pb2.BlobPinRequest(content_id=blob.cid), timeout=self.timeout_s)
                    if pinned is not None:
                        pinned.append(address)
                log.info("payload %s is on %s's dht already; upload skipped", blob.cid, address)
                return False
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                raise from_rpc_error(exc, address) from None
        log.info("uploading %d bytes to %s's dht (%s)", blob.size, address, blob.cid)
        sent = 0

        def requests() -> Iterator[dht_pb2.BlobPutRequest]:
            nonlocal sent
            yield dht_pb2.BlobPutRequest(pin=True)
            for piece in blob.pieces():
                sent += len(piece)
                yield dht_pb2.BlobPutRequest(data=piece)
                if progress is not None:
                    progress(sent, blob.size)

        try:
            reply = stub.Put(requests(), timeout=self.timeout_s + blob.size / MIN_UPLOAD_BYTES_PER_S)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, address) from None
        if reply.content_id != blob.cid or reply.size != blob.size:
            raise FleetError("PAYLOAD_CHANGED", f"{address} stored {reply.content_id} ({reply.size} bytes), "
                             f"not {blob.cid} ({blob.size} bytes): did the file change during the push?")
        log.info("uploaded %s to %s", blob.cid, address)
        if pinned is not None:
            pinned.append(address)
        return True

    def _write(self, attempt: Callable[[str], pb.SubmitResponse], what: str) -> pb.SubmitResponse:
        """``attempt`` until a definite answer; OutcomeUnknownError when the
        retries run out after an attempt whose outcome is unknown."""
        return self._call(attempt, write=what)

    def _call(self, attempt: Callable[[str], T], write: str = "") -> T:
        """Run ``attempt(endpoint)`` until it returns or fails for good,
        retrying with backoff until the retry deadline and moving to the
        next known node when one stops answering. ``write`` names the write
        (empty for a read): a write may have taken effect when an attempt's
        outcome was unknown."""
        deadline = self._clock() + self.retry_deadline_s
        delay = BACKOFF_FIRST_S
        maybe_applied = False
        attempts = 0
        while True:
            endpoint = self.endpoint
            attempts += 1
            try:
                return attempt(endpoint)
            except grpc.RpcError as exc:
                error = from_rpc_error(exc, endpoint)
            except FleetError as exc:
                error = exc
            if not error.retryable:
                raise error
            maybe_applied = maybe_applied or not error.definite
            if isinstance(error, Unreachable | TransportError) or error.code in _FAILOVER_CODES:
                self._current = (self._current + 1) % len(self._endpoints)
            pause = delay * (0.5 + self._rng.random() / 2)
            if self._clock() + pause > deadline:
                break
            log.info("%s; retrying in %.1fs via %s (attempt %d)", error, pause, self.endpoint, attempts + 1)
            self._sleep(pause)
            delay = min(delay * 2, BACKOFF_MAX_S)
        if write and maybe_applied:
            raise OutcomeUnknownError(
                f"{write}: no definite answer after {attempts} attempts in {self.retry_deadline_s:g}s "
                f"(last: {error})"
            )
        if isinstance(error, Unreachable):
            raise Unreachable(f"no node answered in {self.retry_deadline_s:g}s (tried "
                              f"{', '.join(self._endpoints)}): {error.message}")
        raise error


def _routable(address: str, via: str) -> str:
    """``address`` with an unspecified host (a server bound to 0.0.0.0)
    replaced by the host of ``via``, the address that reached the node."""
    host, sep, port = address.rpartition(":")
    if sep and host in _UNSPECIFIED_HOSTS:
        return f"{via.rpartition(':')[0]}:{port}"
    return address
