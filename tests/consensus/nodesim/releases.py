"""The release workload of the whole-node simulation (issue 11: the ledger
machine's release state survives restart, snapshot install and catch-up,
identical on every node); what must hold of the state it leads to is
``release_checks.py``.

Workload (``ReleaseWorkload``), mixed with the other clients' app entries:
first a release submitted before any trust anchor is recorded (refused:
NO_TRUST_ANCHORS), then the trust anchors' bootstrap entry (one publisher,
``Publisher.new(seed)``), then a second bootstrap (refused: the first one
stands). Then one client per component publishes releases with increasing
sequence numbers, and entries that must be refused on apply (signed by a
key that is no anchor, a stale sequence number, a manifest whose digest is
not the payload's, the id of an existing release), revokes releases and
pauses, resumes and halts their rollouts; it also enrols devices of its
own (``<component>-dev<k>``) and submits their reports of installed and
failed releases (refused DEVICE_EXISTS, DEVICE_UNKNOWN where the rules
say). Envelopes are signed with keys
derived from the seed (Ed25519 signatures are deterministic), so a seed
reproduces every entry byte for byte.

Each client waits for an entry's answer (retrying the same key through
other nodes) before it submits the next, so its entries apply in its order.
An entry still unanswered when the chaos ends ends its client's script, and
is submitted again once the network has healed (``resubmit_pending``): every
entry of the script is then applied exactly once, in script order. The
components are independent of each other, so ``ReleaseModel`` (the rules of
``ledger/releases.py`` written again, as plainly as possible) says what each
entry's outcome must be, whatever the interleaving with other entries, and
every answer must carry that outcome ("" applied, or the refusal code).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fleetsuit.device_auth import public_pem
from fleetsuit.v1 import consensus_pb2 as pb
from services.consensus.errors import ConsensusError, ReleaseRefused
from services.consensus.ledger.codec import decode_entry, encode_anchor_bootstrap
from services.consensus.ledger.keys import RequestKey, entry_digest
from services.consensus.runtime import ConsensusNode
from tests.support.releases import Publisher, bootstrap, publish, revoke, rollout

from .invariants import InvariantViolation, LedgerChecker

# Device keys: any valid key will do (an enrolment's key is only loaded).
DEVICE_KEY = public_pem(Ed25519PrivateKey.from_private_bytes(bytes(32)))


def enrol(device_id: str, key: RequestKey) -> bytes:
    raw: bytes = pb.LedgerEntry(
        client_id=key.client_id, request_id=key.request_id,
        device_enrollment=pb.DeviceEnrollment(device_id=device_id, action="enroll", device_class="default",
                                              public_key_pem=DEVICE_KEY),
    ).SerializeToString()
    return raw


def device_report(device_id: str, release_id: str, sequence: int, installed: bool, key: RequestKey) -> bytes:
    component = release_id.partition("@")[0]
    event = pb.DeviceEvent(device_id=device_id, kind="installed" if installed else "install_failed",
                           release_id=release_id, component=component, sequence_number=sequence, gateway_id="g")
    raw: bytes = pb.LedgerEntry(client_id=key.client_id, request_id=key.request_id,
                                device_events=pb.DeviceEvents(events=[event])).SerializeToString()
    return raw

# The refusal codes, written again (stable API codes, ``errors.py``).
NO_TRUST_ANCHORS = "NO_TRUST_ANCHORS"
ANCHORS_REFUSED = "ANCHORS_REFUSED"
UNTRUSTED_KEY = "UNTRUSTED_KEY"
STALE_SEQUENCE = "STALE_SEQUENCE"
DIGEST_MISMATCH = "DIGEST_MISMATCH"
DUPLICATE_RELEASE = "DUPLICATE_RELEASE"
REVOKED = "REVOKED"
UNKNOWN_RELEASE = "UNKNOWN_RELEASE"
INVALID_TRANSITION = "INVALID_TRANSITION"
DEVICE_EXISTS = "DEVICE_EXISTS"
DEVICE_UNKNOWN = "DEVICE_UNKNOWN"
DEVICES_PER_COMPONENT = 3

_ROLLOUT = {  # action: (states it applies in, the state it leads to)
    "pause": ({"active"}, "paused"),
    "resume": ({"paused"}, "active"),
    "halt": ({"active", "paused"}, "halted"),
}

# What a component client does next, and how often (ops that need a release
# wait until there is one).
_KINDS = ("publish", "stale", "untrusted", "digest", "duplicate", "revoke", "pause", "resume", "halt",
          "unknown")
_WEIGHTS = (4, 1, 1, 1, 1, 1, 2, 2, 1, 0.5)
# A component client's device entries, after every other release entry
# (drawn from an rng of their own, so the release entries are the same
# with them or without).
_DEVICE_KINDS = ("enroll", "report", "ghost report")
_DEVICE_WEIGHTS = (1, 3, 0.5)


class ReleaseModel:
    """The release rules, plainly: what an entry's outcome is, given the
    entries applied before it (checks in the order ``check_publish`` makes
    them: the id, the sequence number, then the envelope)."""

    def __init__(self) -> None:
        self.anchors: tuple[str, ...] = ()  # key ids
        self.sequences: dict[str, int] = {}
        self.releases: dict[str, tuple[str, int, str]] = {}  # id -> (component, sequence, state)
        self.devices: dict[str, str] = {}  # device id -> state
        self.outcomes: dict[tuple[str, str], str] = {}  # (release id, device id) -> its last outcome

    def enroll(self, device_id: str) -> str:
        if device_id in self.devices:
            return DEVICE_EXISTS
        self.devices[device_id] = "accepted"
        return ""

    def report(self, device_id: str, release_id: str, outcome: str) -> str:
        """One event (installed or install_failed) of an existing release;
        the workload's releases never ask for an automatic halt."""
        if device_id not in self.devices:
            return DEVICE_UNKNOWN
        self.outcomes[(release_id, device_id)] = outcome
        return ""

    def release_outcomes(self) -> dict[str, tuple[int, int]]:
        """Release id -> (devices installed, devices failed), as the ledger counts them."""
        out: dict[str, tuple[int, int]] = {}
        for (release_id, _), outcome in self.outcomes.items():
            installed, failed = out.get(release_id, (0, 0))
            out[release_id] = (installed + (outcome == "installed"), failed + (outcome == "failed"))
        return out

    def anchor_set(self, key_ids: tuple[str, ...]) -> str:
        if self.anchors:
            return ANCHORS_REFUSED
        self.anchors = key_ids
        return ""

    def publish(self, component: str, sequence: int, release_id: str, *, trusted: bool, digest_ok: bool) -> str:
        existing = self.releases.get(release_id)
        if existing is not None:
            return REVOKED if existing[2] == "revoked" else DUPLICATE_RELEASE
        if sequence <= self.sequences.get(component, 0):
            return STALE_SEQUENCE
        if not self.anchors:
            return NO_TRUST_ANCHORS
        if not trusted:
            return UNTRUSTED_KEY
        if not digest_ok:
            return DIGEST_MISMATCH
        self.releases[release_id] = (component, sequence, "active")
        self.sequences[component] = sequence
        return ""

    def revoke(self, release_id: str) -> str:
        existing = self.releases.get(release_id)
        if existing is None:
            return UNKNOWN_RELEASE
        if existing[2] == "revoked":
            return REVOKED
        self.releases[release_id] = (*existing[:2], "revoked")
        return ""

    def rollout(self, release_id: str, action: str) -> str:
        existing = self.releases.get(release_id)
        if existing is None:
            return UNKNOWN_RELEASE
        if existing[2] == "revoked":
            return REVOKED
        states, target = _ROLLOUT[action]
        if existing[2] not in states:
            return INVALID_TRANSITION
        self.releases[release_id] = (*existing[:2], target)
        return ""


@dataclass(frozen=True)
class ReleaseOp:
    """One release entry of the workload and the outcome the model gives it."""

    key: RequestKey
    payload: bytes
    kind: str  # publish, revoke, pause, resume, halt, anchors, enroll, report
    release_id: str
    expected: str  # "" or the refusal code
    what: str  # for messages: "stale publish fw-a@2~5"


@dataclass
class ReleaseStats:
    acknowledged: int = 0
    refused: int = 0  # of the acknowledged
    envelopes: int = 0  # signed envelopes built
    resubmitted: int = 0  # entries left unanswered by the chaos, submitted again after healing


class ReleaseWorkload:
    def __init__(self, seed: int, components: Sequence[str], ops_per_component: int,
                 checker: LedgerChecker) -> None:
        self._seed = seed
        self._components = tuple(components)
        self._ops = ops_per_component
        self._checker = checker
        self.publisher = Publisher.new(seed)
        self._rogue = Publisher.new(-1 - seed)  # a key that is no anchor
        self._rng = random.Random(f"nodesim-releases-{seed}")  # which node takes a submission
        self.model = ReleaseModel()
        self.ops: list[ReleaseOp] = []
        self.answers: dict[RequestKey, tuple[ReleaseOp, str]] = {}  # key -> (op, the outcome answered)
        self.pending: list[ReleaseOp] = []
        self.stats = ReleaseStats()

    # ------------------------------------------------------------ clients

    async def run(self, nodes: Mapping[str, ConsensusNode], until: float) -> None:
        """The anchors' script, then the component clients, until ``until``."""
        anchor, rogue = self.publisher.anchor(), self._rogue.anchor()
        script: list[Callable[[], ReleaseOp]] = [  # each made when its turn comes
            lambda: self._publish("fw-early", 1, b"too early", RequestKey("releases/anchors", 1),
                                  "publish before anchors"),
            lambda: self._op(bootstrap(anchor), "anchors", "", self.model.anchor_set((anchor.key_id,)),
                             "bootstrap"),
            lambda: self._op(encode_anchor_bootstrap(RequestKey("releases/anchors", 2), [rogue]), "anchors", "",
                             self.model.anchor_set((rogue.key_id,)), "second bootstrap"),
        ]
        for make in script:
            if not await self._submit(nodes, make(), until):
                return
        await asyncio.gather(*(self._component(nodes, c, until) for c in self._components))

    async def _component(self, nodes: Mapping[str, ConsensusNode], component: str, until: float) -> None:
        # The script of a component depends on the seed alone (its own rngs).
        rng = random.Random(f"nodesim-releases-{self._seed}-{component}")
        device_rng = random.Random(f"nodesim-devices-{self._seed}-{component}")
        for n in range(1, self._ops + 1):
            if asyncio.get_running_loop().time() >= until:
                return
            if not await self._submit(nodes, self._next(component, rng, n), until):
                return
            if n % 2 == 0 and not await self._submit(nodes, self._device_op(component, device_rng, n), until):
                return
            await asyncio.sleep(rng.uniform(0.02, 0.2))

    async def _submit(self, nodes: Mapping[str, ConsensusNode], op: ReleaseOp, until: float) -> bool:
        """Submit until answered (the same key through any node): False when
        the chaos ended first (the entry is then pending)."""
        loop = asyncio.get_running_loop()
        while loop.time() < until:
            live = sorted(nodes)
            if not live:
                await asyncio.sleep(0.1)
                continue
            try:
                answer = await nodes[self._rng.choice(live)].submit(op.payload, op.key, timeout_s=1.0)
            except ReleaseRefused as refused:  # the ledger's answer: refused on apply, with this code
                self.answered(op, refused.code, str(refused))
                return True
            except ConsensusError:
                await asyncio.sleep(0.05)
                continue
            self._checker.acknowledged(answer, entry_digest(op.payload))
            self.answered(op, "", "")
            return True
        self.pending.append(op)
        return False

    async def resubmit_pending(self, nodes: Mapping[str, ConsensusNode], deadline: float) -> bool:
        """After healing: the entries the chaos left unanswered (at most one
        per script, its last). False if one is still unanswered at the deadline."""
        pending, self.pending = self.pending, []
        for op in pending:
            self.stats.resubmitted += 1
            if not await self._submit(nodes, op, deadline):
                return False
        return True

    def answered(self, op: ReleaseOp, outcome: str, message: str) -> None:
        if outcome != op.expected:
            raise InvariantViolation(
                f"{op.what} ({op.key.client_id}/{op.key.request_id}) answered {outcome or 'applied'}"
                f"{' (' + message + ')' if message else ''}; the release rules say {op.expected or 'applied'}"
            )
        self.answers.setdefault(op.key, (op, outcome))
        self.stats.acknowledged += 1
        self.stats.refused += bool(outcome)

    # ------------------------------------------------------------ the scripts

    def _op(self, payload: bytes, kind: str, release_id: str, expected: str, what: str) -> ReleaseOp:
        key = decode_entry(payload)
        assert key is not None and key.key is not None
        op = ReleaseOp(key.key, payload, kind, release_id, expected, what)
        self.ops.append(op)
        return op

    def _publish(
        self, component: str, sequence: int, payload: bytes, key: RequestKey, what: str, *,
        release_id: str = "", signer: Publisher | None = None, manifest_payload: bytes | None = None,
    ) -> ReleaseOp:
        release_id = release_id or f"{component}@{sequence}"
        raw = publish(signer or self.publisher, component, sequence, payload, key=key, release_id=release_id,
                      manifest_payload=manifest_payload)
        self.stats.envelopes += 1
        expected = self.model.publish(component, sequence, release_id, trusted=signer is None,
                                      digest_ok=manifest_payload is None)
        return self._op(raw, "publish", release_id, expected, f"{what} {release_id}")

    def _device_op(self, component: str, rng: random.Random, n: int) -> ReleaseOp:
        model = self.model
        key = RequestKey(f"devices/{component}", n)
        enrolled = sorted(d for d in model.devices if d.startswith(f"{component}-dev"))
        ours = sorted(i for i, r in model.releases.items() if r[0] == component)
        kind = rng.choices(_DEVICE_KINDS, _DEVICE_WEIGHTS)[0] if enrolled and ours else "enroll"
        if kind == "enroll":
            device_id = f"{component}-dev{rng.randint(1, DEVICES_PER_COMPONENT)}"
            return self._op(enrol(device_id, key), kind, "", model.enroll(device_id), f"enroll {device_id}")
        device_id = rng.choice(enrolled) if kind == "report" else f"{component}-ghost"
        target = rng.choice(ours)
        installed = rng.random() < 0.6
        expected = model.report(device_id, target, "installed" if installed else "failed")
        raw = device_report(device_id, target, model.releases[target][1], installed, key)
        return self._op(raw, "report", target, expected, f"report of {device_id} on {target}")

    def _next(self, component: str, rng: random.Random, n: int) -> ReleaseOp:
        model = self.model
        key = RequestKey(f"releases/{component}", n)
        current = model.sequences.get(component, 0)
        ours = sorted(i for i, r in model.releases.items() if r[0] == component)
        kind = rng.choices(_KINDS, _WEIGHTS)[0] if ours else "publish"
        payload = rng.randbytes(rng.randint(1, 48))
        following = current + rng.randint(1, 2)
        if kind == "publish":
            return self._publish(component, following, payload, key, "publish")
        if kind == "stale":
            stale = rng.randint(1, current)
            return self._publish(component, stale, payload, key, "stale publish", release_id=f"{component}@{stale}~{n}")
        if kind == "untrusted":
            return self._publish(component, following, payload, key, "untrusted publish", signer=self._rogue)
        if kind == "digest":
            other = bytes([payload[0] ^ 1]) + payload[1:]
            return self._publish(component, following, payload, key, "digest-mismatch publish",
                                 manifest_payload=other)
        if kind == "duplicate":
            return self._publish(component, following, payload, key, "duplicate-id publish",
                                 release_id=rng.choice(ours))
        if kind == "unknown":
            target, kind = f"{component}@none{n}", rng.choice(("revoke", "pause"))
        else:
            target = rng.choice(ours)
        if kind == "revoke":
            return self._op(revoke(target, key), kind, target, model.revoke(target), f"revoke {target}")
        return self._op(rollout(target, kind, key), kind, target, model.rollout(target, kind), f"{kind} {target}")
