"""The one-pass path (``fastpath``) against the typed path (``process_typed``).

``process`` must decide exactly as the typed decoder does: the same
acceptance and outcome, or the same error code and message. Checked here on
the common shapes, text maps unsevered and severed among them (and that they
do take the one-pass path, or the comparison would prove nothing), on every
single-byte change of a signed text map re-signed and of a signed
envelope, on re-signed manifests with non-canonical encodings, duplicate
keys and other faults inside the signed bytes, across every limit near its
boundary, on the specification's vectors and on random mutations.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from hypothesis import HealthCheck, given, settings

from suit import auth, cbor, cose, fastpath
from suit.auth import TrustAnchor
from suit.build import build_envelope, sign_envelope
from suit.errors import AuthenticationError, ErrorCode, SuitError
from suit.limits import DEFAULT_LIMITS, Limits
from suit.processor import (
    DeviceContext,
    Outcome,
    Procedure,
    process,
    process_typed,
)

from .conftest import PAYLOAD, URI, VECTORS, description, device, mutations

ES256 = ec.generate_private_key(ec.SECP256R1())
ED25519 = ed25519.Ed25519PrivateKey.generate()
COMPONENT = (b"\x00",)
UPDATE_SEQUENCES = (16, 20, 7)


def plain(**overrides: Any) -> dict[str, Any]:
    """The common shape without a text map (``text=…`` keeps one)."""
    desc = description(**overrides)
    if "text" not in overrides:
        desc.pop("text")
    return desc


def make(key: Any = ES256, kid: bytes | None = None, files: Any = None, **overrides: Any) -> bytes:
    return sign_envelope(build_envelope(plain(**overrides), files or {}), key, kid)


def anchors(key: Any = ES256, **kw: Any) -> list[TrustAnchor]:
    return [TrustAnchor(key.public_key(), **kw)]


def result(run: Callable[[], Outcome]) -> tuple[Any, ...]:
    try:
        outcome = run()
    except SuitError as exc:
        return ("rejected", exc.code, exc.message)
    return ("accepted", outcome, outcome.manifest)


def agree(
    data: bytes,
    trusted: list[TrustAnchor],
    ctx: DeviceContext | None = None,
    procedure: Procedure = Procedure.UPDATE,
    limits: Limits = DEFAULT_LIMITS,
) -> tuple[Any, ...]:
    """The verdict, after checking both paths give it."""
    ctx = ctx if ctx is not None else device()
    fast = result(lambda: process(data, trusted, ctx, procedure, limits))
    typed = result(lambda: process_typed(data, trusted, ctx, procedure, limits))
    assert fast == typed, data.hex()
    return fast


def takes_fast_path(data: bytes, trusted: list[TrustAnchor], ctx: DeviceContext) -> bool:
    checked = fastpath.authenticate(data, trusted, ctx.class_id, DEFAULT_LIMITS)
    if checked is None:
        return False
    return fastpath.process(checked, ctx, UPDATE_SEQUENCES, DEFAULT_LIMITS) is not None


# ------------------------------------------------------------ common shapes

SECOND = {
    "install-id": ["01", "02"],
    "vendor-id": "fa6b4a53d5ad5fdfbe9de663e4d41ffe",
    "class-id": "1492af1425695e48bf429b2d51f2ab45",
    "install-digest": {"algorithm-id": "sha256", "digest-bytes": hashlib.sha256(b"b").hexdigest()},
    "install-size": 1,
    "uri": "https://updates.example/b.bin",
}

TEXT = {"manifest-description": "test release", "update-description": "fixes " * 8}


def _without_member(data: bytes, key: int) -> bytes:
    """``data`` re-encoded without envelope member ``key`` (still signed)."""
    members = {k: v for k, v in cbor2.loads(data).value.items() if k != key}
    return b"\xd8\x6b" + cbor.dumps(members)


SHAPES: dict[str, tuple[Callable[[], bytes], list[TrustAnchor], DeviceContext]] = {
    "es256": (lambda: make(), anchors(), device()),
    "ed25519": (lambda: make(ED25519), anchors(ED25519), device()),
    "key id": (lambda: make(kid=b"k1"), anchors(key_id=b"k1"), device()),
    "untagged": (lambda: make()[2:], anchors(), device()),
    "two components": (
        lambda: make(components=[plain()["components"][0], SECOND]),
        anchors(),
        device(fetchable={URI: PAYLOAD, SECOND["uri"]: b"b"}),
    ),
    "severed install": (lambda: make(severable=["install"]), anchors(), device()),
    "integrated payload": (
        lambda: make(files={"fw": PAYLOAD}, component={"file": "fw", "integrated": True}),
        anchors(),
        device(fetchable={}),
    ),
    "reference uri": (
        lambda: make(**{"reference-uri": "https://rel.example/7"}),
        anchors(),
        device(),
    ),
    "long component id part": (
        lambda: make(component={"install-id": ["ab" * 40]}),
        anchors(),
        device(),
    ),
    "component id of 25 parts": (
        lambda: make(component={"install-id": [f"{i:02x}" for i in range(25)]}),
        anchors(),
        device(),
    ),
    "text": (lambda: make(text=TEXT), anchors(), device()),
    "severed text": (lambda: make(text=TEXT, severable=["text"]), anchors(), device()),
    "severed text, member absent": (
        lambda: _without_member(make(text=TEXT, severable=["text"]), 23),
        anchors(),
        device(),
    ),
    "large sequence number": (
        lambda: make(**{"manifest-sequence-number": 2**40}),
        anchors(),
        device(),
    ),
}


@pytest.mark.parametrize("name", SHAPES)
def test_common_shapes_are_accepted_on_the_fast_path(name: str) -> None:
    build, trusted, ctx = SHAPES[name]
    data = build()
    assert takes_fast_path(data, trusted, ctx)
    for procedure in (Procedure.AUTHENTICATE, Procedure.UPDATE):
        assert agree(data, trusted, ctx, procedure)[0] == "accepted", procedure
    installed = device(images={COMPONENT: PAYLOAD}, fetchable=ctx.fetchable)
    agree(data, trusted, installed, Procedure.INVOKE)


def test_text_map_of_the_cli_is_read_on_the_fast_path() -> None:
    # What ``fleetsuit manifest create`` makes from the fixtures' description.
    data = sign_envelope(build_envelope(description(), {}), ES256)
    assert 23 in cbor2.loads(_manifest(data))
    assert takes_fast_path(data, anchors(), device())
    assert agree(data, anchors())[0] == "accepted"


def test_severed_text_absent_is_reported_severed() -> None:
    data = SHAPES["severed text, member absent"][0]()
    assert agree(data, anchors())[1].severed == (23,)
    assert agree(make(text=TEXT, severable=["text"]), anchors())[1].severed == ()


def test_outcome_manifest_is_the_typed_manifest() -> None:
    data = make()
    fast = process(data, anchors(), device())
    typed = process_typed(data, anchors(), device())
    assert fast.decoded is None  # not built on the one-pass path …
    assert fast.manifest == typed.manifest  # … but the same once read
    assert fast.manifest.sequence_number == 7


# ------------------------------------------------------------ changed bytes


@pytest.mark.parametrize(
    ("key", "text"),
    [(ES256, None), (ED25519, None), (ES256, "unsevered"), (ES256, "severed")],
    ids=["es256", "ed25519", "text", "severed text"],
)
def test_every_single_byte_change_is_rejected_alike(key: Any, text: str | None) -> None:
    if text is None:
        data = make(key)
    else:
        data = make(key, text=TEXT, severable=["text"] if text == "severed" else [])
    trusted = anchors(key)
    for pos in range(len(data)):
        for new in {data[pos] ^ 0x01, data[pos] ^ 0x80, 0xFF, 0x00}:
            if new == data[pos] or (pos < 2 and new in (0xD8, 0x6B)):
                continue
            changed = data[:pos] + bytes([new]) + data[pos + 1 :]
            verdict = agree(changed, trusted)
            assert verdict[0] == "rejected", (pos, new)


def test_signature_and_digest_failures_are_decided_on_the_fast_path() -> None:
    data = make()
    sig_at = len(data) - 1 - len(_manifest(data)) - 3  # inside the signature
    flipped = data[:sig_at] + bytes([data[sig_at] ^ 1]) + data[sig_at + 1 :]
    other = ec.generate_private_key(ec.SECP256R1())
    cases = [
        (flipped, anchors(), ErrorCode.SIGNATURE_INVALID),
        (data, anchors(other), ErrorCode.SIGNATURE_INVALID),
        (data, anchors(ED25519), ErrorCode.UNTRUSTED_SIGNER),
        (make(kid=b"k1"), anchors(key_id=b"k2"), ErrorCode.UNTRUSTED_SIGNER),
        (data, anchors(class_ids=frozenset({b"other class"})), ErrorCode.UNTRUSTED_SIGNER),
        (_tamper_manifest(data), anchors(), ErrorCode.DIGEST_MISMATCH),
    ]
    for envelope, trusted, code in cases:
        with pytest.raises(AuthenticationError) as info:
            fastpath.authenticate(envelope, trusted, device().class_id, DEFAULT_LIMITS)
        assert info.value.code is code
        assert agree(envelope, trusted)[1] is code


def test_rejection_after_the_signature_checks_it_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = auth.verify_message

    def counting(*args: Any) -> bool:
        calls.append(args)
        return real(*args)

    monkeypatch.setattr(auth, "verify_message", counting)
    ctx = device(installed_sequence={COMPONENT: 7})
    with pytest.raises(SuitError) as info:
        process(make(), anchors(), ctx)
    assert info.value.code is ErrorCode.ROLLBACK
    assert len(calls) == 1


# ------------------------------------------------------------ signed faults


def _manifest(data: bytes) -> bytes:
    return bytes(cbor2.loads(data).value[3])


def _tamper_manifest(data: bytes) -> bytes:
    manifest = _manifest(data)
    at = data.index(manifest) + len(manifest) - 1
    return data[:at] + bytes([data[at] ^ 1]) + data[at + 1 :]


def seal(manifest: bytes, key: Any = ES256, extra: bytes = b"", extra_count: int = 0) -> bytes:
    """A signed envelope around ``manifest`` exactly as given (any encoding)."""
    digest = cbor.dumps([-16, hashlib.sha256(cbor.wrap_bstr(manifest)).digest()])
    wrapper = cbor.dumps([digest, cose.sign(digest, key)])
    members = b"\x02" + cbor.wrap_bstr(wrapper) + b"\x03" + cbor.wrap_bstr(manifest) + extra
    return b"\xd8\x6b" + cbor.encode_head(5, 2 + extra_count) + members


def _levels(manifest: bytes) -> dict[str, bytes]:
    value = cbor2.loads(manifest)
    common = value[3]
    return {
        "manifest": manifest,
        "common": common,
        "shared": cbor2.loads(common)[4],
        "validate": value[7],
        "install": value[20],
    }


def _rewrite(manifest: bytes, level: str, old: bytes, new: bytes) -> bytes:
    """``manifest`` with ``old`` replaced by ``new`` inside ``level``, every
    bstr-wrapped level around it re-wrapped."""
    parts = _levels(manifest)
    inner = parts[level]
    assert inner.count(old) == 1, (level, old)
    changed = inner.replace(old, new)
    outer = {
        "shared": "common",
        "common": "manifest",
        "validate": "manifest",
        "install": "manifest",
    }
    while level != "manifest":
        parent = outer[level]
        holder = parts[parent] if parent != "manifest" else manifest
        assert holder.count(cbor.wrap_bstr(inner)) == 1
        changed = holder.replace(cbor.wrap_bstr(inner), cbor.wrap_bstr(changed))
        inner, level = holder, parent
    return changed


BASE = _manifest(make())
SIGNED_FAULTS = [
    ("manifest", b"\x02\x07", b"\x02\x18\x07", ErrorCode.NON_CANONICAL),
    ("manifest", b"\xa6\x01\x01", b"\xa7\x01\x01\x01\x01", ErrorCode.DUPLICATE_KEY),
    ("manifest", b"\xa6\x01\x01", b"\xa6\x01\x02", ErrorCode.UNSUPPORTED_VERSION),
    ("manifest", b"\xa6\x01\x01", b"\xa6\x01\x18\x01", ErrorCode.NON_CANONICAL),
    ("manifest", b"\xa6\x01\x01", b"\xa6\x01\x20", ErrorCode.UNSUPPORTED_VERSION),
    ("manifest", b"\x02\x07", b"\x02\x27", ErrorCode.INVALID_STRUCTURE),
    ("manifest", b"\xa6\x01\x01", b"\xa7\x05\x01\x01\x01", ErrorCode.INVALID_STRUCTURE),
    ("common", b"\x41\x00", b"\x58\x01\x00", ErrorCode.NON_CANONICAL),
    ("common", b"\x81\x81\x41\x00", b"\x82\x81\x41\x00\x81\x41\x00", ErrorCode.INVALID_STRUCTURE),
    ("common", b"\x02\x81\x81", b"\x02\x9f\x81\x41\x00\xff\x04\x81", ErrorCode.NON_CANONICAL),
    ("shared", b"\x0e\x19\x10\x00", b"\x0e\x1a\x00\x00\x10\x00", ErrorCode.NON_CANONICAL),
    ("shared", b"\x0e\x19\x10\x00", b"\x0e\x19\x0f\xff", ErrorCode.IMAGE_SIZE_MISMATCH),
    ("shared", b"\x02\x50", b"\x01\x50", ErrorCode.DUPLICATE_KEY),
    # A repeated parameter that would otherwise pass: override keeps the last.
    ("shared", b"\xa4\x01", b"\xa5\x0e\x00\x01", ErrorCode.DUPLICATE_KEY),
    ("common", b"\x81\x81\x41\x00", b"\x82\x81\x41\x00\x81\x41\x00", ErrorCode.INVALID_STRUCTURE),
    ("shared", b"\x02\x50", b"\x02\x58\x10", ErrorCode.NON_CANONICAL),
    ("shared", b"\x58\x24\x82\x2f", b"\x58\x25\x82\x38\x0f", ErrorCode.NON_CANONICAL),
    ("shared", b"\x01\x0f\x02\x0f", b"\x18\x1d\x0f\x02\x0f", ErrorCode.UNSUPPORTED_COMMAND),
    ("shared", b"\x01\x0f\x02\x0f", b"\x01\xf5\x02\x0f", ErrorCode.INVALID_STRUCTURE),
    ("shared", b"\x01\x0f\x02\x0f", b"\x01\x0f\x02\x0f\x0f", ErrorCode.MALFORMED_CBOR),
    ("manifest", b"\x02\x07", b"\x02\x1a\x00\x00\x00\x07", ErrorCode.NON_CANONICAL),
    ("manifest", b"\x02\x07", b"\x02\x1b" + bytes(7) + b"\x07", ErrorCode.NON_CANONICAL),
    (
        "common",
        b"\xa2\x02\x81\x81\x41\x00",
        b"\xa3\x02\x81\x81\x41\x00\x02\x81\x81\x41\x00",
        ErrorCode.DUPLICATE_KEY,
    ),
    ("shared", b"\xa4\x01", b"\xa5\x0c\x00\x01", ErrorCode.INVALID_STRUCTURE),
    ("shared", b"\xa4\x01", b"\xa5\x0c\xf5\x01", ErrorCode.OK),
    ("manifest", b"\x07\x43", b"\x07\x58\x03", ErrorCode.NON_CANONICAL),
    ("validate", b"\x03\x0f", b"\x03\x18\x0f", ErrorCode.NON_CANONICAL),
    ("install", b"https", b"\xfftps", ErrorCode.MALFORMED_CBOR),
    ("install", b"\x15\x02", b"\x15\x18\x02", ErrorCode.NON_CANONICAL),
]


def test_unchanged_seal_is_accepted_on_the_fast_path() -> None:
    data = seal(BASE)
    assert takes_fast_path(data, anchors(), device())
    assert agree(data, anchors())[0] == "accepted"


@pytest.mark.parametrize("fault", SIGNED_FAULTS, ids=lambda f: f"{f[0]}:{f[1].hex()}->{f[2].hex()}")
def test_signed_faults_are_rejected_alike(fault: tuple[str, bytes, bytes, ErrorCode]) -> None:
    level, old, new, code = fault
    manifest = _rewrite(BASE, level, old, new)
    verdict = agree(seal(manifest), anchors())
    if code is ErrorCode.OK:
        assert verdict[0] == "accepted", verdict
    else:
        assert verdict[:2] == ("rejected", code), verdict


def test_trailing_bytes_in_the_manifest_are_rejected_alike() -> None:
    verdict = agree(seal(BASE + b"\x00"), anchors())
    assert verdict[:2] == ("rejected", ErrorCode.MALFORMED_CBOR)


def test_repeated_components_are_rejected_alike() -> None:
    component = plain()["components"][0]
    verdict = agree(make(components=[component, component]), anchors())
    assert verdict[:2] == ("rejected", ErrorCode.INVALID_STRUCTURE)


def test_changed_severed_text_is_rejected_alike() -> None:
    data = make(text=TEXT, severable=["text"])
    assert takes_fast_path(data, anchors(), device())
    changed = data.replace(b"test release", b"test releasf")  # the envelope's member only
    assert changed.count(b"test releasf") == 1
    verdict = agree(changed, anchors())
    assert verdict[:2] == ("rejected", ErrorCode.SEVERABLE_DIGEST_MISMATCH)


def test_text_in_both_manifest_and_envelope_is_rejected_alike() -> None:
    text = cbor.dumps({"en": {1: "x"}})
    data = seal(_with_text(text), extra=b"\x17" + cbor.wrap_bstr(text), extra_count=1)
    verdict = agree(data, anchors())
    assert verdict[:2] == ("rejected", ErrorCode.SEVERABLE_DIGEST_MISMATCH)


def test_changed_severed_member_is_rejected_alike() -> None:
    data = make(severable=["install"])
    assert takes_fast_path(data, anchors(), device())
    changed = data.replace(b"fw.bin", b"fw.bim")  # in the envelope's install member only
    assert changed.count(b"fw.bim") == 1
    verdict = agree(changed, anchors(), device(fetchable={URI[:-1] + "m": PAYLOAD}))
    assert verdict[:2] == ("rejected", ErrorCode.SEVERABLE_DIGEST_MISMATCH)


def _with_text(text: bytes) -> bytes:
    """BASE with ``text`` as its unsevered suit-text member (key 23), any encoding."""
    assert BASE[0] == 0xA6
    return b"\xa7" + BASE[1:] + b"\x17" + cbor.wrap_bstr(text)


# SUIT_Text_Map (§8.4.4) as the typed decoder reads it: the encodings it
# accepts, and faults of each kind it rejects, inside re-signed manifests.
RICH_TEXT = cbor.dumps(
    {
        "en": {1: "test release", -1: "vendor", 2**40: "x" * 300, (b"\x00",): {3: "boot"}},
        "fr": {(): {}, (b"\x00", b"\x01" * 30): {1: ""}},
        "de": {},
    }
)
TEXT_ACCEPTED = {
    "one field": cbor.dumps({"en": {1: "x"}}),
    "empty": b"\xa0",
    "empty language": cbor.dumps({"en": {}}),
    "rich": RICH_TEXT,
    "keys out of order": b"\xa1\x62en\xa2\x02\x61b\x01\x61a",
}
TEXT_REJECTED = {
    "language twice": (b"\xa2\x62en\xa0\x62en\xa0", ErrorCode.DUPLICATE_KEY),
    "field twice": (b"\xa1\x62en\xa2\x01\x61a\x01\x61b", ErrorCode.DUPLICATE_KEY),
    "component twice": (
        b"\xa1\x62en\xa2\x81\x41\x00\xa0\x81\x41\x00\xa0",
        ErrorCode.DUPLICATE_KEY,
    ),
    "component field twice": (
        b"\xa1\x62en\xa1\x81\x41\x00\xa2\x01\x61a\x01\x61b",
        ErrorCode.DUPLICATE_KEY,
    ),
    "float key beside int key": (
        b"\xa1\x62en\xa2\x01\x61a\xf9\x3c\x00\x61b",
        ErrorCode.DUPLICATE_KEY,
    ),
    "true key beside 1": (b"\xa1\x62en\xa2\x01\x61a\xf5\x61b", ErrorCode.DUPLICATE_KEY),
    "non-shortest field key": (b"\xa1\x62en\xa1\x18\x01\x61a", ErrorCode.NON_CANONICAL),
    "non-shortest language": (b"\xa1\x78\x02en\xa0", ErrorCode.NON_CANONICAL),
    "non-shortest map": (b"\xb8\x01\x62en\xa0", ErrorCode.NON_CANONICAL),
    "non-shortest component part": (
        b"\xa1\x62en\xa1\x81\x58\x01\x00\xa0",
        ErrorCode.NON_CANONICAL,
    ),
    "indefinite map": (b"\xbf\x62en\xa0\xff", ErrorCode.NON_CANONICAL),
    "indefinite text": (b"\xa1\x62en\xa1\x01\x7f\x61a\xff", ErrorCode.NON_CANONICAL),
    "bstr language": (b"\xa1\x42en\xa0", ErrorCode.INVALID_STRUCTURE),
    "int language": (b"\xa1\x01\xa0", ErrorCode.INVALID_STRUCTURE),
    "language not a map": (b"\xa1\x62en\x80", ErrorCode.INVALID_STRUCTURE),
    "field not text": (b"\xa1\x62en\xa1\x01\x01", ErrorCode.INVALID_STRUCTURE),
    "field bstr": (b"\xa1\x62en\xa1\x01\x41a", ErrorCode.INVALID_STRUCTURE),
    "text key": (b"\xa1\x62en\xa1\x61k\x61a", ErrorCode.INVALID_STRUCTURE),
    "float key": (b"\xa1\x62en\xa1\xf9\x3c\x00\x61a", ErrorCode.INVALID_STRUCTURE),
    "true key": (b"\xa1\x62en\xa1\xf5\x61a", ErrorCode.INVALID_STRUCTURE),
    "int component part": (b"\xa1\x62en\xa1\x81\x01\xa0", ErrorCode.INVALID_STRUCTURE),
    "component text not a map": (
        b"\xa1\x62en\xa1\x81\x41\x00\x61a",
        ErrorCode.INVALID_STRUCTURE,
    ),
    "component inside component": (
        b"\xa1\x62en\xa1\x81\x41\x00\xa1\x81\x41\x00\xa0",
        ErrorCode.INVALID_STRUCTURE,
    ),
    "tagged field": (b"\xa1\x62en\xa1\x01\xd8\x6f\x61a", ErrorCode.INVALID_STRUCTURE),
    "tagged map": (b"\xd8\x6f\xa0", ErrorCode.INVALID_STRUCTURE),
    "array": (b"\x80", ErrorCode.INVALID_STRUCTURE),
    "invalid utf-8 field": (b"\xa1\x62en\xa1\x01\x61\xff", ErrorCode.MALFORMED_CBOR),
    "invalid utf-8 language": (b"\xa1\x62\xc3\x28\xa0", ErrorCode.MALFORMED_CBOR),
    "trailing byte": (b"\xa0\x00", ErrorCode.MALFORMED_CBOR),
    "truncated": (b"\xa1\x62en\xa1\x01\x62a", ErrorCode.MALFORMED_CBOR),
    "nothing": (b"", ErrorCode.MALFORMED_CBOR),
}


@pytest.mark.parametrize("name", TEXT_ACCEPTED)
def test_text_maps_are_accepted_on_the_fast_path(name: str) -> None:
    data = seal(_with_text(TEXT_ACCEPTED[name]))
    assert takes_fast_path(data, anchors(), device())
    assert agree(data, anchors())[0] == "accepted"


@pytest.mark.parametrize("name", TEXT_REJECTED)
def test_text_map_faults_are_rejected_alike(name: str) -> None:
    text, code = TEXT_REJECTED[name]
    data = seal(_with_text(text))
    assert not takes_fast_path(data, anchors(), device())
    assert agree(data, anchors())[:2] == ("rejected", code)


@pytest.mark.parametrize("name", ["one field", "rich"])
def test_every_single_byte_change_of_a_signed_text_map_agrees(name: str) -> None:
    text = TEXT_ACCEPTED[name]
    verdicts = set()
    for pos in range(len(text)):
        for new in {text[pos] ^ 0x01, text[pos] ^ 0x20, text[pos] ^ 0x80, 0xFF, 0x00}:
            if new != text[pos]:
                changed = text[:pos] + bytes([new]) + text[pos + 1 :]
                verdicts.add(agree(seal(_with_text(changed)), anchors())[0])
    assert verdicts == {"accepted", "rejected"}


def test_text_map_charge_is_the_typed_decoders() -> None:
    # Depth never decides a verdict here (the protected header needs 13, a text
    # map at most 11), so its charge is compared with cbor.decode's directly.
    # Component entries whose identifier alone, or whose text alone, is deepest.
    deepest = [cbor.dumps({"en": {(b"\x00",): {}}}), cbor.dumps({"en": {(): {1: "a"}}})]
    for text in [*TEXT_ACCEPTED.values(), *deepest]:
        count = [0, 0]
        fastpath._text(text, count)
        budget = cbor.Budget(10**6)
        cbor.decode(text, Limits(max_depth=count[1]), budget, 8)
        assert 10**6 - budget.items_left == count[0], text.hex()
        with pytest.raises(SuitError) as info:
            cbor.decode(text, Limits(max_depth=count[1] - 1), cbor.Budget(10**6), 8)
        assert info.value.code is ErrorCode.LIMIT_EXCEEDED, text.hex()


def _with_validate(validate: bytes) -> bytes:
    old = cbor.wrap_bstr(_levels(BASE)["validate"])
    return seal(_rewrite(BASE, "manifest", old, cbor.wrap_bstr(validate)))


def test_try_each_takes_nil_only_last() -> None:
    alternative = cbor.dumps([3, 15])
    assert agree(_with_validate(cbor.dumps([15, [alternative, None]])), anchors())[0] == "accepted"
    for arg in ([None, alternative], [None], []):
        verdict = agree(_with_validate(cbor.dumps([15, arg])), anchors())
        assert verdict[:2] == ("rejected", ErrorCode.INVALID_STRUCTURE), arg


OUTER_FAULTS = [
    (b"\xd8\x6b\xa2", b"\xd8\x6b\xb8\x02", ErrorCode.NON_CANONICAL),
    (b"\xd8\x6b\xa2", b"\xd8\x6b\xa3\x03\x40", ErrorCode.DUPLICATE_KEY),
    (b"\xd8\x6b\xa2", b"\xd8\x6b\xa3\x05\x40", ErrorCode.INVALID_STRUCTURE),
    (b"\xd8\x6b\xa2", b"\xd8\x6b\xa3\x10\x40", ErrorCode.SEVERABLE_DIGEST_MISMATCH),
    (b"\xd8\x6b\xa2", b"\xd8\x6b\xa3\x61\x23\x40", ErrorCode.OK),
    (b"\xd8\x6b\xa2", b"\xd8\x6b\xa3\x61\xff\x40", ErrorCode.MALFORMED_CBOR),
    (b"\xd8\x6b\xa2", b"\xd8\x6b\xbf", ErrorCode.NON_CANONICAL),
    (b"\xd8\x6b\xa2", b"\xd8\x6b\xa4\x61\x23\x40\x61\x23\x40", ErrorCode.DUPLICATE_KEY),
    (b"\xd8\x6b", b"\xd8\x6c", ErrorCode.MALFORMED_CBOR),
    (b"\xd8\x6b", b"\xd9\x00\x6b", ErrorCode.NON_CANONICAL),
]


@pytest.mark.parametrize("fault", OUTER_FAULTS, ids=lambda f: f[1].hex())
def test_outer_faults_are_rejected_alike(fault: tuple[bytes, bytes, ErrorCode]) -> None:
    old, new, code = fault
    data = make()
    changed = new + data[len(old) :]
    if new.endswith(b"\xbf"):
        changed += b"\xff"
    verdict = agree(changed, anchors())
    assert verdict[0] == ("accepted" if code is ErrorCode.OK else "rejected")
    if code is not ErrorCode.OK:
        assert verdict[1] is code, verdict


def test_manifest_before_its_wrapper_is_rejected_alike() -> None:
    envelope = cbor2.loads(make()).value
    swapped = (
        b"\xd8\x6b\xa2\x03" + cbor.wrap_bstr(envelope[3]) + b"\x02" + cbor.wrap_bstr(envelope[2])
    )
    assert agree(swapped, anchors())[:2] == ("rejected", ErrorCode.INVALID_STRUCTURE)


def test_manifest_bstr_head_must_be_shortest() -> None:
    data = make()
    manifest = _manifest(data)
    head = cbor.encode_head(2, len(manifest))
    assert len(head) == 2  # 0x58 n: rewrite as 0x59 00 n
    changed = data.replace(b"\x03" + head + manifest, b"\x03\x59\x00" + head[1:] + manifest)
    assert changed != data
    assert agree(changed, anchors())[1] is ErrorCode.NON_CANONICAL


def test_authentication_wrapper_with_two_signatures_goes_to_the_typed_decoder() -> None:
    data = make()
    envelope = cbor2.loads(data).value
    wrapper = cbor2.loads(envelope[2])
    twice = cbor.dumps([wrapper[0], wrapper[1], cose.sign(wrapper[0], ED25519)])
    changed = b"\xd8\x6b\xa2\x02" + cbor.wrap_bstr(twice) + b"\x03" + cbor.wrap_bstr(envelope[3])
    assert fastpath.authenticate(changed, anchors(ED25519), None, DEFAULT_LIMITS) is None
    assert agree(changed, anchors(ED25519))[0] == "accepted"


# ------------------------------------------------------------ limits


def test_limits_near_their_boundary_agree() -> None:
    data = make(components=[plain()["components"][0], SECOND])
    ctx = device(fetchable={URI: PAYLOAD, SECOND["uri"]: b"b"})
    sweeps = {
        "max_depth": [Limits(max_depth=d) for d in range(1, 26)],
        "max_items": [Limits(max_items=n) for n in range(1, 140)],
        "max_commands_run": [Limits(max_commands_run=n) for n in range(1, 30)],
    }
    for name, limits in sweeps.items():
        verdicts = [agree(data, anchors(), ctx, limits=lim) for lim in limits]
        # Both sides of the boundary are reached, and the far side is the limit.
        assert {v[0] for v in verdicts} == {"accepted", "rejected"}, name
        assert {v[1] for v in verdicts if v[0] == "rejected"} == {ErrorCode.LIMIT_EXCEEDED}, name
    too_large = agree(data, anchors(), ctx, limits=Limits(max_envelope_bytes=len(data) - 1))
    assert too_large[1] is ErrorCode.TOO_LARGE
    assert agree(data, anchors(), ctx, limits=Limits(max_envelope_bytes=len(data)))[0] == "accepted"
    too_many = agree(data, anchors(), ctx, limits=Limits(max_components=1))
    assert too_many[1] is ErrorCode.TOO_MANY_COMPONENTS
    assert agree(data, anchors(), ctx, limits=Limits(max_components=2))[0] == "accepted"


@pytest.mark.parametrize("text", ["cli", "rich", "severed"])
def test_limits_near_their_boundary_agree_with_text(text: str) -> None:
    if text == "rich":
        data = seal(_with_text(RICH_TEXT))
    else:
        data = make(text=TEXT, severable=["text"] if text == "severed" else [])
    assert takes_fast_path(data, anchors(), device())
    for limits in [Limits(max_depth=d) for d in range(1, 26)]:
        agree(data, anchors(), limits=limits)
    verdicts = [agree(data, anchors(), limits=Limits(max_items=n)) for n in range(1, 160)]
    accepted = [n for n, v in enumerate(verdicts, 1) if v[0] == "accepted"]
    assert accepted and accepted == list(range(accepted[0], 160))
    assert {v[1] for v in verdicts if v[0] == "rejected"} == {ErrorCode.LIMIT_EXCEEDED}
    # The text map's items are charged: the unsevered map moves the boundary.
    if text != "severed":
        without = seal(_manifest(make())) if text == "cli" else seal(BASE)
        items = [agree(without, anchors(), limits=Limits(max_items=n)) for n in range(1, 160)]
        first = next(n for n, v in enumerate(items, 1) if v[0] == "accepted")
        assert first < accepted[0]


def test_try_each_and_run_sequence_nesting_limits_agree() -> None:
    # validate = [try-each [<<[run-sequence <<[image-match 15]>>]>>, nil]]
    inner = cbor.dumps([3, 15])
    alternative = cbor.dumps([32, inner])
    validate = cbor.dumps([15, [alternative, None]])
    manifest = _rewrite(
        BASE, "manifest", cbor.wrap_bstr(_levels(BASE)["validate"]), cbor.wrap_bstr(validate)
    )
    data = seal(manifest)
    assert takes_fast_path(data, anchors(), device())
    verdicts = [agree(data, anchors(), limits=Limits(max_depth=d)) for d in range(10, 26)]
    assert {v[0] for v in verdicts} == {"accepted", "rejected"}
    assert {v[1] for v in verdicts if v[0] == "rejected"} == {ErrorCode.LIMIT_EXCEEDED}


def test_repeated_common_member_is_rejected_alike() -> None:
    components = b"\x02\x81\x81\x41\x00"
    for common in (b"\xa1" + components, b"\xa2" + components + components):
        data = seal(cbor.dumps({1: 1, 2: 0, 3: common}))
        verdict = agree(data, anchors(), procedure=Procedure.AUTHENTICATE)
        if common[0] == 0xA1:
            assert verdict[0] == "accepted"
        else:
            assert verdict[:2] == ("rejected", ErrorCode.DUPLICATE_KEY)


def test_shallow_manifest_depth_limit_agrees() -> None:
    # No shared sequence and no parameters: the signature's levels need the
    # most nesting (the protected header, 13), not the manifest's.
    common = cbor.dumps({2: [[b"\x00"]]})
    data = seal(cbor.dumps({1: 1, 2: 0, 3: common}))
    verdicts = [
        agree(data, anchors(), procedure=Procedure.AUTHENTICATE, limits=Limits(max_depth=d))
        for d in range(8, 16)
    ]
    accepted = [d for d, v in zip(range(8, 16), verdicts, strict=True) if v[0] == "accepted"]
    assert accepted == list(range(13, 16))


# ------------------------------------------------------------ vectors and fuzzing

VECTOR_FILES = sorted(p.name for p in VECTORS.glob("*.cbor"))


@pytest.mark.parametrize("name", VECTOR_FILES)
def test_specification_vectors_agree(name: str, spec_anchor: TrustAnchor) -> None:
    data = (VECTORS / name).read_bytes()
    for procedure in Procedure:
        agree(data, [spec_anchor], device(fetchable={}), procedure)


SEEDS = [
    make(),
    make(ED25519),
    make(severable=["install"]),
    make(kid=b"k1"),
    make(text=TEXT),
    make(text=TEXT, severable=["text"]),
    seal(_with_text(RICH_TEXT)),
]
FUZZ_ANCHORS = [TrustAnchor(ES256.public_key()), TrustAnchor(ED25519.public_key())]


@settings(
    max_examples=1500,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
@given(mutations(SEEDS, max_ops=3, max_span=4))
def test_random_mutations_agree(data: bytes) -> None:
    agree(data, FUZZ_ANCHORS)
