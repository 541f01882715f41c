"""The cluster's trust anchors as a node is configured with them, and their
bootstrap into the ledger.

An anchor is configured as ``PATH[:components=a,b][:classes=x,y]``: a PEM
public key (Ed25519 or P-256) that may sign releases, for the components
and device classes named (none named: any). ``parse_anchor_specs`` reads the
text (pure), ``load_anchors`` reads the files into ``ledger.entries.Anchor``
(key id = ``releases.key_id_of``), sorted by key id so that every node
configured alike encodes the very same bootstrap entry.

``bootstrap_anchors`` runs while the node runs: once a leader is known and
the ledger holds no anchors, it submits them (``codec.encode_anchor_bootstrap``
under the one key ``cluster/trust-anchors``/1). Every node with the same
anchors submits the same bytes under the same key, so the ledger applies
one and answers the others as duplicates; the first set applied stands
(``releases.ReleaseState._anchors``). A node whose configuration differs
from the ledger's anchors says so once, and the ledger's anchors rule.

Not here: changing the anchors of a running cluster (the root-signed
rotation of the security issue).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from .errors import ConsensusError, IdempotencyKeyReused, ReleaseRefused
from .ledger.codec import encode_anchor_bootstrap
from .ledger.entries import Anchor, Applied
from .ledger.keys import RequestKey
from .ledger.releases import MAX_NAME, ReleaseState, key_id_of

log = logging.getLogger(__name__)

BOOTSTRAP_KEY = RequestKey("cluster/trust-anchors", 1)
RETRY_S = 0.5  # between two bootstrap attempts
SPEC_SEPARATOR = ";"  # between anchors in one value (the environment variable)
_SCOPES = {"components": "components", "classes": "device_classes"}
_SCOPE_RE = re.compile(r"^([a-z_]+)=(.*)$")


class AnchorError(ValueError):
    """A trust anchor that cannot be used; the message names its file."""


@dataclass(frozen=True, slots=True)
class AnchorSpec:
    """One configured anchor: its file and its scope (empty: any)."""

    path: str
    components: tuple[str, ...] = ()
    device_classes: tuple[str, ...] = ()

    def __str__(self) -> str:
        text = self.path
        if self.components:
            text += ":components=" + ",".join(self.components)
        if self.device_classes:
            text += ":classes=" + ",".join(self.device_classes)
        return text


def parse_anchor_spec(text: str) -> AnchorSpec:
    """``PATH[:components=a,b][:classes=x,y]`` -> AnchorSpec (the scopes in
    either order, each at most once). The path may hold colons: only the
    trailing ``name=...`` parts are scopes. Raises AnchorError."""
    parts = text.strip().split(":")
    scopes: dict[str, tuple[str, ...]] = {}
    while len(parts) > 1 and (m := _SCOPE_RE.match(parts[-1])):
        name, value = m.group(1), m.group(2)
        if name not in _SCOPES:
            raise AnchorError(f"trust anchor {text!r}: unknown scope {name!r} (components=..., classes=...)")
        if name in scopes:
            raise AnchorError(f"trust anchor {text!r}: {name} given twice")
        names = tuple(n.strip() for n in value.split(","))
        if not value or any(not n or len(n) > MAX_NAME for n in names):
            raise AnchorError(f"trust anchor {text!r}: {name} needs names of 1 to {MAX_NAME} characters")
        scopes[name] = names
        parts.pop()
    path = ":".join(parts)
    if not path:
        raise AnchorError(f"trust anchor {text!r} names no file")
    return AnchorSpec(path, scopes.get("components", ()), scopes.get("classes", ()))


def parse_anchor_specs(text: str) -> tuple[AnchorSpec, ...]:
    """Several specs in one value, separated by ``;``."""
    return tuple(parse_anchor_spec(part) for part in text.split(SPEC_SEPARATOR) if part.strip())


def load_anchor(spec: AnchorSpec) -> Anchor:
    """The anchor of one spec, its file read; AnchorError naming the file."""
    try:
        pem = Path(spec.path).read_bytes()
    except OSError as exc:
        raise AnchorError(f"cannot read trust anchor {spec.path}: {exc.strerror}") from None
    try:
        key_id = key_id_of(pem)
    except ValueError as exc:
        raise AnchorError(f"trust anchor {spec.path}: {exc}") from None
    return Anchor(key_id, pem, spec.components, spec.device_classes)


def load_anchors(specs: Iterable[AnchorSpec]) -> tuple[Anchor, ...]:
    """Every configured anchor, sorted by key id (the bootstrap's bytes are
    then the same on every node); a key given twice is refused."""
    anchors: dict[str, tuple[AnchorSpec, Anchor]] = {}
    for spec in specs:
        anchor = load_anchor(spec)
        if anchor.key_id in anchors:
            raise AnchorError(
                f"trust anchor {spec.path} is the key of {anchors[anchor.key_id][0].path} "
                f"(key id {anchor.key_id}); give each key once"
            )
        anchors[anchor.key_id] = (spec, anchor)
    return tuple(anchors[k][1] for k in sorted(anchors))


def same_anchors(a: Sequence[Anchor], b: Sequence[Anchor]) -> bool:
    return sorted(a, key=lambda x: x.key_id) == sorted(b, key=lambda x: x.key_id)


def describe(anchors: Sequence[Anchor]) -> str:
    return ", ".join(
        a.key_id
        + (f" components={','.join(a.components)}" if a.components else "")
        + (f" classes={','.join(a.device_classes)}" if a.device_classes else "")
        for a in anchors
    ) or "none"


# ---------------------------------------------------------------- bootstrap


class _Machine(Protocol):
    @property
    def releases(self) -> ReleaseState: ...


class AnchorNode(Protocol):
    """What the bootstrap needs of the node (``runtime.ConsensusNode``)."""

    @property
    def machine(self) -> _Machine: ...

    @property
    def leader_id(self) -> str: ...

    async def submit(self, payload: bytes, key: RequestKey, timeout_s: float) -> Applied: ...


async def bootstrap_anchors(
    node: AnchorNode, anchors: Sequence[Anchor], attempt_timeout_s: float, retry_s: float = RETRY_S
) -> None:
    """Until the ledger holds trust anchors: submit this node's (a known
    leader first; each attempt bounded by ``attempt_timeout_s``, then again
    after ``retry_s``). Returns once the ledger has anchors, after a warning
    if they are not this node's; or after an error if the ledger refuses
    this node's set (it would refuse it again)."""
    if not anchors:
        return
    payload = encode_anchor_bootstrap(BOOTSTRAP_KEY, sorted(anchors, key=lambda a: a.key_id))
    while True:
        recorded = node.machine.releases.anchors()
        if recorded:
            if same_anchors(recorded, anchors):
                log.info("trust anchors in the ledger: %s", describe(recorded))
            else:
                log.warning(
                    "the ledger's trust anchors differ from this node's configuration; the ledger's "
                    "stand (releases are checked against them). ledger: %s; configured here: %s",
                    describe(recorded), describe(anchors),
                )
            return
        if node.leader_id:
            try:
                await node.submit(payload, BOOTSTRAP_KEY, attempt_timeout_s)
                continue  # applied here: the loop reads it back
            except IdempotencyKeyReused:
                pass  # another node's set went first: it shows up once applied here
            except ReleaseRefused as exc:
                if node.machine.releases.anchors():
                    continue  # set by another entry meanwhile: compared above
                log.error("the ledger refused this node's trust anchors (%s): %s", exc.code, exc)
                return
            except ConsensusError as exc:
                log.debug("trust anchor bootstrap: %s; trying again", exc)
        await asyncio.sleep(retry_s)
