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
from collections.abc import Callable, Mapping, Sequence
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
    if key is ManifestKey.VALIDATE:
        return manifest.validate
    if key is ManifestKey.LOAD:
        return manifest.load
    if key is ManifestKey.INVOKE:
        return manifest.invoke
    member = manifest.payload_fetch if key is ManifestKey.PAYLOAD_FETCH else manifest.install
    if member is None or type(member) is CommandSequence:
        return member
    if isinstance(member, SuitDigest):
        if int(key) in severed:
            raise SeverableError(
                f"{key.name.lower()} was severed and is needed for this procedure",
                ErrorCode.SEVERABLE_MISSING,
            )
        raw = envelope.member(int(key))
        assert raw is not None  # checked against its digest by check_severable
        return decoder.sequence(raw, 8)
    if isinstance(member, CommandSequence):
        return member
    raise StructureError(f"{key.name.lower()} is not a command sequence")


def _show(component: ComponentId) -> str:
    return "[" + ",".join(p.hex() for p in component) + "]"


class _ConditionFailed(ProcessingError):
    """A condition (not a directive) failed: soft-failure may absorb it (§8.4.9)."""


# Code points as plain ints: an ``IntEnum`` member lookup costs several
# times an int comparison, and the interpreter below runs per command.
_OVERRIDE_PARAMETERS = int(Command.OVERRIDE_PARAMETERS)
_SET_PARAMETERS = int(Command.SET_PARAMETERS)
_SET_COMPONENT_INDEX = int(Command.SET_COMPONENT_INDEX)
_TRY_EACH = int(Command.TRY_EACH)
_RUN_SEQUENCE = int(Command.RUN_SEQUENCE)
_SOFT_FAILURE = int(Parameter.SOFT_FAILURE)
_SHA256 = -16
_P_VENDOR_IDENTIFIER = int(Parameter.VENDOR_IDENTIFIER)
_P_CLASS_IDENTIFIER = int(Parameter.CLASS_IDENTIFIER)
_P_DEVICE_IDENTIFIER = int(Parameter.DEVICE_IDENTIFIER)
_P_COMPONENT_SLOT = int(Parameter.COMPONENT_SLOT)
_P_CONTENT = int(Parameter.CONTENT)
_P_SOURCE_COMPONENT = int(Parameter.SOURCE_COMPONENT)
_P_URI = int(Parameter.URI)
_P_IMAGE_DIGEST = int(Parameter.IMAGE_DIGEST)
_P_IMAGE_SIZE = int(Parameter.IMAGE_SIZE)


class _Machine:
    """Parameter storage, component images and the command interpreter (§6.4)."""

    __slots__ = ("components", "budget", "images", "invoked", "params", "index",
                 "context", "envelope", "shared")

    def __init__(
        self, manifest: Manifest, envelope: Envelope, context: DeviceContext, limits: Limits
    ) -> None:
        self.envelope = envelope
        self.context = context
        self.components = manifest.common.components
        self.shared = manifest.common.shared_sequence
        self.budget = limits.max_commands_run
        current = context.images
        self.images: dict[int, Image] = (
            {i: current[c] for i, c in enumerate(self.components) if c in current}
            if current
            else {}
        )
        self.invoked: list[int] = []
        self.params: list[dict[int, object]] = [{} for _ in self.components]
        self.index: list[int] = [0]

    def run_procedure_step(self, seq: CommandSequence) -> None:
        several = len(self.components) > 1
        for s in (self.shared, seq):
            if s is None:
                continue
            if several and s.commands[0].code != _SET_COMPONENT_INDEX:
                # §6.2: with several components every sequence starts by choosing one.
                raise StructureError("sequence must begin with set-component-index")
            self.index = [0]
            self.run(s, soft=None)

    def run(self, seq: CommandSequence, soft: bool | None) -> bool:
        """Run ``seq``; False when a condition failed under soft-failure."""
        flow = _FLOW
        for command in seq.commands:
            self.budget -= 1
            if self.budget < 0:
                raise LimitExceeded("too many commands executed")
            code = command.code
            try:
                step = flow.get(code)
                if step is not None:
                    soft = step(self, code, command.arg, soft)
                else:
                    action = _ACTIONS.get(code, _unsupported)
                    for i in self.index:
                        action(self, code, i)
            except _ConditionFailed:
                if soft:
                    return False
                raise
        return True

    # -------------------------------------------- flow control (§8.4.10)

    def parameters_step(self, code: int, arg: object, soft: bool | None) -> bool | None:
        assert isinstance(arg, Parameters)
        override = code == _OVERRIDE_PARAMETERS
        params = self.params
        for key, value in arg.items:
            if key == _SOFT_FAILURE:
                if soft is None:  # §8.4.8.15: only inside try-each / run-sequence
                    raise ProcessingError(
                        "soft-failure set outside try-each or run-sequence", ErrorCode.ABORTED
                    )
                soft = bool(value)
            for i in self.index:
                if override or key not in params[i]:
                    params[i][key] = value
        return soft

    def select_step(self, code: int, arg: object, soft: bool | None) -> bool | None:
        count = len(self.components)
        if arg is True:
            self.index = list(range(count))
            return soft
        indexes = list(arg) if isinstance(arg, tuple) else [arg]
        for i in indexes:
            if type(i) is not int or not 0 <= i < count:
                raise StructureError(f"component index {i!r} is out of range")
        self.index = indexes  # type: ignore[assignment]
        return soft

    def try_each_step(self, code: int, arg: object, soft: bool | None) -> bool | None:
        assert isinstance(arg, TryEach)
        last: ProcessingError | None = None
        for seq in arg.sequences:  # §8.4.10.2: soft-failure defaults to true
            saved = self.index
            try:
                if self.run(seq, soft=True):
                    return soft
            except _ConditionFailed as exc:
                last = exc
            self.index = saved
        if arg.allow_none:
            return soft
        raise _ConditionFailed(
            "no try-each alternative succeeded"
            + (f" (last: {last.message})" if last else ""),
            last.code if last else ErrorCode.CONDITION_FAILED,
        )

    def run_sequence_step(self, code: int, arg: object, soft: bool | None) -> bool | None:
        assert isinstance(arg, CommandSequence)
        saved = self.index
        self.run(arg, soft=False)
        self.index = saved
        return soft

    # -------------------------------------------- conditions and directives

    def param(self, i: int, key: int) -> object:
        value = self.params[i].get(key, _MISSING)
        if value is _MISSING:
            raise _ConditionFailed(
                f"parameter {Parameter(key).name.lower()} is not set for component "
                f"{_show(self.components[i])}",
                ErrorCode.PARAMETER_MISSING,
            )
        return value

    def vendor_identifier(self, code: int, i: int) -> None:
        value = self.param(i, _P_VENDOR_IDENTIFIER)
        if isinstance(value, Pen) or value != self.context.vendor_id:
            raise _ConditionFailed("vendor id does not match", ErrorCode.VENDOR_MISMATCH)

    def class_identifier(self, code: int, i: int) -> None:
        if self.param(i, _P_CLASS_IDENTIFIER) != self.context.class_id:
            raise _ConditionFailed("class id does not match", ErrorCode.CLASS_MISMATCH)

    def device_identifier(self, code: int, i: int) -> None:
        value = self.param(i, _P_DEVICE_IDENTIFIER)
        device_id = self.context.device_id
        if device_id is None or value != device_id:
            raise _ConditionFailed("device id does not match", ErrorCode.DEVICE_MISMATCH)

    def component_slot(self, code: int, i: int) -> None:
        want = self.param(i, _P_COMPONENT_SLOT)
        if self.context.slots.get(self.components[i], 0) != want:
            raise _ConditionFailed(f"component is not in slot {want}", ErrorCode.SLOT_MISMATCH)

    def check_content(self, code: int, i: int) -> None:
        content = self.param(i, _P_CONTENT)
        image = self.images.get(i)
        if not (
            isinstance(image, bytes)
            and isinstance(content, bytes)
            and hmac.compare_digest(image, content)  # §8.4.9.6: constant time
        ):
            raise _ConditionFailed("component content does not match")

    def abort(self, code: int, i: int) -> None:
        raise _ConditionFailed("condition-abort", ErrorCode.ABORTED)

    def write(self, code: int, i: int) -> None:
        content = self.param(i, _P_CONTENT)
        assert isinstance(content, bytes)
        self.images[i] = content

    def fetch(self, code: int, i: int) -> None:
        self.images[i] = self.fetched(i)

    def copy_or_swap(self, code: int, i: int) -> None:
        src = self.param(i, _P_SOURCE_COMPONENT)
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

    def invoke(self, code: int, i: int) -> None:
        if i not in self.images:
            raise ProcessingError(
                f"nothing to invoke in {_show(self.components[i])}",
                ErrorCode.PAYLOAD_UNAVAILABLE,
            )
        self.invoked.append(i)

    def fetched(self, i: int) -> Image:
        uri = self.param(i, _P_URI)
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

    def image_match(self, code: int, i: int) -> None:
        digest = self.param(i, _P_IMAGE_DIGEST)
        assert isinstance(digest, SuitDigest)
        image = self.images.get(i)
        if image is None:
            raise _ConditionFailed(
                f"component {_show(self.components[i])} holds no image",
                ErrorCode.IMAGE_DIGEST_MISMATCH,
            )
        size = self.params[i].get(_P_IMAGE_SIZE)
        is_info = isinstance(image, ImageInfo)
        actual_size = image.size if is_info else len(image)  # type: ignore[union-attr,arg-type]
        if size is not None and size != actual_size:
            raise _ConditionFailed(
                f"image is {actual_size} bytes, manifest says {size}",
                ErrorCode.IMAGE_SIZE_MISMATCH,
            )
        if is_info:
            if digest.algorithm != _SHA256:
                raise _ConditionFailed(
                    "only a SHA-256 is known for this payload", ErrorCode.IMAGE_DIGEST_MISMATCH
                )
            actual = image.sha256  # type: ignore[union-attr]
        else:
            actual = compute_digest(digest.algorithm, image)  # type: ignore[arg-type]
        if not hmac.compare_digest(actual, digest.digest):
            raise _ConditionFailed("image digest does not match", ErrorCode.IMAGE_DIGEST_MISMATCH)


def _unsupported(machine: _Machine, code: int, i: int) -> None:
    if code in CONDITIONS or code < 0:
        # §8.4.9: an unknown (or unimplemented) condition is a failure.
        raise _ConditionFailed(f"condition {code} is not supported", ErrorCode.UNSUPPORTED_COMMAND)
    # Directives failing always abort (§6.4).
    raise ProcessingError(f"directive {code} is not supported", ErrorCode.UNSUPPORTED_COMMAND)


_MISSING = object()

# Commands that change what runs or on which component; the rest act per
# selected component (§6.4). Both tables are built once, not per command.
_FLOW: dict[int, Callable[[_Machine, int, object, bool | None], bool | None]] = {
    _OVERRIDE_PARAMETERS: _Machine.parameters_step,
    _SET_PARAMETERS: _Machine.parameters_step,
    _SET_COMPONENT_INDEX: _Machine.select_step,
    _TRY_EACH: _Machine.try_each_step,
    _RUN_SEQUENCE: _Machine.run_sequence_step,
}
_ACTIONS: dict[int, Callable[[_Machine, int, int], None]] = {
    Command.VENDOR_IDENTIFIER: _Machine.vendor_identifier,
    Command.CLASS_IDENTIFIER: _Machine.class_identifier,
    Command.DEVICE_IDENTIFIER: _Machine.device_identifier,
    Command.IMAGE_MATCH: _Machine.image_match,
    Command.COMPONENT_SLOT: _Machine.component_slot,
    Command.CHECK_CONTENT: _Machine.check_content,
    Command.ABORT: _Machine.abort,
    Command.WRITE: _Machine.write,
    Command.FETCH: _Machine.fetch,
    Command.COPY: _Machine.copy_or_swap,
    Command.SWAP: _Machine.copy_or_swap,
    Command.INVOKE: _Machine.invoke,
}


def image_info(payload: bytes) -> ImageInfo:
    return ImageInfo(hashlib.sha256(payload).digest(), len(payload))
