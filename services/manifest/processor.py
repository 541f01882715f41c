"""The manifest processor: what a SUIT recipient does with an envelope.

Given the envelope bytes, trust anchors and a device context it decides
accept or reject, with a typed reason (draft-ietf-suit-manifest-37 §6):
authenticate before parsing (§6.2), check the sequence number (§8.4.2,
anti-rollback: must be greater than the installed one, as RIOT does), check
severable members (§8.4.12), then run the procedure's command sequences,
each preceded by the shared sequence (§5.3.3), against a simulated device.
Pure: the context is data, no I/O, no clock. It does not write images
anywhere; the result says what would be installed and invoked.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from .auth import (
    TrustAnchor,
    authenticate,
    check_envelope_members,
    check_severable,
    compute_digest,
)
from .codec import Decoder
from .errors import (
    ErrorCode,
    LimitExceeded,
    ProcessingError,
    RollbackRejected,
    SeverableError,
    StructureError,
    SuitError,
)
from .limits import DEFAULT_LIMITS, Limits
from .model import (
    CONDITIONS,
    Command,
    CommandSequence,
    ComponentId,
    Envelope,
    Manifest,
    ManifestKey,
    Parameter,
    Parameters,
    Pen,
    SuitDigest,
    TryEach,
)


@dataclass(frozen=True, slots=True)
class ImageInfo:
    """A payload known by its SHA-256 and size rather than its bytes."""

    sha256: bytes
    size: int


Image = bytes | ImageInfo


class Procedure(enum.Enum):
    AUTHENTICATE = "authenticate"  # authentication, parsing, rollback, severable only
    UPDATE = "update"  # shared + payload-fetch + install + validate (§8.4.6)
    INVOKE = "invoke"  # shared + validate + load + invoke (secure boot)


@dataclass(frozen=True, slots=True)
class DeviceContext:
    """What the recipient knows about itself (all data, no I/O)."""

    vendor_id: bytes
    class_id: bytes
    device_id: bytes | None = None
    installed_sequence: Mapping[ComponentId, int] = field(default_factory=dict)
    images: Mapping[ComponentId, Image] = field(default_factory=dict)  # current contents
    fetchable: Mapping[str, Image] = field(default_factory=dict)  # uri → payload
    slots: Mapping[ComponentId, int] = field(default_factory=dict)  # target slot
    components: frozenset[ComponentId] | None = None  # None: any component


@dataclass(frozen=True, slots=True)
class Outcome:
    """An accepted envelope and what processing it did."""

    manifest: Manifest
    signer: TrustAnchor
    severed: tuple[int, ...]
    images: tuple[tuple[ComponentId, Image], ...]
    invoked: tuple[ComponentId, ...]


@dataclass(frozen=True, slots=True)
class Verdict:
    accepted: bool
    code: ErrorCode
    message: str
    sequence_number: int | None = None
    components: tuple[ComponentId, ...] = ()
    outcome: Outcome | None = None


_SEQUENCES = {
    Procedure.AUTHENTICATE: (),
    Procedure.UPDATE: (ManifestKey.PAYLOAD_FETCH, ManifestKey.INSTALL, ManifestKey.VALIDATE),
    Procedure.INVOKE: (ManifestKey.VALIDATE, ManifestKey.LOAD, ManifestKey.INVOKE),
}


def process(
    data: bytes,
    anchors: Sequence[TrustAnchor],
    context: DeviceContext,
    procedure: Procedure = Procedure.UPDATE,
    limits: Limits = DEFAULT_LIMITS,
) -> Outcome:
    """Accept the envelope (returning what it did) or raise a ``SuitError``."""
    decoder = Decoder(limits)
    envelope = decoder.envelope(data)
    signer = authenticate(envelope, anchors, context.class_id)  # §6.2: before parsing
    check_envelope_members(envelope)
    manifest = decoder.manifest(envelope.manifest_raw)
    components = manifest.common.components
    if not signer.covers(components):
        raise ProcessingError(
            "the signing key is not trusted for these components", ErrorCode.UNTRUSTED_SIGNER
        )
    for component in components:
        if context.components is not None and component not in context.components:
            raise ProcessingError(
                f"component {_show(component)} does not exist on this device",
                ErrorCode.COMPONENT_MISMATCH,
            )
        installed = context.installed_sequence.get(component)
        if installed is not None and manifest.sequence_number <= installed:
            raise RollbackRejected(installed, manifest.sequence_number)
    severed = check_severable(envelope, manifest)
    machine = _Machine(manifest, envelope, context, limits)
    for key in _SEQUENCES[procedure]:
        seq = _sequence_for(decoder, envelope, manifest, key, severed)
        if seq is not None:
            machine.run_procedure_step(seq)
    return Outcome(
        manifest=manifest,
        signer=signer,
        severed=severed,
        images=tuple((components[i], img) for i, img in sorted(machine.images.items())),
        invoked=tuple(components[i] for i in machine.invoked),
    )


def validate(
    data: bytes,
    anchors: Sequence[TrustAnchor],
    context: DeviceContext,
    procedure: Procedure = Procedure.UPDATE,
    limits: Limits = DEFAULT_LIMITS,
) -> Verdict:
    """``process`` as a verdict: typed errors become a rejection with a reason."""
    try:
        outcome = process(data, anchors, context, procedure, limits)
    except SuitError as exc:
        return Verdict(False, exc.code, exc.message)
    return Verdict(
        True,
        ErrorCode.OK,
        "accepted",
        outcome.manifest.sequence_number,
        outcome.manifest.common.components,
        outcome,
    )


def _sequence_for(
    decoder: Decoder,
    envelope: Envelope,
    manifest: Manifest,
    key: ManifestKey,
    severed: tuple[int, ...],
) -> CommandSequence | None:
    if key == ManifestKey.VALIDATE:
        return manifest.validate
    if key == ManifestKey.LOAD:
        return manifest.load
    if key == ManifestKey.INVOKE:
        return manifest.invoke
    member = manifest.severable(key)
    if isinstance(member, SuitDigest):
        if int(key) in severed:
            raise SeverableError(
                f"{key.name.lower()} was severed and is needed for this procedure",
                ErrorCode.SEVERABLE_MISSING,
            )
        raw = envelope.member(int(key))
        assert raw is not None  # checked against its digest by check_severable
        return decoder.sequence(raw, 8)
    if member is None or isinstance(member, CommandSequence):
        return member
    raise StructureError(f"{key.name.lower()} is not a command sequence")


def _show(component: ComponentId) -> str:
    return "[" + ",".join(p.hex() for p in component) + "]"


class _ConditionFailed(ProcessingError):
    """A condition (not a directive) failed: soft-failure may absorb it (§8.4.9)."""


class _Machine:
    """Parameter storage, component images and the command interpreter (§6.4)."""

    def __init__(
        self, manifest: Manifest, envelope: Envelope, context: DeviceContext, limits: Limits
    ) -> None:
        self.manifest = manifest
        self.envelope = envelope
        self.context = context
        self.components = manifest.common.components
        self.budget = limits.max_commands_run
        self.images: dict[int, Image] = {
            i: context.images[c] for i, c in enumerate(self.components) if c in context.images
        }
        self.invoked: list[int] = []
        self.params: list[dict[int, object]] = [{} for _ in self.components]
        self.index: list[int] = [0]

    def run_procedure_step(self, seq: CommandSequence) -> None:
        shared = self.manifest.common.shared_sequence
        for s in (shared, seq):
            if s is None:
                continue
            if len(self.components) > 1 and s.commands[0].code != Command.SET_COMPONENT_INDEX:
                # §6.2: with several components every sequence starts by choosing one.
                raise StructureError("sequence must begin with set-component-index")
            self.index = [0]
            self.run(s, soft=None)

    def run(self, seq: CommandSequence, soft: bool | None) -> bool:
        """Run ``seq``; False when a condition failed under soft-failure."""
        for command in seq.commands:
            self.budget -= 1
            if self.budget < 0:
                raise LimitExceeded("too many commands executed")
            code, arg = command.code, command.arg
            try:
                if code == Command.OVERRIDE_PARAMETERS or code == Command.SET_PARAMETERS:
                    soft = self.set_parameters(arg, code == Command.OVERRIDE_PARAMETERS, soft)
                elif code == Command.SET_COMPONENT_INDEX:
                    self.select(arg)
                elif code == Command.TRY_EACH:
                    self.try_each(arg)
                elif code == Command.RUN_SEQUENCE:
                    assert isinstance(arg, CommandSequence)
                    saved = self.index
                    self.run(arg, soft=False)
                    self.index = saved
                else:
                    for i in self.index:
                        self.execute(code, i)
            except _ConditionFailed:
                if soft:
                    return False
                raise
        return True

    def try_each(self, arg: object) -> None:
        assert isinstance(arg, TryEach)
        last: ProcessingError | None = None
        for seq in arg.sequences:  # §8.4.10.2: soft-failure defaults to true
            saved = self.index
            try:
                if self.run(seq, soft=True):
                    return
            except _ConditionFailed as exc:
                last = exc
            self.index = saved
        if arg.allow_none:
            return
        raise _ConditionFailed(
            "no try-each alternative succeeded"
            + (f" (last: {last.message})" if last else ""),
            last.code if last else ErrorCode.CONDITION_FAILED,
        )

    def select(self, arg: object) -> None:
        count = len(self.components)
        if arg is True:
            self.index = list(range(count))
            return
        indexes = list(arg) if isinstance(arg, tuple) else [arg]
        for i in indexes:
            if type(i) is not int or not 0 <= i < count:
                raise StructureError(f"component index {i!r} is out of range")
        self.index = indexes  # type: ignore[assignment]

    def set_parameters(self, arg: object, override: bool, soft: bool | None) -> bool | None:
        assert isinstance(arg, Parameters)
        for key, value in arg.items:
            if key == Parameter.SOFT_FAILURE:
                if soft is None:  # §8.4.8.15: only inside try-each / run-sequence
                    raise ProcessingError(
                        "soft-failure set outside try-each or run-sequence", ErrorCode.ABORTED
                    )
                soft = bool(value)
            for i in self.index:
                if override or key not in self.params[i]:
                    self.params[i][key] = value
        return soft

    def param(self, i: int, key: int) -> object:
        try:
            return self.params[i][key]
        except KeyError:
            raise _ConditionFailed(
                f"parameter {Parameter(key).name.lower()} is not set for component "
                f"{_show(self.components[i])}",
                ErrorCode.PARAMETER_MISSING,
            ) from None

    def execute(self, code: int, i: int) -> None:
        ctx = self.context
        if code == Command.VENDOR_IDENTIFIER:
            value = self.param(i, Parameter.VENDOR_IDENTIFIER)
            if isinstance(value, Pen) or value != ctx.vendor_id:
                raise _ConditionFailed("vendor id does not match", ErrorCode.VENDOR_MISMATCH)
        elif code == Command.CLASS_IDENTIFIER:
            if self.param(i, Parameter.CLASS_IDENTIFIER) != ctx.class_id:
                raise _ConditionFailed("class id does not match", ErrorCode.CLASS_MISMATCH)
        elif code == Command.DEVICE_IDENTIFIER:
            value = self.param(i, Parameter.DEVICE_IDENTIFIER)
            if ctx.device_id is None or value != ctx.device_id:
                raise _ConditionFailed("device id does not match", ErrorCode.DEVICE_MISMATCH)
        elif code == Command.IMAGE_MATCH:
            self.image_match(i)
        elif code == Command.COMPONENT_SLOT:
            want = self.param(i, Parameter.COMPONENT_SLOT)
            if ctx.slots.get(self.components[i], 0) != want:
                raise _ConditionFailed(f"component is not in slot {want}", ErrorCode.SLOT_MISMATCH)
        elif code == Command.CHECK_CONTENT:
            content = self.param(i, Parameter.CONTENT)
            image = self.images.get(i)
            if not (
                isinstance(image, bytes)
                and isinstance(content, bytes)
                and hmac.compare_digest(image, content)  # §8.4.9.6: constant time
            ):
                raise _ConditionFailed("component content does not match")
        elif code == Command.ABORT:
            raise _ConditionFailed("condition-abort", ErrorCode.ABORTED)
        elif code == Command.WRITE:
            content = self.param(i, Parameter.CONTENT)
            assert isinstance(content, bytes)
            self.images[i] = content
        elif code == Command.FETCH:
            self.images[i] = self.fetch(i)
        elif code == Command.COPY or code == Command.SWAP:
            src = self.param(i, Parameter.SOURCE_COMPONENT)
            if type(src) is not int or not 0 <= src < len(self.components):
                raise ProcessingError("source-component is out of range", ErrorCode.ABORTED)
            if src not in self.images:
                raise ProcessingError(
                    f"source component {_show(self.components[src])} holds no image",
                    ErrorCode.PAYLOAD_UNAVAILABLE,
                )
            if code == Command.COPY:
                self.images[i] = self.images[src]
            else:
                if i not in self.images:
                    raise ProcessingError("swap target holds no image", ErrorCode.PAYLOAD_UNAVAILABLE)
                self.images[i], self.images[src] = self.images[src], self.images[i]
        elif code == Command.INVOKE:
            if i not in self.images:
                raise ProcessingError(
                    f"nothing to invoke in {_show(self.components[i])}",
                    ErrorCode.PAYLOAD_UNAVAILABLE,
                )
            self.invoked.append(i)
        elif code in CONDITIONS or code < 0:
            # §8.4.9: an unknown (or unimplemented) condition is a failure.
            raise _ConditionFailed(f"condition {code} is not supported", ErrorCode.UNSUPPORTED_COMMAND)
        else:
            # Directives failing always abort (§6.4).
            raise ProcessingError(f"directive {code} is not supported", ErrorCode.UNSUPPORTED_COMMAND)

    def fetch(self, i: int) -> Image:
        uri = self.param(i, Parameter.URI)
        assert isinstance(uri, str)
        if uri.startswith("#"):  # integrated payload (§7.6)
            payload = self.envelope.member(uri[1:])
            if payload is None:
                payload = self.envelope.member(uri)
            if payload is not None:
                return payload
        image = self.context.fetchable.get(uri)
        if image is None:
            raise ProcessingError(f"payload {uri} is not available", ErrorCode.PAYLOAD_UNAVAILABLE)
        return image

    def image_match(self, i: int) -> None:
        digest = self.param(i, Parameter.IMAGE_DIGEST)
        assert isinstance(digest, SuitDigest)
        image = self.images.get(i)
        if image is None:
            raise _ConditionFailed(
                f"component {_show(self.components[i])} holds no image",
                ErrorCode.IMAGE_DIGEST_MISMATCH,
            )
        size = self.params[i].get(Parameter.IMAGE_SIZE)
        actual_size = image.size if isinstance(image, ImageInfo) else len(image)
        if size is not None and size != actual_size:
            raise _ConditionFailed(
                f"image is {actual_size} bytes, manifest says {size}",
                ErrorCode.IMAGE_SIZE_MISMATCH,
            )
        if isinstance(image, ImageInfo):
            if digest.algorithm != -16:
                raise _ConditionFailed(
                    "only a SHA-256 is known for this payload", ErrorCode.IMAGE_DIGEST_MISMATCH
                )
            actual = image.sha256
        else:
            actual = compute_digest(digest.algorithm, image)
        if not hmac.compare_digest(actual, digest.digest):
            raise _ConditionFailed("image digest does not match", ErrorCode.IMAGE_DIGEST_MISMATCH)


def image_info(payload: bytes) -> ImageInfo:
    return ImageInfo(hashlib.sha256(payload).digest(), len(payload))
