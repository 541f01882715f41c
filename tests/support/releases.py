"""Release entries for tests: signed envelopes built by the release
client's own description (``fleetsuit.release_content.release_description``: the
shape the cluster's checks expect), the entries
that publish, revoke and change them, and the bootstrap anchors."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fleetsuit.release_content import release_description
from fleetsuit.v1 import consensus_pb2 as pb
from services.consensus.ledger.codec import encode_anchor_bootstrap
from services.consensus.ledger.entries import Anchor
from services.consensus.ledger.keys import RequestKey
from services.consensus.ledger.releases import key_id_of
from suit.build import build_envelope, sign_envelope
from suit.keys import public_pem

VENDOR = "fleetsuit.example"
BOOTSTRAP_KEY = RequestKey("cluster/trust-anchors", 1)


@dataclass(frozen=True)
class Publisher:
    key: Ed25519PrivateKey

    @classmethod
    def new(cls, seed: int | None = None) -> Publisher:
        if seed is None:
            return cls(Ed25519PrivateKey.generate())
        return cls(Ed25519PrivateKey.from_private_bytes(hashlib.sha256(f"publisher-{seed}".encode()).digest()))

    @property
    def pem(self) -> bytes:
        return public_pem(self.key.public_key())

    def anchor(self, components: Sequence[str] = (), classes: Sequence[str] = ()) -> Anchor:
        return Anchor(key_id_of(self.pem), self.pem, tuple(components), tuple(classes))


def cid_of(payload: bytes) -> str:
    return "sha256:" + hashlib.sha256(payload).hexdigest()


def envelope(
    publisher: Publisher, component: str, sequence: int, payload: bytes, device_class: str = "default",
    vendor: str = VENDOR, manifest_payload: bytes | None = None,
) -> bytes:
    """A signed envelope; ``manifest_payload``: the bytes whose digest and
    size the manifest states (default: ``payload``)."""
    stated = payload if manifest_payload is None else manifest_payload
    description = release_description(
        component=component, sequence=sequence, payload_cid=cid_of(stated), payload_size=len(stated),
        device_class=device_class, vendor_domain=vendor,
    )
    signed: bytes = sign_envelope(build_envelope(description, {}), publisher.key)
    return signed


def publish(
    publisher: Publisher, component: str, sequence: int, payload: bytes, *, key: RequestKey | None = None,
    device_class: str = "default", release_id: str = "", manifest_payload: bytes | None = None,
    envelope_bytes: bytes | None = None,
) -> bytes:
    """An encoded ReleasePublished ledger entry."""
    key = key or RequestKey(f"release/{component}", sequence)
    env = envelope_bytes if envelope_bytes is not None else envelope(
        publisher, component, sequence, payload, device_class, manifest_payload=manifest_payload
    )
    entry = pb.LedgerEntry(client_id=key.client_id, request_id=key.request_id, release_published=pb.ReleasePublished(
        release_id=release_id or f"{component}@{sequence}", envelope=env, component=component,
        sequence_number=sequence, payload_cid=cid_of(payload), payload_size=len(payload),
        device_classes=[device_class], vendor_domain=VENDOR,
    ))
    raw: bytes = entry.SerializeToString()
    return raw


def revoke(release_id: str, key: RequestKey, reason: str = "withdrawn") -> bytes:
    raw: bytes = pb.LedgerEntry(
        client_id=key.client_id, request_id=key.request_id,
        release_revoked=pb.ReleaseRevoked(release_id=release_id, reason=reason),
    ).SerializeToString()
    return raw


def rollout(release_id: str, action: str, key: RequestKey, reason: str = "") -> bytes:
    raw: bytes = pb.LedgerEntry(
        client_id=key.client_id, request_id=key.request_id,
        rollout_changed=pb.RolloutChanged(release_id=release_id, action=action, reason=reason),
    ).SerializeToString()
    return raw


def bootstrap(*anchors: Anchor) -> bytes:
    return encode_anchor_bootstrap(BOOTSTRAP_KEY, sorted(anchors, key=lambda a: a.key_id))
