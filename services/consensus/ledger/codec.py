"""The one codec edge of the ledger: its typed values (``BlockData``,
``BlockSignature``, ``EntryView``, ``MemberKey``, ``RequestKey``) to and
from their protobuf encodings, which are also how blocks are stored, how a
Raft entry carries a batch of ledger entries, and how a ledger entry is
written (``LedgerEntry``, the ledger's public wire format). The ledger
machine, certification and the runtime work on the typed values only;
besides this module, only ``export.py`` and ``proof.py`` (file formats
read offline) parse protobuf."""

from __future__ import annotations

from collections.abc import Sequence

from google.protobuf.message import DecodeError

from fleetsuit.v1 import consensus_pb2 as pb

from .block import BlockData
from .entries import (
    Anchor,
    AnchorSet,
    BlockSignature,
    Device,
    DeviceEvent,
    DeviceEvents,
    Enrollment,
    EntryView,
    InstalledVersion,
    LedgerBody,
    MemberKey,
    Publish,
    Refusal,
    Release,
    ReleaseOutcomes,
    Revoke,
    RolloutAction,
    RolloutPolicy,
)
from .keys import RequestKey


def block_to_pb(block: BlockData) -> pb.Block:
    return pb.Block(
        height=block.height,
        prev_hash=block.prev_hash,
        first_index=block.first_index,
        last_index=block.last_index,
        entries=list(block.entries),
        hash=block.hash,
        term=block.term,
        certificate=[pb.BlockSignature(node_id=n, signature=sig) for n, sig in block.certificate],
    )


def block_from_pb(msg: pb.Block) -> BlockData:
    return BlockData(
        height=msg.height,
        prev_hash=msg.prev_hash,
        first_index=msg.first_index,
        last_index=msg.last_index,
        term=msg.term,
        entries=tuple(msg.entries),
        hash=msg.hash,
        certificate=tuple((c.node_id, c.signature) for c in msg.certificate),
    )


def block_to_bytes(block: BlockData) -> bytes:
    """A block as stored (an encoded ``pb.Block``, no certificate)."""
    raw: bytes = block_to_pb(block).SerializeToString()
    return raw


def block_from_bytes(raw: bytes) -> BlockData:
    return block_from_pb(pb.Block.FromString(raw))


def signature_to_pb(s: BlockSignature) -> pb.SignedBlock:
    return pb.SignedBlock(height=s.height, hash=s.hash, node_id=s.node_id, signature=s.signature)


def signature_from_pb(msg: pb.SignedBlock) -> BlockSignature:
    return BlockSignature(msg.height, msg.hash, msg.node_id, msg.signature)


def encode_batch(payloads: Sequence[bytes]) -> bytes:
    """The data of one Raft entry: a batch of encoded ledger entries."""
    raw: bytes = pb.EntryBatch(entries=list(payloads)).SerializeToString()
    return raw


def decode_batch(data: bytes) -> list[bytes]:
    try:
        return list(pb.EntryBatch.FromString(data).entries)
    except DecodeError:
        return []


def decode_entry(payload: bytes) -> EntryView | None:
    """What the ledger needs of one encoded ledger entry, from one parse
    (None: the bytes are not a ledger entry)."""
    try:
        entry = pb.LedgerEntry.FromString(payload)
    except DecodeError:
        return None
    key = RequestKey(entry.client_id, entry.request_id) if entry.client_id else None
    kind = entry.WhichOneof("kind")
    if kind == "app" or kind is None:
        return EntryView(key, kind)
    if kind == "membership_changed":
        members = tuple(
            MemberKey(m.node_id, m.public_key, m.key_proof) for m in entry.membership_changed.members
        )
        return EntryView(key, kind, members)
    return EntryView(key, kind, (), _body(entry))


def _body(entry: pb.LedgerEntry) -> LedgerBody | None:
    kind = entry.WhichOneof("kind")
    if kind == "release_published":
        r = entry.release_published
        return Publish(
            r.release_id, r.envelope, r.component, r.sequence_number, r.payload_cid, r.payload_size,
            tuple(r.device_classes), r.vendor_domain, rollout_from_pb(r.rollout),
        )
    if kind == "release_revoked":
        return Revoke(entry.release_revoked.release_id, entry.release_revoked.reason)
    if kind == "rollout_changed":
        c = entry.rollout_changed
        return RolloutAction(c.release_id, c.action, c.reason)
    if kind == "trust_anchors_set":
        t = entry.trust_anchors_set
        return AnchorSet(tuple(anchor_from_pb(a) for a in t.anchors), t.root_signature)
    if kind == "device_enrollment":
        d = entry.device_enrollment
        return Enrollment(d.device_id, d.action, d.device_class, d.group, d.public_key_pem, d.reason)
    if kind == "device_events":
        return DeviceEvents(tuple(
            DeviceEvent(e.device_id, e.kind, e.release_id, e.at_unix_ms, e.detail, e.component, e.sequence_number,
                        e.gateway_id)
            for e in entry.device_events.events
        ))
    return None


def rollout_from_pb(msg: pb.RolloutPolicy) -> RolloutPolicy:
    return RolloutPolicy(
        msg.start_at_unix_ms, msg.end_at_unix_ms, msg.experimental, tuple(msg.stages), msg.stage_interval_ms,
        tuple(msg.groups), msg.halt_failure_percent, msg.halt_min_devices,
    )


def rollout_to_pb(policy: RolloutPolicy) -> pb.RolloutPolicy:
    return pb.RolloutPolicy(
        start_at_unix_ms=policy.start_at_unix_ms, end_at_unix_ms=policy.end_at_unix_ms,
        experimental=policy.experimental, stages=list(policy.stages), stage_interval_ms=policy.stage_interval_ms,
        groups=list(policy.groups), halt_failure_percent=policy.halt_failure_percent,
        halt_min_devices=policy.halt_min_devices,
    )


def anchor_from_pb(msg: pb.TrustAnchor) -> Anchor:
    return Anchor(msg.key_id, msg.public_key_pem, tuple(msg.components), tuple(msg.device_classes))


def anchor_to_pb(anchor: Anchor) -> pb.TrustAnchor:
    return pb.TrustAnchor(
        key_id=anchor.key_id, public_key_pem=anchor.public_key_pem,
        components=list(anchor.components), device_classes=list(anchor.device_classes),
    )


def release_to_pb(release: Release, *, include_envelope: bool = True) -> pb.Release:
    return pb.Release(
        release_id=release.release_id, component=release.component,
        device_classes=list(release.device_classes), vendor_domain=release.vendor_domain,
        sequence_number=release.sequence_number, payload_cid=release.payload_cid,
        payload_size=release.payload_size, envelope=release.envelope if include_envelope else b"",
        rollout=rollout_to_pb(release.rollout), state=release.state, state_reason=release.state_reason,
        index=release.index, block_height=release.block_height, position=release.position,
        signer_key_id=release.signer_key_id,
    )


def release_from_pb(msg: pb.Release) -> Release:
    return Release(
        msg.release_id, msg.component, tuple(msg.device_classes), msg.vendor_domain, msg.sequence_number,
        msg.payload_cid, msg.payload_size, msg.envelope, rollout_from_pb(msg.rollout), msg.state,
        msg.state_reason, msg.index, msg.block_height, msg.position, msg.signer_key_id,
    )


def refusal_to_pb(refusal: Refusal) -> pb.Refusal:
    return pb.Refusal(
        index=refusal.index, block_height=refusal.block_height, position=refusal.position,
        kind=refusal.kind, release_id=refusal.release_id, code=refusal.code, message=refusal.message,
    )


def refusal_from_pb(msg: pb.Refusal) -> Refusal:
    return Refusal(msg.index, msg.block_height, msg.position, msg.kind, msg.release_id, msg.code, msg.message)


# The release state's stored records (``releases.py``'s tables): the API's
# own messages, encoded.


def release_to_bytes(release: Release) -> bytes:
    raw: bytes = release_to_pb(release).SerializeToString(deterministic=True)
    return raw


def release_from_bytes(raw: bytes) -> Release:
    return release_from_pb(pb.Release.FromString(raw))


def anchor_to_bytes(anchor: Anchor) -> bytes:
    raw: bytes = anchor_to_pb(anchor).SerializeToString(deterministic=True)
    return raw


def anchor_from_bytes(raw: bytes) -> Anchor:
    return anchor_from_pb(pb.TrustAnchor.FromString(raw))


def refusal_to_bytes(refusal: Refusal) -> bytes:
    raw: bytes = refusal_to_pb(refusal).SerializeToString(deterministic=True)
    return raw


def refusal_from_bytes(raw: bytes) -> Refusal:
    return refusal_from_pb(pb.Refusal.FromString(raw))


# The device state's stored records (``devices.py``'s tables), likewise
# the API's own messages, encoded (protobuf's rules keep old records
# readable when fields are added).


def device_to_pb(device: Device) -> pb.Device:
    return pb.Device(
        device_id=device.device_id, state=device.state, device_class=device.device_class, group=device.group,
        public_key_pem=device.public_key_pem, state_reason=device.state_reason,
        installed=[pb.InstalledVersion(component=v.component, release_id=v.release_id,
                                       sequence_number=v.sequence_number) for v in device.installed],
        last_event=device.last_event, last_event_at_unix_ms=device.last_event_at_unix_ms,
        last_gateway_id=device.last_gateway_id, index=device.index,
    )


def device_from_pb(msg: pb.Device) -> Device:
    return Device(
        msg.device_id, msg.state, msg.device_class, msg.group, msg.public_key_pem, msg.state_reason,
        tuple(InstalledVersion(v.component, v.release_id, v.sequence_number) for v in msg.installed),
        msg.last_event, msg.last_event_at_unix_ms, msg.last_gateway_id, msg.index,
    )


def device_to_bytes(device: Device) -> bytes:
    raw: bytes = device_to_pb(device).SerializeToString(deterministic=True)
    return raw


def device_from_bytes(raw: bytes) -> Device:
    return device_from_pb(pb.Device.FromString(raw))


def outcomes_to_pb(outcomes: ReleaseOutcomes) -> pb.ReleaseOutcomes:
    return pb.ReleaseOutcomes(release_id=outcomes.release_id, installed=outcomes.installed, failed=outcomes.failed)


def outcomes_to_bytes(outcomes: ReleaseOutcomes) -> bytes:
    raw: bytes = outcomes_to_pb(outcomes).SerializeToString(deterministic=True)
    return raw


def outcomes_from_bytes(raw: bytes) -> ReleaseOutcomes:
    msg = pb.ReleaseOutcomes.FromString(raw)
    return ReleaseOutcomes(msg.release_id, msg.installed, msg.failed)


def encode_anchor_bootstrap(key: RequestKey, anchors: Sequence[Anchor]) -> bytes:
    """The ledger entry by which a node records the cluster's configured
    trust anchors (the first one applied stands)."""
    entry = pb.LedgerEntry(
        client_id=key.client_id, request_id=key.request_id,
        trust_anchors_set=pb.TrustAnchorsSet(anchors=[anchor_to_pb(a) for a in anchors]),
    )
    raw: bytes = entry.SerializeToString(deterministic=True)
    return raw


def encode_key_registration(key: RequestKey, member: MemberKey) -> bytes:
    """The ledger entry by which a node records its block-signing key."""
    entry = pb.LedgerEntry(
        client_id=key.client_id, request_id=key.request_id,
        membership_changed=pb.MembershipChanged(members=[pb.Member(
            node_id=member.node_id, public_key=member.public_key, key_proof=member.key_proof, voter=True,
        )]),
    )
    raw: bytes = entry.SerializeToString()
    return raw
