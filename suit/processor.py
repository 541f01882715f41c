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
from collections.abc import Sequence
from dataclasses import dataclass, field

from . import fastpath
from .auth import (
    TrustAnchor,
    authenticate,
    check_digest_only,
    check_envelope_members,
    check_severable,
)
from .codec import Decoder
from .device import DeviceContext, Image, ImageInfo, image_info
from .errors import (
    ErrorCode,
    ProcessingError,
    RollbackRejected,
    SeverableError,
    StructureError,
    SuitError,
)
from .frozen import slot_init
from .interpreter import (
    Interpreter,
    Program,
    compile_sequence,
    images_of,
    invoked_of,
    show,
)
from .limits import DEFAULT_LIMITS, Limits
from .model import (
    CommandSequence,
    ComponentId,
    Envelope,
    Manifest,
    ManifestKey,
    SuitDigest,
)

__all__ = [
    "DeviceContext",
    "Image",
    "ImageInfo",
    "Outcome",
    "Procedure",
    "Verdict",
    "accepted",
    "image_info",
    "process",
    "process_typed",
    "rejected",
    "validate",
]


class Procedure(enum.Enum):
    AUTHENTICATE = "authenticate"  # authentication, parsing, rollback, severable only
    UPDATE = "update"  # shared + payload-fetch + install + validate (§8.4.6)
    INVOKE = "invoke"  # shared + validate + load + invoke (secure boot)


@slot_init
@dataclass(frozen=True, slots=True)
class Outcome:
    """An accepted envelope and what processing it did.

    ``manifest`` is the typed model of the authenticated manifest bytes. The
    one-pass path checks every rule without building it, so it is decoded
    from ``manifest_raw`` when first read.
    """

    signer: TrustAnchor
    severed: tuple[int, ...]
    images: tuple[tuple[ComponentId, Image], ...]
    invoked: tuple[ComponentId, ...]
    sequence_number: int
    components: tuple[ComponentId, ...]
    manifest_raw: bytes = field(repr=False)
    limits: Limits = field(default=DEFAULT_LIMITS, repr=False, compare=False)
    decoded: Manifest | None = field(default=None, repr=False, compare=False)

    @property
    def manifest(self) -> Manifest:
        manifest = self.decoded
        if manifest is None:
            manifest = Decoder(self.limits).manifest(self.manifest_raw)
            object.__setattr__(self, "decoded", manifest)  # a cache of a pure function
        return manifest


@slot_init
@dataclass(frozen=True, slots=True)
class Verdict:
    accepted: bool
    code: ErrorCode
    message: str
    sequence_number: int | None = None
    components: tuple[ComponentId, ...] = ()
    outcome: Outcome | None = None


# The command sequences each procedure runs after the shared sequence (§8.4.6).
_SEQUENCES = {
    Procedure.AUTHENTICATE: (),
    Procedure.UPDATE: (ManifestKey.PAYLOAD_FETCH, ManifestKey.INSTALL, ManifestKey.VALIDATE),
    Procedure.INVOKE: (ManifestKey.VALIDATE, ManifestKey.LOAD, ManifestKey.INVOKE),
}
_UPDATE_SEQUENCES = _SEQUENCES[Procedure.UPDATE]


def process(
    data: bytes,
    anchors: Sequence[TrustAnchor],
    context: DeviceContext,
    procedure: Procedure = Procedure.UPDATE,
    limits: Limits = DEFAULT_LIMITS,
) -> Outcome:
    """Accept the envelope (returning what it did) or raise a ``SuitError``.

    Envelopes in the common shape go through ``fastpath``, which reads each
    byte once and builds no model; it hands anything else to the typed
    decoder below, before the signature check when the envelope's outer
    levels are unusual and after it (never checking a signature twice)
    when the manifest is, or when the manifest is rejected: every rejection
    after authentication is reported by the code below.
    """
    authenticated = fastpath.authenticate(data, anchors, context.class_id, limits)
    if authenticated is None:
        return process_typed(data, anchors, context, procedure, limits)
    # An identity test before the table: hashing an Enum member runs Python code.
    sequences = _UPDATE_SEQUENCES if procedure is Procedure.UPDATE else _SEQUENCES[procedure]
    accepted = fastpath.process(authenticated, context, sequences, limits)
    if accepted is not None:
        signer, severed, images, invoked, sequence_number, components = accepted
        return Outcome(
            signer,
            severed,
            images,
            invoked,
            sequence_number,
            components,
            authenticated.manifest_raw,
            limits,
        )
    decoder = Decoder(limits)
    envelope = decoder.envelope(data)  # decodes: the one-pass reader accepted it
    check_digest_only(envelope)  # the manifest is the one whose digest was signed
    return _authenticated(decoder, envelope, authenticated.signer, context, procedure, limits)


def process_typed(
    data: bytes,
    anchors: Sequence[TrustAnchor],
    context: DeviceContext,
    procedure: Procedure = Procedure.UPDATE,
    limits: Limits = DEFAULT_LIMITS,
) -> Outcome:
    """``process`` through the typed decoder alone: every envelope shape, and
    the reference the one-pass path is tested against."""
    decoder = Decoder(limits)
    envelope = decoder.envelope(data)
    signer = authenticate(envelope, anchors, context.class_id)  # §6.2: before parsing
    return _authenticated(decoder, envelope, signer, context, procedure, limits)


def _authenticated(
    decoder: Decoder,
    envelope: Envelope,
    signer: TrustAnchor,
    context: DeviceContext,
    procedure: Procedure,
    limits: Limits,
) -> Outcome:
    """Everything after the signature: parsing, rollback, severable members,
    and the procedure's command sequences."""
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
                f"component {show(component)} does not exist on this device",
                ErrorCode.COMPONENT_MISMATCH,
            )
        installed = context.installed_sequence.get(component)
        if installed is not None and manifest.sequence_number <= installed:
            raise RollbackRejected(installed, manifest.sequence_number)
    severed = check_severable(envelope, manifest)
    shared = manifest.common.shared_sequence
    interpreter = Interpreter(
        components,
        None if shared is None else compile_sequence(shared),
        envelope.member,
        context,
        limits.max_commands_run,
    )
    for key in _SEQUENCES[procedure]:
        program = _program_for(decoder, envelope, manifest, key, severed)
        if program is not None:
            interpreter.run_procedure_step(program)
    return Outcome(
        signer,
        severed,
        images_of(interpreter),
        invoked_of(interpreter),
        manifest.sequence_number,
        components,
        envelope.manifest_raw,
        limits,
        manifest,
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
        return rejected(exc)
    return accepted(outcome)


def accepted(outcome: Outcome) -> Verdict:
    """The verdict on an envelope ``process`` accepted."""
    return Verdict(
        True,
        ErrorCode.OK,
        "accepted",
        outcome.sequence_number,
        outcome.components,
        outcome,
    )


def rejected(error: SuitError) -> Verdict:
    """The verdict on an envelope ``process`` refused with ``error``."""
    return Verdict(False, error.code, error.message)


def _program_for(
    decoder: Decoder,
    envelope: Envelope,
    manifest: Manifest,
    key: ManifestKey,
    severed: tuple[int, ...],
) -> Program | None:
    seq = _sequence_for(decoder, envelope, manifest, key, severed)
    return None if seq is None else compile_sequence(seq)


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
