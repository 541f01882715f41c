"""``fleetsuit manifest``: keygen, create, sign, verify and show envelopes.

The file and key I/O around the SUIT library lives here; the library itself
takes bytes. One shape for every command (``fleetsuit.cli``): ``--json``
prints the result as one JSON document, ``-o/--output`` names the file a
command writes, every failure is one line (``CliError``, exit 1) and a usage
error exits 2. Keys are never overwritten unless ``--force`` says so.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from fleetsuit.cli import CliError, add_output_options, emit
from suit import cose, keys
from suit.auth import TrustAnchor, authenticate, check_envelope_members, check_severable
from suit.build import build_envelope, sign_envelope
from suit.codec import Decoder, decode
from suit.errors import SuitError
from suit.show import diagnostic, envelope_json


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "manifest",
        help="build, sign, verify and show SUIT envelopes",
        description="Build, sign, verify and show SUIT envelopes (draft-ietf-suit-manifest).",
    )
    sub = parser.add_subparsers(dest="manifest_command", metavar="ACTION")
    sub.required = True

    p = sub.add_parser(
        "keygen",
        help="make a signing key pair (PEM files)",
        description="Make a signing key pair: the private key (mode 0600) "
        "and its public key beside it.",
    )
    p.add_argument(
        "--alg",
        choices=[a.value for a in keys.KeyAlgorithm],
        default="es256",
        help="signature algorithm: es256 (P-256) or ed25519 (default: es256)",
    )
    _add_file_output(p, "the private key file to write")
    p.add_argument(
        "--public-out",
        type=Path,
        metavar="FILE",
        help="the public key file to write (default: the private key file + .pub)",
    )
    p.add_argument("--force", action="store_true", help="overwrite key files that already exist")
    add_output_options(p, output=False)
    p.set_defaults(func=_keygen)

    p = sub.add_parser(
        "create",
        help="build an envelope from a JSON description",
        description="Build an envelope from a JSON description; payload "
        "files it names are read beside it.",
    )
    p.add_argument("description", type=Path, help="the release description (JSON)")
    _add_file_output(p, "the envelope file to write")
    p.add_argument(
        "--key", type=Path, metavar="FILE", help="a PEM private key: sign the envelope too"
    )
    add_output_options(p, output=False)
    p.set_defaults(func=_create)

    p = sub.add_parser(
        "sign",
        help="add a COSE_Sign1 signature to an envelope",
        description="Add a COSE_Sign1 signature to an envelope (after checking its digest).",
    )
    p.add_argument("envelope", type=Path, help="the envelope file to sign")
    p.add_argument(
        "--key", required=True, type=Path, metavar="FILE", help="the PEM private key to sign with"
    )
    _add_file_output(p, "the signed envelope file to write")
    p.add_argument("--kid", help="key id (text) for the unprotected header")
    add_output_options(p, output=False)
    p.set_defaults(func=_sign)

    p = sub.add_parser(
        "verify",
        help="exit 0 only when the envelope decodes and verifies",
        description="Decode and authenticate an envelope; exit 0 only when it "
        "verifies with one of the keys.",
    )
    p.add_argument("envelope", type=Path, help="the envelope file to verify")
    p.add_argument(
        "--key",
        required=True,
        type=Path,
        action="append",
        metavar="FILE",
        help="a trusted PEM public key (repeat for several)",
    )
    add_output_options(p, output=False)
    p.set_defaults(func=_verify)

    p = sub.add_parser(
        "show",
        help="print an envelope as JSON and CBOR diagnostic notation",
        description="Print an envelope (decoded, not verified) as JSON and "
        "CBOR diagnostic notation.",
    )
    p.add_argument("envelope", type=Path, help="the envelope file to show")
    p.add_argument(
        "--format",
        choices=["json", "diag", "both"],
        default="both",
        help="what to print: the JSON view, the diagnostic notation or both (default: both)",
    )
    add_output_options(p)
    p.set_defaults(func=_show)


def _add_file_output(parser: argparse.ArgumentParser, what: str) -> None:
    # dest "out", not "output": fleetsuit.cli.emit sends the printed result
    # to args.output, and these commands print a summary of what they wrote.
    parser.add_argument(
        "-o", "--output", "--out", dest="out", required=True, type=Path, metavar="FILE", help=what
    )


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


def _write_new(path: Path, data: bytes, *, mode: int, force: bool) -> None:
    """Create ``path`` with ``mode`` from the start (no moment with wider
    permissions); an existing file is an error unless ``force``."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
    try:
        fd = os.open(path, flags, mode)
    except FileExistsError:
        raise CliError(f"{path} already exists; --force overwrites it") from None
    except OSError as exc:
        raise CliError(f"cannot write {path}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)  # an overwritten file keeps its mode otherwise
            f.write(data)
    except OSError as exc:
        raise CliError(f"cannot write {path}: {exc.strerror}") from None


def _suit_error(where: Path, exc: SuitError) -> CliError:
    return CliError(f"{where}: {exc.code}: {exc.message}")


def load_private_key(path: Path) -> cose.PrivateKey:
    try:
        return keys.load_private_pem(_read(path))
    except ValueError as exc:
        raise CliError(f"{path}: {exc}") from None


def load_public_key(path: Path) -> cose.PublicKey:
    try:
        return keys.load_public_pem(_read(path))
    except ValueError as exc:
        raise CliError(f"{path}: {exc}") from None


def _keygen(args: argparse.Namespace) -> int:
    private_path: Path = args.out
    public_path: Path = args.public_out or private_path.with_name(private_path.name + ".pub")
    if not args.force:  # refuse before writing either file
        for path in (private_path, public_path):
            if path.exists():
                raise CliError(f"{path} already exists; --force overwrites it")
    key = keys.generate(keys.KeyAlgorithm(args.alg))
    _write_new(private_path, keys.private_pem(key), mode=0o600, force=args.force)
    _write_new(public_path, keys.public_pem(key.public_key()), mode=0o644, force=args.force)
    doc = {"algorithm": args.alg, "private_key": str(private_path), "public_key": str(public_path)}
    emit(args, doc, f"private key {private_path}, public key {public_path}")
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
    key = load_private_key(args.key) if args.key is not None else None
    try:
        data = build_envelope(description, files)
        if key is not None:
            data = sign_envelope(data, key)
    except SuitError as exc:
        raise _suit_error(args.description, exc) from None
    _write(args.out, data)
    _report_written(args, data, signed=key is not None)
    return 0


def _sign(args: argparse.Namespace) -> int:
    key = load_private_key(args.key)
    kid = args.kid.encode() if args.kid else None
    try:
        data = sign_envelope(_read(args.envelope), key, kid)
    except SuitError as exc:
        raise _suit_error(args.envelope, exc) from None
    _write(args.out, data)
    _report_written(args, data, signed=True)
    return 0


def _report_written(args: argparse.Namespace, data: bytes, *, signed: bool) -> None:
    doc = {"envelope": str(args.out), "bytes": len(data), "signed": signed}
    emit(args, doc, f"{args.out}: {len(data)} bytes, {'signed' if signed else 'not signed'}")


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
        raise _suit_error(args.envelope, exc) from None
    doc = {
        "envelope": str(args.envelope),
        "verified": True,
        "sequence_number": manifest.sequence_number,
        "severed": list(severed),
    }
    note = f", severed members {list(severed)}" if severed else ""
    emit(args, doc, f"{args.envelope}: OK, sequence number {manifest.sequence_number}{note}")
    return 0


def _show(args: argparse.Namespace) -> int:
    data = _read(args.envelope)
    try:
        envelope, manifest = decode(data)
    except SuitError as exc:
        raise _suit_error(args.envelope, exc) from None
    view = envelope_json(envelope, manifest)
    parts = []
    if args.format in ("json", "both"):
        parts.append(json.dumps(view, indent=2))
    if args.format in ("diag", "both"):
        parts.append(diagnostic(data))
    emit(args, view, "\n".join(parts))
    return 0
