"""The command interpreter: parameter storage, component images, and the
conditions and directives of draft-ietf-suit-manifest-37 §6.4 and §8.4.9–10.

It runs *programs*: a command sequence compiled to a tuple of
``(code, argument)`` pairs whose arguments are plain values — parameters as
a dict in encoded order with each SUIT_Digest as ``(algorithm, bytes)``,
try-each as ``(programs, allow_none)``, run-sequence as a program. Both the typed decoder's ``CommandSequence`` (through
``compile_sequence``) and the one-pass reader (``fastpath``) produce them,
so there is one interpreter. Pure: the device is data, nothing is written.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable

from .auth import compute_digest
from .device import DeviceContext, Image, ImageInfo
from .errors import ErrorCode, LimitExceeded, ProcessingError, StructureError
from .model import (
    CONDITIONS,
    Command,
    CommandSequence,
    ComponentId,
    Parameter,
    Parameters,
    Pen,
    SuitDigest,
    TryEach,
)

Program = tuple[tuple[int, object], ...]
MemberLookup = Callable[[int | str], bytes | None]


def compile_sequence(seq: CommandSequence) -> Program:
    """``seq`` as the interpreter runs it (arguments as plain values)."""
    return tuple([(c.code, _compile_argument(c.arg)) for c in seq.commands])


def _compile_argument(arg: object) -> object:
    kind = type(arg)
    if kind is Parameters:
        return {k: _plain(v) for k, v in arg.items}  # type: ignore[attr-defined]
    if kind is TryEach:
        seqs = arg.sequences  # type: ignore[attr-defined]
        return (tuple([compile_sequence(s) for s in seqs]), arg.allow_none)  # type: ignore[attr-defined]
    if kind is CommandSequence:
        return compile_sequence(arg)  # type: ignore[arg-type]
    return arg


def _plain(value: object) -> object:
    if type(value) is SuitDigest:
        return (value.algorithm, value.digest)
    return value


def show(component: ComponentId) -> str:
    return "[" + ",".join(p.hex() for p in component) + "]"


class ConditionFailed(ProcessingError):
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
_ONLY_FIRST = [0]  # the selection every sequence starts with; never mutated


class Interpreter:
    """Parameter storage, component images and the command interpreter (§6.4)."""

    __slots__ = (
        "components",
        "budget",
        "images",
        "invoked",
        "params",
        "index",
        "context",
        "member",
        "shared",
        "several",
    )

    def __init__(
        self,
        components: tuple[ComponentId, ...],
        shared: Program | None,
        member: MemberLookup,
        context: DeviceContext,
        max_commands_run: int,
    ) -> None:
        self.member = member  # envelope members by key, for integrated payloads
        self.context = context
        self.components = components
        self.shared = shared
        self.several = len(components) > 1
        self.budget = max_commands_run
        current = context.images
        self.images: dict[int, Image] = (
            {i: current[c] for i, c in enumerate(components) if c in current} if current else {}
        )
        self.invoked: list[int] = []
        self.params: list[dict[int, object]] = (
            [{}] if len(components) == 1 else [{} for _ in components]
        )
        self.index: list[int] = _ONLY_FIRST

    def run_procedure_step(self, program: Program) -> None:
        """The shared sequence, then ``program`` (§5.3.3)."""
        for p in (self.shared, program):
            if p is None:
                continue
            if self.several and p[0][0] != _SET_COMPONENT_INDEX:
                # §6.2: with several components every sequence starts by choosing one.
                raise StructureError("sequence must begin with set-component-index")
            self.index = _ONLY_FIRST
            self.run(p, None)

    def run(self, program: Program, soft: bool | None) -> bool:
        """Run ``program``; False when a condition failed under soft-failure."""
        handlers = _HANDLERS
        for code, arg in program:
            self.budget -= 1
            if self.budget < 0:
                raise LimitExceeded("too many commands executed")
            try:
                soft = handlers.get(code, _unsupported)(self, code, arg, soft)
            except ConditionFailed:
                if soft:
                    return False
                raise
        return True

    # Every command is a step (interpreter, code, argument, soft-failure) returning
    # the soft-failure state; conditions and directives act on each selected
    # component in turn (§6.4).

    # -------------------------------------------- flow control (§8.4.10)

    def parameters_step(self, code: int, arg: object, soft: bool | None) -> bool | None:
        values: dict[int, object] = arg  # type: ignore[assignment]
        if _SOFT_FAILURE in values:
            if soft is None:  # §8.4.8.15: only inside try-each / run-sequence
                raise ProcessingError(
                    "soft-failure set outside try-each or run-sequence", ErrorCode.ABORTED
                )
            soft = bool(values[_SOFT_FAILURE])
        params = self.params
        if code == _OVERRIDE_PARAMETERS:
            for i in self.index:
                params[i].update(values)
        else:
            for i in self.index:
                current = params[i]
                for key, value in values.items():
                    if key not in current:
                        current[key] = value
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
        programs: tuple[Program, ...]
        allow_none: bool
        programs, allow_none = arg  # type: ignore[misc]
        last: ProcessingError | None = None
        for program in programs:  # §8.4.10.2: soft-failure defaults to true
            saved = self.index
            try:
                if self.run(program, True):
                    return soft
            except ConditionFailed as exc:
                last = exc
            self.index = saved
        if allow_none:
            return soft
        raise ConditionFailed(
            "no try-each alternative succeeded" + (f" (last: {last.message})" if last else ""),
            last.code if last else ErrorCode.CONDITION_FAILED,
        )

    def run_sequence_step(self, code: int, arg: object, soft: bool | None) -> bool | None:
        saved = self.index
        self.run(arg, False)  # type: ignore[arg-type]
        self.index = saved
        return soft

    # -------------------------------------------- conditions (§8.4.9)

    def param(self, i: int, key: int) -> object:
        value = self.params[i].get(key, _MISSING)
        if value is _MISSING:
            raise ConditionFailed(
                f"parameter {Parameter(key).name.lower()} is not set for component "
                f"{show(self.components[i])}",
                ErrorCode.PARAMETER_MISSING,
            )
        return value

    def vendor_identifier(self, code: int, arg: object, soft: bool | None) -> bool | None:
        for i in self.index:
            value = self.params[i].get(_P_VENDOR_IDENTIFIER, _MISSING)
            if value is _MISSING:
                value = self.param(i, _P_VENDOR_IDENTIFIER)
            if isinstance(value, Pen) or value != self.context.vendor_id:
                raise ConditionFailed("vendor id does not match", ErrorCode.VENDOR_MISMATCH)
        return soft

    def class_identifier(self, code: int, arg: object, soft: bool | None) -> bool | None:
        for i in self.index:
            value = self.params[i].get(_P_CLASS_IDENTIFIER, _MISSING)
            if value is _MISSING:
                value = self.param(i, _P_CLASS_IDENTIFIER)
            if value != self.context.class_id:
                raise ConditionFailed("class id does not match", ErrorCode.CLASS_MISMATCH)
        return soft

    def device_identifier(self, code: int, arg: object, soft: bool | None) -> bool | None:
        for i in self.index:
            value = self.param(i, _P_DEVICE_IDENTIFIER)
            device_id = self.context.device_id
            if device_id is None or value != device_id:
                raise ConditionFailed("device id does not match", ErrorCode.DEVICE_MISMATCH)
        return soft

    def component_slot(self, code: int, arg: object, soft: bool | None) -> bool | None:
        for i in self.index:
            want = self.param(i, _P_COMPONENT_SLOT)
            if self.context.slots.get(self.components[i], 0) != want:
                raise ConditionFailed(f"component is not in slot {want}", ErrorCode.SLOT_MISMATCH)
        return soft

    def check_content(self, code: int, arg: object, soft: bool | None) -> bool | None:
        for i in self.index:
            content = self.param(i, _P_CONTENT)
            image = self.images.get(i)
            if not (
                isinstance(image, bytes)
                and isinstance(content, bytes)
                and hmac.compare_digest(image, content)  # §8.4.9.6: constant time
            ):
                raise ConditionFailed("component content does not match")
        return soft

    def abort(self, code: int, arg: object, soft: bool | None) -> bool | None:
        if self.index:
            raise ConditionFailed("condition-abort", ErrorCode.ABORTED)
        return soft

    def image_match(self, code: int, arg: object, soft: bool | None) -> bool | None:
        for i in self.index:
            params = self.params[i]
            digest = params.get(_P_IMAGE_DIGEST, _MISSING)
            if digest is _MISSING:
                digest = self.param(i, _P_IMAGE_DIGEST)
            algorithm: int
            expected: bytes
            algorithm, expected = digest  # type: ignore[misc]
            image = self.images.get(i)
            if image is None:
                raise ConditionFailed(
                    f"component {show(self.components[i])} holds no image",
                    ErrorCode.IMAGE_DIGEST_MISMATCH,
                )
            size = params.get(_P_IMAGE_SIZE)
            is_info = isinstance(image, ImageInfo)
            actual_size = image.size if is_info else len(image)  # type: ignore[union-attr,arg-type]
            if size is not None and size != actual_size:
                raise ConditionFailed(
                    f"image is {actual_size} bytes, manifest says {size}",
                    ErrorCode.IMAGE_SIZE_MISMATCH,
                )
            if is_info:
                if algorithm != _SHA256:
                    raise ConditionFailed(
                        "only a SHA-256 is known for this payload", ErrorCode.IMAGE_DIGEST_MISMATCH
                    )
                actual = image.sha256  # type: ignore[union-attr]
            else:
                actual = compute_digest(algorithm, image)  # type: ignore[arg-type]
            if not hmac.compare_digest(actual, expected):
                raise ConditionFailed(
                    "image digest does not match", ErrorCode.IMAGE_DIGEST_MISMATCH
                )
        return soft

    # -------------------------------------------- directives (§8.4.10)

    def write(self, code: int, arg: object, soft: bool | None) -> bool | None:
        for i in self.index:
            content = self.param(i, _P_CONTENT)
            assert isinstance(content, bytes)
            self.images[i] = content
        return soft

    def fetch(self, code: int, arg: object, soft: bool | None) -> bool | None:
        for i in self.index:
            uri = self.params[i].get(_P_URI, _MISSING)
            if uri is _MISSING:
                uri = self.param(i, _P_URI)
            assert isinstance(uri, str)
            image: Image | None = None
            if uri.startswith("#"):  # integrated payload (§7.6)
                image = self.member(uri[1:])
                if image is None:
                    image = self.member(uri)
            if image is None:
                image = self.context.fetchable.get(uri)
                if image is None:
                    raise ProcessingError(
                        f"payload {uri} is not available", ErrorCode.PAYLOAD_UNAVAILABLE
                    )
            self.images[i] = image
        return soft

    def copy_or_swap(self, code: int, arg: object, soft: bool | None) -> bool | None:
        images = self.images
        for i in self.index:
            src = self.param(i, _P_SOURCE_COMPONENT)
            if type(src) is not int or not 0 <= src < len(self.components):
                raise ProcessingError("source-component is out of range", ErrorCode.ABORTED)
            if src not in images:
                raise ProcessingError(
                    f"source component {show(self.components[src])} holds no image",
                    ErrorCode.PAYLOAD_UNAVAILABLE,
                )
            if code == Command.COPY:
                images[i] = images[src]
            else:
                if i not in images:
                    raise ProcessingError(
                        "swap target holds no image", ErrorCode.PAYLOAD_UNAVAILABLE
                    )
                images[i], images[src] = images[src], images[i]
        return soft

    def invoke(self, code: int, arg: object, soft: bool | None) -> bool | None:
        for i in self.index:
            if i not in self.images:
                raise ProcessingError(
                    f"nothing to invoke in {show(self.components[i])}",
                    ErrorCode.PAYLOAD_UNAVAILABLE,
                )
            self.invoked.append(i)
        return soft


def _unsupported(interpreter: Interpreter, code: int, arg: object, soft: bool | None) -> bool | None:
    if not interpreter.index:
        return soft
    if code in CONDITIONS or code < 0:
        # §8.4.9: an unknown (or unimplemented) condition is a failure.
        raise ConditionFailed(f"condition {code} is not supported", ErrorCode.UNSUPPORTED_COMMAND)
    # Directives failing always abort (§6.4).
    raise ProcessingError(f"directive {code} is not supported", ErrorCode.UNSUPPORTED_COMMAND)


_MISSING = object()

# One step per command code, built once; anything else is ``_unsupported``.
_HANDLERS: dict[int, Callable[[Interpreter, int, object, bool | None], bool | None]] = {
    _OVERRIDE_PARAMETERS: Interpreter.parameters_step,
    _SET_PARAMETERS: Interpreter.parameters_step,
    _SET_COMPONENT_INDEX: Interpreter.select_step,
    _TRY_EACH: Interpreter.try_each_step,
    _RUN_SEQUENCE: Interpreter.run_sequence_step,
    Command.VENDOR_IDENTIFIER: Interpreter.vendor_identifier,
    Command.CLASS_IDENTIFIER: Interpreter.class_identifier,
    Command.DEVICE_IDENTIFIER: Interpreter.device_identifier,
    Command.IMAGE_MATCH: Interpreter.image_match,
    Command.COMPONENT_SLOT: Interpreter.component_slot,
    Command.CHECK_CONTENT: Interpreter.check_content,
    Command.ABORT: Interpreter.abort,
    Command.WRITE: Interpreter.write,
    Command.FETCH: Interpreter.fetch,
    Command.COPY: Interpreter.copy_or_swap,
    Command.SWAP: Interpreter.copy_or_swap,
    Command.INVOKE: Interpreter.invoke,
}


def images_of(interpreter: Interpreter) -> tuple[tuple[ComponentId, Image], ...]:
    """The images by component, in component order."""
    components = interpreter.components
    images = interpreter.images
    if len(images) == 1:  # the usual single-component update: no sort
        for i, image in images.items():
            return ((components[i], image),)
    return tuple([(components[i], img) for i, img in sorted(images.items())])


def invoked_of(interpreter: Interpreter) -> tuple[ComponentId, ...]:
    components = interpreter.components
    if not interpreter.invoked:
        return ()
    return tuple([components[i] for i in interpreter.invoked])
