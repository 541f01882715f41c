"""One-pass validation of envelopes in the common shape, without the typed model.

The typed decoder (``codec``) turns every bstr-wrapped level into generic
CBOR values and then into frozen dataclasses; for a 300-byte envelope that is
most of a validation's cost besides the signature. This module reads the
shape a SUIT signer normally produces — an envelope of bstr members, one
COSE_Sign1 with ``{1: alg}`` protected and a SHA-256 SUIT_Digest (§8.3), a
manifest of the standard members, command sequences of the commands this
library runs — straight from the bytes, each byte once, and builds only
what the interpreter needs (``interpreter.Program``). A text map (§8.4.4) is
checked and counted but not built: no verdict reads it.

It decides nothing the typed path would decide differently. Whenever the
bytes leave that shape (another encoding, a member or command it does not
read, a limit it would exceed, any rejection after the signature) it
returns ``None`` and ``processor`` runs the typed path: before the signature
check from the start, after it from the authenticated envelope. The only
verdicts given here are acceptance and the three outcomes of checking the
signature and digest, with the typed path's exact errors. Every head read
here is checked to be canonical (shortest form, definite length, §8.1) and
every map for duplicate keys, as ``cbor.decode`` does; items and nesting are
counted as the typed path charges them against ``Limits``.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

from .auth import TrustAnchor, digest_mismatch, no_signer, signer_of
from .cbor import encode_head
from .codec import PARAMETER_TYPES, REP_POLICY_CODES
from .device import DeviceContext, Image
from .errors import SuitError
from .interpreter import Interpreter, Program, images_of, invoked_of
from .limits import Limits
from .model import ComponentId, SuitDigest

Accepted = tuple[
    TrustAnchor,  # signer
    tuple[int, ...],  # severed members
    tuple[tuple[ComponentId, Image], ...],  # images
    tuple[ComponentId, ...],  # invoked
    int,  # sequence number
    tuple[ComponentId, ...],  # components
]


class _Unusual(Exception):
    """The bytes leave the shape read here: the typed path decides."""


class Authenticated:
    """An envelope whose signature and digest were checked here."""

    __slots__ = ("signer", "manifest_raw", "members", "items", "depth")

    def __init__(
        self,
        signer: TrustAnchor,
        manifest_raw: bytes,
        members: dict[int | str, bytes],
        items: int,
        depth: int,
    ) -> None:
        self.signer = signer
        self.manifest_raw = manifest_raw
        self.members = members  # every envelope member by key, 2 and 3 included
        self.items = items  # CBOR items the typed decoder charged so far
        self.depth = depth  # the max_depth those levels need


# COSE algorithm by the one-byte value of ``{1: alg}`` (RFC 9053, RFC 9864):
# ES256 -7, EdDSA -8, ESP256 -9, Ed25519 -19 (cose.SUPPORTED_ALGORITHMS).
_ALGORITHMS = {0x26: -7, 0x27: -8, 0x28: -9, 0x32: -19}
_SIG1_PREFIX = b"\x84\x6aSignature1"  # Sig_structure array head and context
# #6.18([ and the protected bstr of a one-entry map {1: …}; the signature
# after a nil payload: nil, bstr .size 64.
_SIGN1_HEAD = b"\xd2\x84\x43\xa1\x01"
_SIGNATURE_HEAD = b"\xf6\x58\x40"
_EMPTY_AAD = b"\x40"
# [h'' .cbor [-16 (SHA-256), bstr .size 32]] as the first auth member: its
# bstr head, the digest array head, the algorithm, the digest's bstr head.
_SHA256_DIGEST = b"\x82\x58\x24\x82\x2f\x58\x20"
_ENVELOPE_KEYS = frozenset({2, 3, 16, 20, 23})  # §8.2 members read here
_MANIFEST_KEYS = frozenset({1, 2, 3, 4, 7, 8, 9, 16, 20, 23})
_SEQUENCE_KEYS = frozenset({7, 8, 9, 16, 20})  # validate, load, invoke, payload-fetch, install
_WRAP = 4  # nesting the typed decoder charges per bstr-wrapped level
_DIGEST = object()  # parameter kind: a bstr-wrapped SUIT_Digest
_PARAMETER_KINDS: dict[int, object] = {**PARAMETER_TYPES, 3: _DIGEST}
_REP_POLICY = REP_POLICY_CODES
_SET_COMPONENT_INDEX = 12
_TRY_EACH = 15
_SET_PARAMETERS = 19
_OVERRIDE_PARAMETERS = 20
_RUN_SEQUENCE = 32
_SEVERABLE = (16, 20, 23)


def _argument(data: bytes, pos: int, major: int) -> tuple[int, int]:
    """The argument of the canonical head of ``major`` at ``pos``, and the
    position after the head (RFC 8949 §4.2.1: shortest form only)."""
    ib = data[pos]
    if ib >> 5 != major:
        raise _Unusual
    ai = ib & 0x1F
    if ai < 24:
        return ai, pos + 1
    if ai == 24:
        val = data[pos + 1]
        if val < 24:
            raise _Unusual
        return val, pos + 2
    if ai == 25:
        val = data[pos + 1] << 8 | data[pos + 2]
        if val < 0x100:
            raise _Unusual
        return val, pos + 3
    if ai == 26 or ai == 27:
        end = pos + (5 if ai == 26 else 9)
        if end > len(data):
            raise _Unusual
        val = int.from_bytes(data[pos + 1 : end], "big")
        if val < (0x10000 if ai == 26 else 0x100000000):
            raise _Unusual
        return val, end
    raise _Unusual  # indefinite length or reserved


def _bstr(data: bytes, pos: int) -> tuple[bytes, int]:
    """The byte string at ``pos`` and the position after it."""
    head = data[pos]
    if 0x40 <= head < 0x58:  # length in the head: most members, ids, digests
        end = pos + head - 0x3F
        start = pos + 1
    elif head == 0x58:
        length = data[pos + 1]
        if length < 24:
            raise _Unusual
        start = pos + 2
        end = start + length
    else:
        length, start = _argument(data, pos, 2)
        end = start + length
    if end > len(data):
        raise _Unusual
    return data[start:end], end


def _int(data: bytes, pos: int) -> tuple[int, int]:
    ib = data[pos]
    if ib < 0x18:
        return ib, pos + 1
    if 0x20 <= ib < 0x38:
        return 0x1F - ib, pos + 1
    if ib >> 5 == 1:
        val, pos = _argument(data, pos, 1)
        return -1 - val, pos
    return _argument(data, pos, 0)


def authenticate(
    data: bytes, anchors: Sequence[TrustAnchor], class_id: bytes | None, limits: Limits
) -> Authenticated | None:
    """The checked envelope, ``None`` when its shape is not read here, or the
    typed path's ``AuthenticationError`` when its signature or digest is bad."""
    if type(data) is not bytes or len(data) > limits.max_envelope_bytes:
        return None
    try:
        # SUIT_Envelope (§8.2): optionally #6.107, a map of bstr members with the
        # authentication wrapper before the manifest.
        pos, items = 0, 1
        if data[0] == 0xD8:
            if data[1] != 0x6B:
                raise _Unusual
            pos, items = 2, 2
        count = data[pos] - 0xA0
        if not 0 < count < 24:
            raise _Unusual
        pos += 1
        items += 2 * count
        members: dict[int | str, bytes] = {}
        manifest_at = manifest_end = 0
        for _ in range(count):
            head = data[pos]
            key: int | str
            if head < 24:  # a uint key in the head
                if (
                    head not in _ENVELOPE_KEYS
                    or head in members
                    or (head == 3 and 2 not in members)
                ):
                    raise _Unusual  # unknown, repeated, or the manifest before its wrapper
                key = head
                pos += 1
            elif 0x60 <= head < 0x78:  # a short text key: an integrated payload (§7.6)
                end = pos + head - 0x5F
                if end > len(data):
                    raise _Unusual
                key = data[pos + 1 : end].decode("utf-8")
                if key in members:
                    raise _Unusual
                pos = end
            else:
                raise _Unusual
            start = pos
            members[key], pos = _bstr(data, pos)
            if key == 3:
                manifest_at, manifest_end = start, pos
        if pos != len(data) or 2 not in members or 3 not in members:
            raise _Unusual
        # SUIT_Authentication (§8.3): the SHA-256 SUIT_Digest and one COSE_Sign1,
        # #6.18([h'A10126', {} or {4: kid}, nil, bstr .size 64]).
        auth = members[2]
        if not auth.startswith(_SHA256_DIGEST):
            raise _Unusual
        block_len, p = _argument(auth, 39, 2)
        if p + block_len != len(auth):
            raise _Unusual
        if auth[p : p + 5] != _SIGN1_HEAD:
            raise _Unusual
        alg = _ALGORITHMS.get(auth[p + 5])
        if alg is None:
            raise _Unusual
        q = p + 6
        kid = None
        # Items: auth array 3, digest 3, tagged Sign1 6, protected map 3.
        items += 15
        depth = 13  # the protected header map, bstr-wrapped three levels down
        if auth[q] == 0xA0:
            q += 1
        elif auth[q] == 0xA1 and auth[q + 1] == 0x04 and 0x40 <= auth[q + 2] < 0x58:
            end = q + 3 + auth[q + 2] - 0x40
            kid = auth[q + 3 : end]
            q = end
            items += 2
        else:
            raise _Unusual
        if auth[q : q + 3] != _SIGNATURE_HEAD or q + 67 != len(auth):
            raise _Unusual
        if items > limits.max_items or depth > limits.max_depth:
            raise _Unusual  # the typed path reports the limit
    except (_Unusual, IndexError, UnicodeDecodeError):
        return None
    # RFC 9052 §4.4: ["Signature1", protected, external_aad h'', payload],
    # from the encoded items as they stand in the envelope.
    message = _SIG1_PREFIX + auth[p + 2 : p + 6] + _EMPTY_AAD + auth[1:39]
    signer, tried = signer_of(anchors, class_id, alg, kid, auth[q + 3 :], message)
    if signer is None:
        raise no_signer(tried, None)
    # §8.3: the digest covers the manifest bstr, head included.
    wrapped = data[manifest_at:manifest_end]
    if not hmac.compare_digest(hashlib.sha256(wrapped).digest(), auth[7:39]):
        raise digest_mismatch()
    return Authenticated(signer, members[3], members, items, depth)


def process(
    authenticated: Authenticated,
    context: DeviceContext,
    sequences: Sequence[int],
    limits: Limits,
) -> Accepted | None:
    """What an accepted envelope did, or ``None``: the typed path decides."""
    try:
        count = [authenticated.items, authenticated.depth]
        m = authenticated.manifest_raw
        # SUIT_Manifest (§8.4), decoded at nesting 4; its command sequences at 8.
        n = m[0] - 0xA0
        if not 0 < n < 24:
            raise _Unusual
        count[0] += 1 + 2 * n
        if count[1] < _WRAP + 1:
            count[1] = _WRAP + 1
        fields: dict[int, object] = {}
        programs: dict[int, Program] = {}
        pos = 1
        for _ in range(n):
            key = m[pos]
            pos += 1
            if key not in _MANIFEST_KEYS or key in fields:
                raise _Unusual
            head = m[pos]
            value: object
            if head >> 5 == 2:  # bstr: common, a command sequence or a text map
                if head == 0x58 and m[pos + 1] >= 24:  # the usual heads, read here
                    end = pos + 2 + m[pos + 1]
                    value = m[pos + 2 : end]
                elif 0x40 <= head < 0x58:
                    end = pos + head - 0x3F
                    value = m[pos + 1 : end]
                else:
                    value, end = _bstr(m, pos)
                if end > len(m):
                    raise _Unusual
                pos = end
                if key in _SEQUENCE_KEYS:
                    programs[key] = _program(value, 2 * _WRAP, count)
                elif key == 23:
                    _text(value, count)  # checked and counted, not built
                elif key != 3:
                    raise _Unusual  # a wrong type
            elif key <= 2:
                if head < 24:
                    value = head
                    pos += 1
                else:
                    value, pos = _argument(m, pos, 0)
            elif key == 4:
                length, pos = _argument(m, pos, 3)
                if pos + length > len(m):
                    raise _Unusual
                value = m[pos : pos + length].decode("utf-8")
                pos += length
            elif head == 0x82 and key >= 16:  # a severable member's SUIT_Digest
                alg, pos = _int(m, pos + 1)
                digest, pos = _bstr(m, pos)
                value = SuitDigest(alg, digest)
                count[0] += 2
                if count[1] < _WRAP + 2:
                    count[1] = _WRAP + 2
            else:
                raise _Unusual
            fields[key] = value
        if pos != len(m) or fields.get(1) != 1 or 2 not in fields or 3 not in fields:
            raise _Unusual
        sequence_number: int = fields[2]  # type: ignore[assignment]
        components, shared = _common(fields[3], count, limits)  # type: ignore[arg-type]

        signer = authenticated.signer
        if not signer.covers(components):
            raise _Unusual
        installed = context.installed_sequence
        allowed = context.components
        if installed or allowed is not None:
            for component in components:
                if allowed is not None and component not in allowed:
                    raise _Unusual
                current = installed.get(component)
                if current is not None and sequence_number <= current:
                    raise _Unusual  # RollbackRejected, from the typed path (§8.4.2)

        # Severable members (§8.4.12): present ones match their digest, and the
        # envelope adds none the manifest does not name by digest.
        members = authenticated.members
        severed = []
        for key in _SEVERABLE:
            in_manifest = fields.get(key)
            present = members.get(key)
            if type(in_manifest) is SuitDigest:
                if present is None:
                    severed.append(key)
                    continue
                if in_manifest.algorithm != -16:
                    raise _Unusual
                h = hashlib.sha256(encode_head(2, len(present)))
                h.update(present)
                if not hmac.compare_digest(h.digest(), in_manifest.digest):
                    raise _Unusual
                if key != 23 and key in sequences:
                    programs[key] = _program(present, 2 * _WRAP, count)
            elif present is not None:
                raise _Unusual
        for key in sequences:
            if key in severed and key in (16, 20):
                raise _Unusual  # SEVERABLE_MISSING, from the typed path
        if count[0] > limits.max_items or count[1] > limits.max_depth:
            raise _Unusual

    except (_Unusual, IndexError, UnicodeDecodeError):
        return None
    interpreter = Interpreter(components, shared, members.get, context, limits.max_commands_run)
    try:
        for key in sequences:
            program = programs.get(key)
            if program is not None:
                interpreter.run_procedure_step(program)
    except SuitError:
        return None  # the typed path reports it
    images = interpreter.images
    if len(images) == 1:  # one image: its component, no sort
        for i, image in images.items():
            image_list: tuple[tuple[ComponentId, Image], ...] = ((components[i], image),)
    else:
        image_list = images_of(interpreter)
    return (
        signer,
        tuple(severed) if severed else (),
        image_list,
        invoked_of(interpreter) if interpreter.invoked else (),
        sequence_number,
        components,
    )


def _need(count: list[int], depth: int) -> None:
    if depth > count[1]:
        count[1] = depth


def _common(
    c: bytes, count: list[int], limits: Limits
) -> tuple[tuple[ComponentId, ...], Program | None]:
    """SUIT_Common (§8.4.5) with components and a shared sequence only."""
    n = c[0] - 0xA0
    if n != 1 and n != 2:
        raise _Unusual
    count[0] += 1 + 2 * n
    if count[1] < 2 * _WRAP + 1:
        count[1] = 2 * _WRAP + 1
    pos = 1
    components: tuple[ComponentId, ...] | None = None
    shared = None
    for _ in range(n):
        key = c[pos]
        if key == 2 and components is None:
            k = c[pos + 1] - 0x80
            if 0 < k < 24:  # array heads with the length in them
                pos += 2
            else:
                k, pos = _argument(c, pos + 1, 4)
            if k == 0 or k > limits.max_components:
                raise _Unusual
            count[0] += k
            found = []
            for _ in range(k):
                j = c[pos] - 0x80
                if 0 <= j < 24:
                    pos += 1
                else:
                    j, pos = _argument(c, pos, 4)
                count[0] += j
                parts = []
                for _ in range(j):
                    head = c[pos]
                    if 0x40 <= head < 0x58:  # a short part, length in the head
                        end = pos + head - 0x3F
                        if end > len(c):
                            raise _Unusual
                        parts.append(c[pos + 1 : end])
                        pos = end
                    else:
                        part, pos = _bstr(c, pos)
                        parts.append(part)
                found.append(tuple(parts))
            components = tuple(found)
            if count[1] < 2 * _WRAP + 3:  # map, array, array (empty ones need no depth)
                count[1] = 2 * _WRAP + (3 if any(found) else 2)
            if k > 1 and len(set(components)) != k:
                raise _Unusual
        elif key == 4 and shared is None:
            raw, pos = _bstr(c, pos + 1)
            shared = _program(raw, 3 * _WRAP, count)
        else:
            raise _Unusual
    if pos != len(c) or components is None:
        raise _Unusual
    return components, shared


def _text(t: bytes, count: list[int]) -> None:
    """An unsevered SUIT_Text_Map (§8.4.4), checked as ``codec.Decoder.text``
    checks it and counted as ``cbor.decode`` charges it, without building it:
    ``{ * tstr => { * int => tstr, * [* bstr] => { * int => tstr } } }``.

    Nothing of it reaches a verdict besides its validity, so only that is read.
    """
    base = 2 * _WRAP
    _need(count, base + 1)  # cbor.decode needs one level left even for an empty map
    n, pos = _argument(t, 0, 5)
    count[0] += 1 + 2 * n
    languages = set()
    for _ in range(n):
        start = pos
        pos = _tstr(t, pos)
        language = t[start:pos]  # canonical heads: equal keys have equal bytes
        if language in languages:
            raise _Unusual
        languages.add(language)
        pos = _text_fields(t, pos, base + 2, count, True)
    if pos != len(t):
        raise _Unusual


def _text_fields(t: bytes, pos: int, depth: int, count: list[int], components: bool) -> int:
    """A text map's ``{ * int => tstr }`` at nesting ``depth``, with component
    entries ``[* bstr] => { * int => tstr }`` when ``components``; the
    position after it."""
    m, pos = _argument(t, pos, 5)
    if m:
        count[0] += 2 * m
        _need(count, depth)
    keys = set()
    for _ in range(m):
        start = pos
        if components and t[pos] >> 5 == 4:  # a SUIT_Component_Identifier key
            k, pos = _argument(t, pos, 4)
            if k:
                count[0] += k
                _need(count, depth + 1)
            for _ in range(k):
                pos = _bstr(t, pos)[1]
            key = t[start:pos]
            if key in keys:
                raise _Unusual
            keys.add(key)
            pos = _text_fields(t, pos, depth + 1, count, False)
        else:
            pos = _int(t, pos)[1]
            key = t[start:pos]
            if key in keys:
                raise _Unusual
            keys.add(key)
            pos = _tstr(t, pos)
    return pos


def _tstr(t: bytes, pos: int) -> int:
    """The position after the valid UTF-8 text string at ``pos``."""
    length, start = _argument(t, pos, 3)
    end = start + length
    if end > len(t):
        raise _Unusual
    t[start:end].decode("utf-8")  # UnicodeDecodeError: the typed path reports it
    return end


def _program(s: bytes, base: int, count: list[int]) -> Program:
    """A SUIT_Command_Sequence decoded at nesting ``base``, as a program."""
    n = s[0] - 0x80
    if 0 < n < 24:  # array head with the length in it
        pos = 1
    else:
        n, pos = _argument(s, 0, 4)
    if n == 0 or n % 2:
        raise _Unusual
    count[0] += 1 + n
    if base + 1 > count[1]:
        count[1] = base + 1
    out = []
    for _ in range(n // 2):
        code = s[pos]
        if code < 24:
            pos += 1
        else:
            code, pos = _int(s, pos)
        arg: object
        if code in _REP_POLICY:
            arg = s[pos]
            if arg < 24:
                pos += 1
            else:
                arg, pos = _argument(s, pos, 0)
        elif code in (_SET_PARAMETERS, _OVERRIDE_PARAMETERS):
            arg, pos = _parameters(s, pos, base, count)
        elif code == _SET_COMPONENT_INDEX:
            head = s[pos]
            if head == 0xF5:
                arg, pos = True, pos + 1
            elif head >> 5 == 0:
                arg, pos = _argument(s, pos, 0)
            else:
                k, pos = _argument(s, pos, 4)
                if k == 0:
                    raise _Unusual
                count[0] += k
                _need(count, base + 2)
                indexes = []
                for _ in range(k):
                    i, pos = _argument(s, pos, 0)
                    indexes.append(i)
                arg = tuple(indexes)
        elif code == _TRY_EACH:
            k, pos = _argument(s, pos, 4)
            count[0] += k
            _need(count, base + 2)
            alternatives = []
            allow_none = False
            for i in range(k):
                if s[pos] == 0xF6 and i == k - 1 and i > 0:
                    allow_none, pos = True, pos + 1
                else:
                    raw, pos = _bstr(s, pos)
                    alternatives.append(_program(raw, base + _WRAP, count))
            if not alternatives:
                raise _Unusual
            arg = (tuple(alternatives), allow_none)
        elif code == _RUN_SEQUENCE:
            raw, pos = _bstr(s, pos)
            arg = _program(raw, base + _WRAP, count)
        else:
            raise _Unusual  # custom, extension or unimplemented command
        out.append((code, arg))
    if pos != len(s):
        raise _Unusual
    return tuple(out)


def _parameters(s: bytes, pos: int, base: int, count: list[int]) -> tuple[dict[int, object], int]:
    """The map argument of set/override-parameters (§8.4.8), in encoded order."""
    k = s[pos] - 0xA0
    if 0 < k < 24:  # map head with the length in it
        pos += 1
    else:
        k, pos = _argument(s, pos, 5)
        if k == 0:
            raise _Unusual
    count[0] += 2 * k
    if base + 2 > count[1]:
        count[1] = base + 2
    values: dict[int, object] = {}
    for _ in range(k):
        key = s[pos]
        kind = _PARAMETER_KINDS.get(key) if key < 24 else None
        if kind is None or key in values:
            raise _Unusual
        pos += 1
        value: object
        if kind is bytes:
            head = s[pos]
            if 0x40 <= head < 0x58:  # ids: length in the head
                end = pos + head - 0x3F
                if end > len(s):
                    raise _Unusual
                value = s[pos + 1 : end]
                pos = end
            else:
                value, pos = _bstr(s, pos)
        elif kind is int:
            head = s[pos]
            if head < 24:
                value = head
                pos += 1
            else:
                value, pos = _argument(s, pos, 0)
        elif kind is bool:
            head = s[pos]
            if head != 0xF4 and head != 0xF5:
                raise _Unusual
            value, pos = head == 0xF5, pos + 1
        elif kind is str:
            length, pos = _argument(s, pos, 3)
            if pos + length > len(s):
                raise _Unusual
            value = s[pos : pos + length].decode("utf-8")
            pos += length
        else:  # image-digest: bstr .cbor SUIT_Digest, one level further down
            raw, pos = _bstr(s, pos)
            if len(raw) < 3 or raw[0] != 0x82:
                raise _Unusual
            alg, p = _int(raw, 1)
            digest, p = _bstr(raw, p)
            if p != len(raw):
                raise _Unusual
            count[0] += 3
            if base + _WRAP + 1 > count[1]:
                count[1] = base + _WRAP + 1
            value = (alg, digest)
        values[key] = value
    return values, pos
