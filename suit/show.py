"""Readable views of an envelope: a JSON-ready summary and CBOR diagnostic
notation (RFC 8949 §8) with bstr-wrapped members shown as ``<< … >>``.

Display only: the input must already have been decoded within limits.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import cbor2

from . import cbor
from .errors import SuitError
from .limits import DEFAULT_LIMITS
from .model import (
    Command,
    CommandSequence,
    ComponentId,
    Envelope,
    Manifest,
    Parameter,
    Parameters,
    Pen,
    SuitDigest,
    TextMap,
    TryEach,
)


def _name(enum_type: Any, code: int) -> str:
    try:
        return str(enum_type(code).name.lower().replace("_", "-"))
    except ValueError:
        return str(code)


def _component(c: ComponentId) -> list[str]:
    return [p.hex() for p in c]


def _value(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, SuitDigest):
        return {"algorithm-id": value.algorithm, "digest-bytes": value.digest.hex()}
    if isinstance(value, Pen):
        return {"pen": value.oid.hex()}
    if isinstance(value, CommandSequence):
        return sequence_json(value)
    if isinstance(value, TryEach):
        out: list[Any] = [sequence_json(s) for s in value.sequences]
        return out + [None] if value.allow_none else out
    if isinstance(value, Parameters):
        return {_name(Parameter, k): _value(v) for k, v in value.items}
    if isinstance(value, tuple):
        return [_value(v) for v in value]
    if isinstance(value, TextMap):
        return {
            lang.language: {
                **{str(k): v for k, v in lang.fields},
                **{
                    ",".join(_component(c.component)): {str(k): v for k, v in c.fields}
                    for c in lang.components
                },
            }
            for lang in value.languages
        }
    if isinstance(value, bool | int | str) or value is None:
        return value
    return repr(value)


def sequence_json(seq: CommandSequence) -> list[Any]:
    return [{_name(Command, c.code): _value(c.arg)} for c in seq.commands]


def envelope_json(envelope: Envelope, manifest: Manifest) -> dict[str, Any]:
    auth = envelope.authentication
    blocks = []
    if auth is not None:
        for block in auth.blocks:
            entry: dict[str, Any] = {"cose-tag": block.tag}
            if block.sign1 is not None:
                entry["alg"] = _value(block.sign1.algorithm)
                kid = block.sign1.key_id
                if kid is not None:
                    entry["kid"] = kid.hex()
                entry["signature"] = block.sign1.signature.hex()
            blocks.append(entry)
    out: dict[str, Any] = {
        "tagged": envelope.tagged,
        "authentication": None
        if auth is None
        else {"digest": _value(auth.digest), "blocks": blocks},
        "manifest": {
            "manifest-version": manifest.version,
            "manifest-sequence-number": manifest.sequence_number,
            "components": [_component(c) for c in manifest.common.components],
            "shared-sequence": _value(manifest.common.shared_sequence),
        },
        "severable-present": [k for k, _ in envelope.members if isinstance(k, int) and k > 3],
        "integrated-payloads": {k: len(v) for k, v in envelope.integrated_payloads.items()},
    }
    m = out["manifest"]
    if manifest.reference_uri is not None:
        m["reference-uri"] = manifest.reference_uri
    for name, member in (
        ("validate", manifest.validate),
        ("load", manifest.load),
        ("invoke", manifest.invoke),
        ("payload-fetch", manifest.payload_fetch),
        ("install", manifest.install),
        ("text", manifest.text),
    ):
        if member is not None:
            m[name] = _value(member)
    return out


def diagnostic(data: bytes, indent: int = 0) -> str:
    """CBOR diagnostic notation; nested well-formed containers in bstrs as << >>."""
    value = cbor2.loads(data)
    return _diag(value, indent, [cbor.Budget(DEFAULT_LIMITS.max_items)])


def _embedded(data: bytes, budget: list[cbor.Budget]) -> Any | None:
    if not data or data[0] >> 5 not in (4, 5, 6):
        return None
    try:
        return cbor.decode(data, DEFAULT_LIMITS, budget[0], 0)
    except SuitError:
        return None


def _diag(value: Any, indent: int, budget: list[cbor.Budget]) -> str:
    pad = "  " * (indent + 1)
    end = "  " * indent
    if isinstance(value, bytes):
        inner = _embedded(value, budget)
        if inner is not None:
            return "<< " + _diag(inner, indent, budget) + " >>"
        return f"h'{value.hex()}'"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, cbor2.CBORTag):
        return f"{value.tag}({_diag(value.value, indent, budget)})"
    if isinstance(value, list | tuple):
        if not value:
            return "[]"
        return "[\n" + ",\n".join(pad + _diag(v, indent + 1, budget) for v in value) + f"\n{end}]"
    if isinstance(value, Mapping):
        if not value:
            return "{}"
        items = [
            f"{pad}{_diag(k, indent + 1, budget)}: {_diag(v, indent + 1, budget)}"
            for k, v in value.items()
        ]
        return "{\n" + ",\n".join(items) + f"\n{end}}}"
    return repr(value)
