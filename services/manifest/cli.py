"""``fleetsuit manifest``: keygen, create, sign, verify and show envelopes.

The file and key I/O of the SUIT library lives here; the library itself takes
bytes. Every user-facing failure is a one-line ``CliError``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from fleetsuit.cli import CliError

from . import cose
from .auth import TrustAnchor, authenticate, check_envelope_members, check_severable
from .build import build_envelope, sign_envelope
from .codec import Decoder, decode
from .errors import SuitError
from .show import diagnostic, envelope_json


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("manifest", help="build, sign, verify and show SUIT envelopes")
    sub = parser.add_subparsers(dest="manifest_command", metavar="ACTION")
    sub.required = True

    p = sub.add_parser("keygen", help="make a signing key pair (PEM)")
    p.add_argument("--alg", choices=["es256", "ed25519"], default="es256")
    p.add_argument("--out", "-o", required=True, type=Path, help="private key file")
    p.add_argument("--public-out", type=Path, help="public key file (default OUT.pub)")
    p.set_defaults(func=_keygen)

    p = sub.add_parser("create", help="build an envelope from a JSON description")
    p.add_argument("description", type=Path)
    p.add_argument("--out", "-o", required=True, type=Path)
    p.add_argument("--key", type=Path, help="private key: sign the envelope too")
    p.set_defaults(func=_create)

    p = sub.add_parser("sign", help="add a COSE_Sign1 signature to an envelope")
    p.add_argument("envelope", type=Path)
    p.add_argument("--key", required=True, type=Path)
    p.add_argument("--out", "-o", required=True, type=Path)
    p.add_argument("--kid", help="key id (text) for the unprotected header")
    p.set_defaults(func=_sign)

    p = sub.add_parser("verify", help="exit 0 only when the envelope decodes and verifies")
    p.add_argument("envelope", type=Path)
    p.add_argument("--key", required=True, type=Path, action="append", help="public key (PEM)")
    p.set_defaults(func=_verify)

    p = sub.add_parser("show", help="print an envelope as JSON and CBOR diagnostic notation")
    p.add_argument("envelope", type=Path)
    p.add_argument("--format", choices=["json", "diag", "both"], default="both")
    p.set_defaults(func=_show)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror}") from None


def _write(path: Path, data: bytes) -> None:
    try:
        path.write_bytes(data)
    except OSError as exc:
        raise CliError(f"cannot write {path}: {exc.strerror}") from None


def load_private_key(path: Path) -> cose.PrivateKey:
    try:
        key = serialization.load_pem_private_key(_read(path), password=None)
    except (ValueError, TypeError) as exc:
        raise CliError(f"{path} is not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey):
        raise CliError(f"{path}: only P-256 and Ed25519 keys are supported")
    return key


def load_public_key(path: Path) -> cose.PublicKey:
    try:
        key = serialization.load_pem_public_key(_read(path))
    except (ValueError, TypeError) as exc:
        raise CliError(f"{path} is not a PEM public key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey):
        raise CliError(f"{path}: only P-256 and Ed25519 keys are supported")
    return key


def _keygen(args: argparse.Namespace) -> int:
    key: cose.PrivateKey = (
        ed25519.Ed25519PrivateKey.generate()
        if args.alg == "ed25519"
        else ec.generate_private_key(ec.SECP256R1())
    )
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    public_path = args.public_out or args.out.with_name(args.out.name + ".pub")
    _write(args.out, private)
    args.out.chmod(0o600)
    _write(public_path, public)
    print(f"private key {args.out}, public key {public_path}")
    return 0


def _create(args: argparse.Namespace) -> int:
    try:
        description = json.loads(_read(args.description))
    except ValueError as exc:
        raise CliError(f"{args.description} is not JSON: {exc}") from None
    if not isinstance(description, dict):
        raise CliError(f"{args.description} must hold a JSON object")
    files: dict[str, bytes] = {}
    for comp in description.get("components") or []:
        if isinstance(comp, dict) and "file" in comp:
            name = str(comp["file"])
            files[name] = _read(args.description.parent / name)
    try:
        data = build_envelope(description, files)
        if args.key is not None:
            data = sign_envelope(data, load_private_key(args.key))
    except SuitError as exc:
        raise CliError(str(exc)) from None
    _write(args.out, data)
    return 0


def _sign(args: argparse.Namespace) -> int:
    key = load_private_key(args.key)
    kid = args.kid.encode() if args.kid else None
    try:
        data = sign_envelope(_read(args.envelope), key, kid)
    except SuitError as exc:
        raise CliError(str(exc)) from None
    _write(args.out, data)
    return 0


def _verify(args: argparse.Namespace) -> int:
    anchors = [TrustAnchor(load_public_key(p)) for p in args.key]
    data = _read(args.envelope)
    try:
        decoder = Decoder()
        envelope = decoder.envelope(data)
        authenticate(envelope, anchors)
        check_envelope_members(envelope)
        manifest = decoder.manifest(envelope.manifest_raw)
        severed = check_severable(envelope, manifest)
    except SuitError as exc:
        raise CliError(f"{args.envelope}: {exc}") from None
    note = f", severed members {list(severed)}" if severed else ""
    print(f"{args.envelope}: OK, sequence number {manifest.sequence_number}{note}")
    return 0


def _show(args: argparse.Namespace) -> int:
    data = _read(args.envelope)
    try:
        envelope, manifest = decode(data)
    except SuitError as exc:
        raise CliError(f"{args.envelope}: {exc}") from None
    if args.format in ("json", "both"):
        json.dump(envelope_json(envelope, manifest), sys.stdout, indent=2)
        print()
    if args.format in ("diag", "both"):
        print(diagnostic(data))
    return 0
