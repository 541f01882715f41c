"""Building and signing envelopes from a JSON description (like suit-tool's input).

Description (all ids in hex or UUID text)::

    {"manifest-version": 1, "manifest-sequence-number": 7,
     "reference-uri": "https://example.com/rel/7",        (optional)
     "severable": ["install", "text"],                    (optional)
     "text": {"manifest-description": "..."},             (optional)
     "components": [{
        "install-id": ["00"],
        "vendor-id": "fa6b4a53-d5ad-5fdf-be9d-e663e4d41ffe" | "vendor-domain": "arm.com",
        "class-id": "1492af14-..." | "class-info": "suit",
        "file": "fw.bin" | "install-digest": {"algorithm-id": "sha256",
                                              "digest-bytes": "<hex>"},
        "install-size": 34768,                            (with install-digest)
        "uri": "https://example.com/fw.bin",              (or "integrated": true)
        "bootable": true }]}

Pure: payload files are passed in as bytes by the caller. Signing verifies the
digest first (SPEC_NOTES §2: a signer checks what it signs).
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping
from typing import Any

from . import cbor, cose
from .auth import check_digest_only
from .codec import decode_envelope, encode_digest, encode_manifest, encode_sequence, encode_text
from .device import class_id_under, vendor_id
from .errors import StructureError
from .model import (
    Command,
    CommandSequence,
    Common,
    ComponentId,
    Manifest,
    Parameter,
    Parameters,
    SuitCommand,
    SuitDigest,
    TextLanguage,
    TextMap,
)

_DIGEST_NAMES = {"sha256": -16, "sha384": -43, "sha512": -44, "shake128": -18, "shake256": -45}
_TEXT_FIELDS = {"manifest-description": 1, "update-description": 2}
_REPORT = 15  # SUIT_Rep_Policy used by the specification's examples
_INVOKE_POLICY = 2


def _uuid_bytes(text: str) -> bytes:
    try:
        return uuid.UUID(text).bytes
    except ValueError:
        try:
            raw = bytes.fromhex(text)
        except ValueError:
            raise StructureError(f"{text!r} is neither a UUID nor hex") from None
        if len(raw) != 16:
            raise StructureError(f"{text!r} is not 16 bytes") from None
        return raw


def _vendor_and_class(comp: Mapping[str, Any]) -> tuple[bytes, bytes]:
    # §8.4.8.2: vendor id = UUID5(DNS, domain), class id = UUID5(vendor id, class info).
    if "vendor-id" in comp:
        vendor = _uuid_bytes(str(comp["vendor-id"]))
    elif "vendor-domain" in comp:
        vendor = vendor_id(str(comp["vendor-domain"]))
    else:
        raise StructureError("component needs vendor-id or vendor-domain")
    if "class-id" in comp:
        klass = _uuid_bytes(str(comp["class-id"]))
    elif "class-info" in comp:
        klass = class_id_under(vendor, str(comp["class-info"]))
    else:
        raise StructureError("component needs class-id or class-info")
    return vendor, klass


def _component_id(comp: Mapping[str, Any]) -> ComponentId:
    parts = comp.get("install-id")
    if not isinstance(parts, list) or not all(isinstance(p, str) for p in parts):
        raise StructureError("install-id must be a list of hex strings")
    try:
        return tuple(bytes.fromhex(p) for p in parts)
    except ValueError:
        raise StructureError("install-id must be a list of hex strings") from None


def _image(
    comp: Mapping[str, Any], files: Mapping[str, bytes]
) -> tuple[SuitDigest, int, bytes | None]:
    if "file" in comp:
        name = str(comp["file"])
        if name not in files:
            raise StructureError(f"payload file {name} was not provided")
        payload = files[name]
        return SuitDigest(-16, hashlib.sha256(payload).digest()), len(payload), payload
    spec = comp.get("install-digest")
    size = comp.get("install-size")
    if not isinstance(spec, Mapping) or type(size) is not int or size < 0:
        raise StructureError("component needs file, or install-digest and install-size")
    alg = spec.get("algorithm-id", "sha256")
    alg_id = _DIGEST_NAMES.get(alg) if isinstance(alg, str) else alg
    if type(alg_id) is not int:
        raise StructureError(f"unknown digest algorithm {alg!r}")
    try:
        digest = bytes.fromhex(str(spec.get("digest-bytes", "")))
    except ValueError:
        raise StructureError("digest-bytes must be hex") from None
    return SuitDigest(alg_id, digest), size, None


def _cmd(code: int, arg: Any) -> SuitCommand:
    return SuitCommand(code, arg)


def _seq(commands: list[SuitCommand]) -> CommandSequence:
    seq = CommandSequence(tuple(commands))
    return CommandSequence(seq.commands, encode_sequence(seq))


def build_envelope(description: Mapping[str, Any], files: Mapping[str, bytes]) -> bytes:
    """An unsigned envelope (digest only) for ``description``."""
    comps = description.get("components")
    if not isinstance(comps, list) or not comps:
        raise StructureError("description needs a non-empty components list")
    seq_no = description.get("manifest-sequence-number")
    if type(seq_no) is not int or seq_no < 0:
        raise StructureError("manifest-sequence-number must be a non-negative integer")
    many = len(comps) > 1
    shared: list[SuitCommand] = []
    install: list[SuitCommand] = []
    validate: list[SuitCommand] = []
    invoke: list[SuitCommand] = []
    ids: list[ComponentId] = []
    integrated: list[tuple[str, bytes]] = []
    for index, comp in enumerate(comps):
        if not isinstance(comp, Mapping):
            raise StructureError("each component must be an object")
        ids.append(_component_id(comp))
        vendor, klass = _vendor_and_class(comp)
        digest, size, payload = _image(comp, files)
        select = [_cmd(Command.SET_COMPONENT_INDEX, index)] if many else []
        shared += select + [
            _cmd(
                Command.OVERRIDE_PARAMETERS,
                Parameters(
                    (
                        (Parameter.VENDOR_IDENTIFIER, vendor),
                        (Parameter.CLASS_IDENTIFIER, klass),
                        (Parameter.IMAGE_DIGEST, digest),
                        (Parameter.IMAGE_SIZE, size),
                    )
                ),
            ),
            _cmd(Command.VENDOR_IDENTIFIER, _REPORT),
            _cmd(Command.CLASS_IDENTIFIER, _REPORT),
        ]
        if comp.get("integrated"):
            if payload is None:
                raise StructureError("an integrated payload needs a file")
            key = f"#{index}"
            integrated.append((key, payload))
            uri = key
        else:
            uri = str(comp.get("uri", ""))
        if uri:
            install += select + [
                _cmd(Command.OVERRIDE_PARAMETERS, Parameters(((Parameter.URI, uri),))),
                _cmd(Command.FETCH, 2),
                _cmd(Command.IMAGE_MATCH, _REPORT),
            ]
        validate += select + [_cmd(Command.IMAGE_MATCH, _REPORT)]
        if comp.get("bootable"):
            invoke += select + [_cmd(Command.INVOKE, _INVOKE_POLICY)]
    text = None
    text_desc = description.get("text")
    if isinstance(text_desc, Mapping) and text_desc:
        fields = tuple(
            (_TEXT_FIELDS[k], str(v)) for k, v in sorted(text_desc.items()) if k in _TEXT_FIELDS
        )
        text_map = TextMap((TextLanguage("en", fields, ()),))
        text = TextMap(text_map.languages, encode_text(text_map))
    install_seq = _seq(install) if install else None
    sever = set(description.get("severable", []))
    severed: list[tuple[int, bytes]] = []
    install_member: Any = install_seq
    text_member: Any = text
    if install_seq is not None and "install" in sever:
        install_member = SuitDigest(-16, hashlib.sha256(cbor.wrap_bstr(install_seq.raw)).digest())
        severed.append((20, install_seq.raw))
    if text is not None and "text" in sever:
        text_member = SuitDigest(-16, hashlib.sha256(cbor.wrap_bstr(text.raw)).digest())
        severed.append((23, text.raw))
    uri_ref = description.get("reference-uri")
    manifest = Manifest(
        version=int(description.get("manifest-version", 1)),
        sequence_number=seq_no,
        common=Common(tuple(ids), _seq(shared)),
        reference_uri=str(uri_ref) if uri_ref is not None else None,
        validate=_seq(validate),
        invoke=_seq(invoke) if invoke else None,
        install=install_member,
        text=text_member,
    )
    manifest_raw = encode_manifest(manifest)
    digest = SuitDigest(-16, hashlib.sha256(cbor.wrap_bstr(manifest_raw)).digest())
    auth = cbor.dumps([encode_digest(digest)])
    members: list[tuple[int | str, bytes]] = [(2, auth), (3, manifest_raw)]
    members += severed
    members += integrated
    return _envelope(members)


def _envelope(members: list[tuple[int | str, bytes]]) -> bytes:
    out = bytearray(b"\xd8\x6b")
    out += cbor.encode_head(5, len(members))
    for key, value in members:
        out += cbor.dumps(key) + cbor.wrap_bstr(value)
    return bytes(out)


def sign_envelope(data: bytes, key: cose.PrivateKey, key_id: bytes | None = None) -> bytes:
    """Add a COSE_Sign1 block over the envelope's SUIT_Digest (§8.3)."""
    envelope = decode_envelope(data)
    check_digest_only(envelope)  # never sign a digest that does not match
    auth = envelope.authentication
    assert auth is not None
    block = cose.sign(auth.digest_raw, key, key_id)
    blocks = [b.raw for b in auth.blocks] + [block]
    new_auth = cbor.dumps([auth.digest_raw, *blocks])
    members = [(k, new_auth if k == 2 else v) for k, v in envelope.members]
    out = bytearray(b"\xd8\x6b" if envelope.tagged else b"")
    out += cbor.encode_head(5, len(members))
    for k, v in members:
        out += cbor.dumps(k) + cbor.wrap_bstr(v)
    return bytes(out)
