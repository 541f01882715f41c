"""Decoding SUIT envelopes into the typed model, and encoding them back.

Two phases, so that a recipient can authenticate before it parses (§6.2):
``decode_envelope`` reads the outer map and the authentication wrapper only;
``decode_manifest`` then parses the manifest it authenticated. Every level is
decoded through ``cbor.decode`` (bounded, canonical, no duplicate keys) with
one item budget per envelope. Encoding is deterministic (§8.1). No crypto,
no policy, no I/O here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import cbor2
from cbor2 import CBORTag

from . import cbor
from .cbor import Budget, wrap_bstr
from .errors import DecodeError, ErrorCode, StructureError
from .limits import DEFAULT_LIMITS, Limits
from .model import (
    Authentication,
    AuthenticationBlock,
    Command,
    CommandSequence,
    Common,
    ComponentId,
    CoseSign1,
    Envelope,
    Manifest,
    Parameter,
    Parameters,
    Pen,
    Severable,
    SuitCommand,
    SuitDigest,
    TextComponent,
    TextLanguage,
    TextMap,
    TryEach,
)

_COSE_TAGS = (17, 18, 97, 98)
_WRAP_DEPTH = 4  # nesting charged for each bstr-wrapped level


class Decoder:
    """Decodes one envelope's nested members within one shared budget."""

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        self.limits = limits
        self.budget = Budget(limits.max_items)

    def load(self, data: bytes, depth: int) -> Any:
        return _decode(data, self.limits, self.budget, depth)

    # ------------------------------------------------------------ envelope

    def envelope(self, data: bytes) -> Envelope:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise DecodeError("envelope must be bytes")
        data = bytes(data)
        if len(data) > self.limits.max_envelope_bytes:
            raise DecodeError(
                f"envelope is {len(data)} bytes, limit {self.limits.max_envelope_bytes}",
                ErrorCode.TOO_LARGE,
            )
        value = self.load(data, 0)
        tagged = False
        if type(value) is CBORTag:
            if value.tag != 107:
                raise StructureError(f"unexpected tag {value.tag} on the envelope")
            tagged, value = True, value.value
        if type(value) is not dict:  # cbor.decode builds plain dicts and lists
            raise StructureError("SUIT_Envelope must be a map")
        members = tuple(value.items())
        first = None  # key 2 or 3, whichever comes first
        for key, item in members:
            kind = type(key)
            if kind is not int and kind is not str:
                raise StructureError(f"envelope key {key!r} is not an int or text")
            if type(item) is not bytes:
                raise StructureError(f"envelope member {key!r} must be a bstr (§8.2)")
            if first is None and (key == 2 or key == 3) and kind is int:
                first = key
        manifest_raw = value.get(3)
        if manifest_raw is None:
            raise StructureError("envelope has no suit-manifest (key 3)")
        auth = None
        auth_raw = value.get(2)
        if auth_raw is not None:
            if first != 2:
                raise StructureError("authentication wrapper must precede the manifest (§8.3)")
            auth = self.authentication(auth_raw)
        return Envelope(tagged, members, auth, manifest_raw)

    def authentication(self, raw: bytes) -> Authentication:
        value = self.load(raw, _WRAP_DEPTH)
        if type(value) is not list or not value:
            raise StructureError("SUIT_Authentication must be a non-empty array")
        for v in value:
            if type(v) is not bytes:
                raise StructureError("SUIT_Authentication members must be bstr-wrapped")
        digest = self.digest(self.load(value[0], 2 * _WRAP_DEPTH))
        if len(value) == 2:  # the common case: one signature
            blocks: tuple[AuthenticationBlock, ...] = (self.auth_block(value[1]),)
        else:
            blocks = tuple([self.auth_block(b) for b in value[1:]])
        return Authentication(digest, value[0], blocks, raw)

    def auth_block(self, raw: bytes) -> AuthenticationBlock:
        value = self.load(raw, 2 * _WRAP_DEPTH)
        if type(value) is not CBORTag or value.tag not in _COSE_TAGS:
            raise StructureError("authentication block is not a tagged COSE object")
        if value.tag != 18:
            return AuthenticationBlock(value.tag, None, raw)
        body = value.value
        if type(body) is not list or len(body) != 4:
            raise StructureError("COSE_Sign1 must be a 4-element array")
        protected_raw, unprotected, payload, signature = body
        if type(protected_raw) is not bytes or type(unprotected) is not dict:
            raise StructureError("COSE_Sign1 headers are malformed")
        if payload is not None and type(payload) is not bytes:
            raise StructureError("COSE_Sign1 payload must be nil or bstr")
        if type(signature) is not bytes:
            raise StructureError("COSE_Sign1 signature must be a bstr")
        protected: Any = {} if not protected_raw else self.load(protected_raw, 3 * _WRAP_DEPTH)
        if type(protected) is not dict:
            raise StructureError("COSE protected header must be a map")
        if unprotected and not protected.keys().isdisjoint(unprotected):
            raise StructureError("a COSE header label is both protected and unprotected")
        # Both dicts were built by this decode and are not shared: no copies.
        sign1 = CoseSign1(protected_raw, protected, unprotected, payload, signature)
        return AuthenticationBlock(18, sign1, raw)

    def digest(self, value: Any) -> SuitDigest:
        if (
            type(value) is not list
            or len(value) < 2
            or type(value[0]) is not int
            or type(value[1]) is not bytes
        ):
            raise StructureError("SUIT_Digest must be [int, bstr, ...]")
        return SuitDigest(value[0], value[1], tuple(value[2:]) if len(value) > 2 else ())

    # ------------------------------------------------------------ manifest

    def manifest(self, raw: bytes) -> Manifest:
        value = self.load(raw, _WRAP_DEPTH)
        if type(value) is CBORTag and value.tag == 1070:
            value = value.value
        if type(value) is not dict:
            raise StructureError("SUIT_Manifest must be a map")
        version = value.get(1)
        if type(version) is not int:
            raise StructureError("suit-manifest-version is missing")
        if version != 1:
            raise StructureError(
                f"manifest version {version} is not supported", ErrorCode.UNSUPPORTED_VERSION
            )
        seq = value.get(2)
        if type(seq) is not int or seq < 0:
            raise StructureError("suit-manifest-sequence-number must be a uint")
        common_raw = value.get(3)
        if type(common_raw) is not bytes:
            raise StructureError("suit-common must be a bstr-wrapped map")
        uri = value.get(4)
        if uri is not None and not isinstance(uri, str):
            raise StructureError("suit-reference-uri must be text")
        if value.keys() <= _MANIFEST_KEYS:  # the common case: no extensions
            extensions: tuple[tuple[object, object], ...] = ()
        else:
            extensions = tuple((k, v) for k, v in value.items() if k not in _MANIFEST_KEYS)
            for key, _ in extensions:
                # Unknown standard-range members cannot be understood safely (§8.4).
                if type(key) is int and -256 < key < 256:
                    raise StructureError(f"unsupported manifest member {key}")
        depth = 2 * _WRAP_DEPTH
        optional_sequence = self.optional_sequence
        severable = self.severable_in_manifest
        get = value.get
        # Positional, in field order: the same calls, in the same order, as
        # keyword arguments would make, without building a keyword dict.
        return Manifest(
            version,
            seq,
            self.common(common_raw),
            uri,
            optional_sequence(get(7), depth, "suit-validate"),
            optional_sequence(get(8), depth, "suit-load"),
            optional_sequence(get(9), depth, "suit-invoke"),
            severable(get(16), False),
            severable(get(20), False),
            severable(get(23), True),
            extensions,
            raw,
        )

    def severable_in_manifest(self, value: Any, is_text: bool) -> Severable:
        if value is None:
            return None
        kind = type(value)
        if kind is list or kind is tuple or isinstance(value, list | tuple):
            return self.digest(value)
        if kind is bytes or isinstance(value, bytes):
            if is_text:
                return self.text(value)
            return self.sequence(value, 2 * _WRAP_DEPTH)
        raise StructureError("severable member must be a SUIT_Digest or bstr")

    def common(self, raw: bytes) -> Common:
        value = self.load(raw, 2 * _WRAP_DEPTH)
        if type(value) is not dict:
            raise StructureError("SUIT_Common must be a map")
        comps = value.get(2)
        if type(comps) is not list or not comps:
            raise StructureError("suit-components must be a non-empty array")
        if len(comps) > self.limits.max_components:
            raise StructureError(
                f"{len(comps)} components, limit {self.limits.max_components}",
                ErrorCode.TOO_MANY_COMPONENTS,
            )
        components = tuple([component_id(c) for c in comps])
        if len(components) > 1 and len(set(components)) != len(components):
            raise StructureError("duplicate component identifier")
        shared = self.optional_sequence(value.get(4), 3 * _WRAP_DEPTH, "suit-shared-sequence")
        extensions: tuple[tuple[object, object], ...] = (
            ()
            if value.keys() <= _COMMON_KEYS
            else tuple((k, v) for k, v in value.items() if k not in _COMMON_KEYS)
        )
        return Common(components, shared, value.get(1), extensions, raw)

    def optional_sequence(self, value: Any, depth: int, name: str) -> CommandSequence | None:
        if value is None:
            return None
        if type(value) is not bytes and not isinstance(value, bytes):
            raise StructureError(f"{name} must be a bstr-wrapped command sequence")
        return self.sequence(value, depth)

    def sequence(self, raw: bytes, depth: int) -> CommandSequence:
        value = self.load(raw, depth)
        if type(value) is not list or not value or len(value) % 2:
            raise StructureError("command sequence must be a non-empty array of pairs")
        commands: list[SuitCommand] = []
        append = commands.append
        argument = self.argument
        it = iter(value)
        for code, arg in zip(it, it, strict=True):
            if type(code) is not int:
                raise StructureError("command code must be an integer")
            if type(arg) is int and 0 <= arg < 24 and code in _POLICY_COMMANDS:
                append(_POLICY_COMMANDS[code][arg])  # the common case: a shared instance
            elif code in REP_POLICY_CODES and type(arg) is int and arg >= 0:
                append(SuitCommand(code, arg))
            else:
                append(SuitCommand(code, argument(code, arg, depth)))
        return CommandSequence(tuple(commands), raw)

    def argument(self, code: int, arg: Any, depth: int) -> Any:
        if code in (_SET_PARAMETERS, _OVERRIDE_PARAMETERS):
            if not isinstance(arg, Mapping) or not arg:
                raise StructureError("parameters must be a non-empty map")
            parameter = self.parameter
            return Parameters(tuple([parameter(k, v, depth) for k, v in arg.items()]))
        if code == _SET_COMPONENT_INDEX:
            if arg is True or (_is_int(arg) and arg >= 0):
                return arg
            if isinstance(arg, list | tuple) and arg and all(_is_int(i) and i >= 0 for i in arg):
                return tuple(arg)
            raise StructureError("set-component-index takes uint, true or [+ uint]")
        if code == _TRY_EACH:
            if not isinstance(arg, list | tuple):
                raise StructureError("try-each takes an array")
            allow_none = bool(arg) and arg[-1] is None
            seqs = arg[:-1] if allow_none else arg
            if len(seqs) < 1 or not all(isinstance(s, bytes) for s in seqs):
                raise StructureError("try-each takes bstr-wrapped sequences and optional nil")
            return TryEach(tuple(self.sequence(s, depth + _WRAP_DEPTH) for s in seqs), allow_none)
        if code == _RUN_SEQUENCE:
            if not isinstance(arg, bytes):
                raise StructureError("run-sequence takes a bstr-wrapped sequence")
            return self.sequence(arg, depth + _WRAP_DEPTH)
        if code < 0:  # suit-command-custom: bstr / tstr / int / nil (§8.4.6)
            if arg is None or isinstance(arg, bytes | str) or _is_int(arg):
                return arg
            raise StructureError("custom command argument must be bstr, tstr, int or nil")
        if code in REP_POLICY_CODES:
            if not _is_int(arg) or arg < 0:
                raise StructureError(f"command {code} takes a SUIT_Rep_Policy uint")
            return arg
        return arg  # extension command: kept, fails if executed (§8.4.9)

    def parameter(self, code: Any, value: Any, depth: int) -> tuple[int, Any]:
        if type(code) is not int:
            raise StructureError("parameter code must be an integer")
        expect = PARAMETER_TYPES.get(code)
        if expect is bytes and type(value) is bytes:  # the common case, settled at once
            return code, value
        if code == _IMAGE_DIGEST:
            if not isinstance(value, bytes):
                raise StructureError("image-digest must be a bstr-wrapped SUIT_Digest")
            return code, self.digest(self.load(value, depth + _WRAP_DEPTH))
        if code == _VENDOR_IDENTIFIER and isinstance(value, cbor2.CBORTag):
            if value.tag != 112 or not isinstance(value.value, bytes):
                raise StructureError("vendor-id must be a UUID bstr or #6.112(bstr)")
            return code, Pen(value.value)
        if expect is not None and not _matches(value, expect):
            raise StructureError(f"parameter {code} has the wrong type")
        if code < 0 and not (isinstance(value, bytes | str | bool) or _is_int(value)):
            raise StructureError("custom parameter must be int, bool, tstr or bstr")
        return code, value

    # ------------------------------------------------------------ text

    def text(self, raw: bytes) -> TextMap:
        value = self.load(raw, 2 * _WRAP_DEPTH)
        if not isinstance(value, Mapping):
            raise StructureError("SUIT_Text_Map must be a map")
        languages = []
        for lang, entry in value.items():
            if not isinstance(lang, str) or not isinstance(entry, Mapping):
                raise StructureError("text map is { tstr => map }")
            fields: list[tuple[int, str]] = []
            comps: list[TextComponent] = []
            for k, v in entry.items():
                if isinstance(k, tuple):
                    if not isinstance(v, Mapping) or not all(
                        _is_int(a) and isinstance(b, str) for a, b in v.items()
                    ):
                        raise StructureError("component text is { int => tstr }")
                    comps.append(TextComponent(component_id(list(k)), tuple(v.items())))
                elif _is_int(k) and isinstance(v, str):
                    fields.append((k, v))
                else:
                    raise StructureError("text entry is { int => tstr }")
            languages.append(TextLanguage(lang, tuple(fields), tuple(comps)))
        return TextMap(tuple(languages), raw)


def _is_int(value: Any) -> bool:
    return type(value) is int


def _matches(value: Any, expect: type) -> bool:
    if expect is int:
        return _is_int(value) and value >= 0
    return isinstance(value, expect)


def component_id(value: Any) -> ComponentId:
    if not isinstance(value, list | tuple):
        raise StructureError("SUIT_Component_Identifier must be [* bstr]")
    for part in value:
        if type(part) is not bytes and not isinstance(part, bytes):
            raise StructureError("SUIT_Component_Identifier must be [* bstr]")
    return tuple(value)


_MANIFEST_KEYS = frozenset({1, 2, 3, 4, 7, 8, 9, 16, 20, 23})
_COMMON_KEYS = frozenset({1, 2, 4})
_decode = cbor.decode
# Code points as plain ints (an ``IntEnum`` member lookup costs several int
# comparisons; these are read for every command and parameter decoded).
_SET_COMPONENT_INDEX = int(Command.SET_COMPONENT_INDEX)
_TRY_EACH = int(Command.TRY_EACH)
_RUN_SEQUENCE = int(Command.RUN_SEQUENCE)
_SET_PARAMETERS = int(Command.SET_PARAMETERS)
_OVERRIDE_PARAMETERS = int(Command.OVERRIDE_PARAMETERS)
_IMAGE_DIGEST = int(Parameter.IMAGE_DIGEST)
_VENDOR_IDENTIFIER = int(Parameter.VENDOR_IDENTIFIER)
REP_POLICY_CODES = frozenset({1, 2, 3, 4, 5, 6, 7, 8, 14, 18, 21, 22, 23, 24, 25, 31, 33})

# Conditions and directives with a small SUIT_Rep_Policy argument are most of
# every sequence; the commands are immutable, so one instance of each serves
# every envelope (a flyweight table, 17 codes x 24 policies).
_POLICY_COMMANDS: dict[int, tuple[SuitCommand, ...]] = {
    code: tuple(SuitCommand(code, policy) for policy in range(24)) for code in REP_POLICY_CODES
}

PARAMETER_TYPES: dict[int, type] = {
    Parameter.VENDOR_IDENTIFIER: bytes,
    Parameter.CLASS_IDENTIFIER: bytes,
    Parameter.COMPONENT_SLOT: int,
    Parameter.STRICT_ORDER: bool,
    Parameter.SOFT_FAILURE: bool,
    Parameter.IMAGE_SIZE: int,
    Parameter.CONTENT: bytes,
    Parameter.URI: str,
    Parameter.SOURCE_COMPONENT: int,
    Parameter.INVOKE_ARGS: bytes,
    Parameter.DEVICE_IDENTIFIER: bytes,
    Parameter.FETCH_ARGUMENTS: bytes,
}


# ---------------------------------------------------------------- public API


def decode_envelope(data: bytes, limits: Limits = DEFAULT_LIMITS) -> Envelope:
    """The outer envelope and its authentication wrapper (nothing authenticated yet)."""
    return Decoder(limits).envelope(data)


def decode(data: bytes, limits: Limits = DEFAULT_LIMITS) -> tuple[Envelope, Manifest]:
    """Envelope and manifest, without authentication: for display and tooling."""
    decoder = Decoder(limits)
    envelope = decoder.envelope(data)
    return envelope, decoder.manifest(envelope.manifest_raw)


# ---------------------------------------------------------------- encoding


def encode_envelope(envelope: Envelope) -> bytes:
    """The envelope's bytes: members in their order, each bstr as it came."""
    out = bytearray(b"\xd8\x6b" if envelope.tagged else b"")
    out += cbor.encode_head(5, len(envelope.members))
    for key, value in envelope.members:
        out += cbor.dumps(key) + wrap_bstr(value)
    return bytes(out)


def digest_value(digest: SuitDigest) -> list[Any]:
    return [digest.algorithm, digest.digest, *digest.extensions]


def encode_digest(digest: SuitDigest) -> bytes:
    return cbor.dumps(digest_value(digest))


def sequence_value(seq: CommandSequence) -> list[Any]:
    out: list[Any] = []
    for command in seq.commands:
        out += [command.code, argument_value(command.arg)]
    return out


def encode_sequence(seq: CommandSequence) -> bytes:
    return cbor.dumps(sequence_value(seq))


def argument_value(arg: Any) -> Any:
    if isinstance(arg, TryEach):
        items: list[Any] = [encode_sequence(s) for s in arg.sequences]
        return items + [None] if arg.allow_none else items
    if isinstance(arg, CommandSequence):
        return encode_sequence(arg)
    if isinstance(arg, Parameters):
        return {k: parameter_value(v) for k, v in arg.items}
    if isinstance(arg, tuple):
        return list(arg)
    return arg


def parameter_value(value: Any) -> Any:
    if isinstance(value, SuitDigest):
        return encode_digest(value)
    if isinstance(value, Pen):
        return cbor2.CBORTag(112, value.oid)
    return value


def encode_common(common: Common) -> bytes:
    value: dict[Any, Any] = {}
    if common.dependencies is not None:
        value[1] = common.dependencies
    value[2] = [list(c) for c in common.components]
    if common.shared_sequence is not None:
        value[4] = encode_sequence(common.shared_sequence)
    value.update(dict(common.extensions))
    return cbor.dumps(value)


def encode_text(text: TextMap) -> bytes:
    value: dict[str, Any] = {}
    for lang in text.languages:
        entry: dict[Any, Any] = dict(lang.fields)
        for comp in lang.components:
            entry[tuple(comp.component)] = dict(comp.fields)
        value[lang.language] = entry
    return cbor.dumps(value)


def severable_value(member: Severable) -> Any:
    if isinstance(member, SuitDigest):
        return digest_value(member)
    if isinstance(member, CommandSequence):
        return encode_sequence(member)
    if isinstance(member, TextMap):
        return encode_text(member)
    raise TypeError("not a severable member")


def encode_manifest(manifest: Manifest) -> bytes:
    """SUIT_Manifest from its fields (deterministic encoding, §8.1)."""
    value: dict[Any, Any] = {1: manifest.version, 2: manifest.sequence_number}
    value[3] = encode_common(manifest.common)
    if manifest.reference_uri is not None:
        value[4] = manifest.reference_uri
    for key, seq in ((7, manifest.validate), (8, manifest.load), (9, manifest.invoke)):
        if seq is not None:
            value[key] = encode_sequence(seq)
    for key, member in (
        (16, manifest.payload_fetch),
        (20, manifest.install),
        (23, manifest.text),
    ):
        if member is not None:
            value[key] = severable_value(member)
    value.update(dict(manifest.extensions))
    return cbor.dumps(value)
