"""``fleetsuit device enroll | pending | accept | reject | revoke | list |
show | keygen``: the operator's device commands over
``fleetsuit.device_admin``, and the group that also holds the agent's
``device run`` and ``device simulate`` (``agent/cli.py`` registers them).

The one shape of every command (``fleetsuit.cli``, as ``release_cli``):
text, or one JSON document with ``--json``, to stdout or ``-o FILE``; a
failure is one line, ``CODE: message``, on stderr and exit 1; a bad option
is exit 2.

``enroll --csv FILE`` enrolls a fleet from a CSV file with a header row
naming the columns ``device_id``, ``device_class``, ``public_key_file``
and optionally ``group`` (a relative key path is read from the CSV's
folder). Each row is reported; a row the cluster (or a check here)
refuses does not stop the others, and makes the exit code 1.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import os
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent import cli as agent_cli
from fleetsuit.cli import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    CliError,
    add_output_options,
    command_group,
    emit,
)
from fleetsuit.client_errors import Refused
from fleetsuit.device_admin import (
    DEVICE_STATES,
    DeviceAdmin,
    DeviceInfo,
    DeviceWrite,
    check_device_id,
)
from fleetsuit.device_auth import new_device_key, private_pem, public_pem

from .release_cli import add_client_options, add_stale, client_for

WRITE_RETRY_DEADLINE_S = 60.0
READ_RETRY_DEADLINE_S = 15.0
CSV_COLUMNS = ("device_id", "device_class", "public_key_file")
MAX_CSV_ROWS = 1_000_000


# ---------------------------------------------------------------- documents


def device_doc(device: DeviceInfo) -> dict[str, Any]:
    doc = dataclasses.asdict(device)
    doc["public_key_pem"] = device.public_key_pem.decode(errors="replace")
    doc["installed"] = [dataclasses.asdict(v) for v in device.installed]
    return doc


def _installed_text(doc: dict[str, Any]) -> str:
    return ", ".join(f"{v['component']}@{v['release_id'] or 'factory'}" for v in doc["installed"]) or "-"


def _device_text(doc: dict[str, Any]) -> str:
    last = "-"
    if doc["last_event"]:
        when = datetime.fromtimestamp(doc["last_event_at_unix_ms"] / 1000, UTC).isoformat().replace("+00:00", "Z")
        last = f"{doc['last_event']} at {when} via {doc['last_gateway_id'] or '-'}"
    rows = [
        ("device", doc["device_id"]),
        ("state", doc["state"] + (f" ({doc['state_reason']})" if doc["state_reason"] else "")),
        ("class", doc["device_class"]),
        ("group", doc["group"] or "-"),
        ("installed", _installed_text(doc)),
        ("last event", last),
        ("ledger", f"index {doc['index']}"),
    ]
    key = str(doc["public_key_pem"]).rstrip()
    return "\n".join(f"{name:10} {value}" for name, value in rows) + "\n" + key


def _list_text(doc: dict[str, Any]) -> str:
    if not doc["devices"]:
        return "no devices"
    return "\n".join(
        f"{d['device_id']:24} {d['state']:9} {d['device_class']:16} {d['group'] or '-':12} {_installed_text(d)}"
        for d in doc["devices"]
    )


def _write_text(verb: str) -> Callable[[dict[str, Any]], str]:
    def text(doc: dict[str, Any]) -> str:
        if doc["duplicate"]:
            return f"{doc['device_id']} was {verb} already"
        return f"{verb} {doc['device_id']}: index {doc['index']}, block {doc['block_height']}"
    return text


@contextlib.contextmanager
def _admin(args: argparse.Namespace, retry_deadline_s: float) -> Iterator[DeviceAdmin]:
    with client_for(args, retry_deadline_s) as client:
        yield DeviceAdmin(client)


def _read_key(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read key {path}: {exc.strerror}") from None


# ---------------------------------------------------------------- enroll


def cmd_enroll(args: argparse.Namespace) -> int:
    if args.csv is not None:
        if any(v is not None for v in (args.id, args.device_class, args.key, args.group)):
            raise CliError("give --csv FILE, or --id, --class and --key, not both", EXIT_USAGE)
        return _enroll_csv(args)
    if args.id is None or args.device_class is None or args.key is None:
        raise CliError("give --id D --class C --key PUB.pem (or --csv FILE)", EXIT_USAGE)
    try:
        check_device_id(args.id)
        key = _read_key(Path(args.key))
    except ValueError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    with _admin(args, WRITE_RETRY_DEADLINE_S) as admin:
        try:
            result = admin.enroll(args.id, args.device_class, key, args.group or "")
        except ValueError as exc:  # the key does not load, a name is too long
            raise CliError(f"INVALID_INPUT: {exc}") from None
    emit(args, dataclasses.asdict(result), _write_text("enrolled"))
    return EXIT_OK


def _csv_rows(path: Path) -> list[tuple[int, dict[str, str]]]:
    """(line number, row) of every data row; CliError (usage) for a file
    that cannot be read or lacks the columns."""
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = [c for c in CSV_COLUMNS if c not in (reader.fieldnames or ())]
            if missing:
                raise CliError(f"{path}: the header row lacks {', '.join(missing)} "
                               f"(columns: {', '.join(CSV_COLUMNS)}[,group])", EXIT_USAGE)
            rows: list[tuple[int, dict[str, str]]] = []
            for row in reader:
                if len(rows) >= MAX_CSV_ROWS:
                    raise CliError(f"{path}: more than {MAX_CSV_ROWS} rows", EXIT_USAGE)
                rows.append((reader.line_num, {k: (v or "").strip() for k, v in row.items() if k}))
            return rows
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror}", EXIT_USAGE) from None
    except (csv.Error, UnicodeDecodeError) as exc:
        raise CliError(f"{path} is not a CSV file: {exc}", EXIT_USAGE) from None


def _enroll_row(admin: DeviceAdmin, folder: Path, row: dict[str, str]) -> DeviceWrite:
    key_path = Path(row["public_key_file"])
    key = _read_key(key_path if key_path.is_absolute() else folder / key_path)
    return admin.enroll(row["device_id"], row["device_class"], key, row.get("group", ""))


def _enroll_csv(args: argparse.Namespace) -> int:
    path = Path(args.csv)
    rows = _csv_rows(path)
    results: list[dict[str, Any]] = []
    with _admin(args, WRITE_RETRY_DEADLINE_S) as admin:
        for line, row in rows:
            report: dict[str, Any] = {"line": line, "device_id": row["device_id"]}
            try:
                result = _enroll_row(admin, path.parent, row)
            except ValueError as exc:
                report.update(outcome="refused", code="INVALID_INPUT", message=str(exc))
            except Refused as exc:
                report.update(outcome="refused", code=exc.code, message=exc.message)
            else:
                report.update(outcome="already enrolled" if result.duplicate else "enrolled", index=result.index)
            results.append(report)
    refused = sum(1 for r in results if r["outcome"] == "refused")
    doc = {"rows": results, "enrolled": len(results) - refused, "refused": refused}

    def text(d: dict[str, Any]) -> str:
        lines = [f"line {r['line']}: {r['device_id'] or '(no id)'}: "
                 + (f"{r['code']}: {r['message']}" if r["outcome"] == "refused" else r["outcome"])
                 for r in d["rows"]]
        return "\n".join([*lines, f"{d['enrolled']} enrolled, {d['refused']} refused"])

    emit(args, doc, text)
    return EXIT_FAILED if refused else EXIT_OK


# ---------------------------------------------------------------- the others


def cmd_action(args: argparse.Namespace) -> int:
    try:
        check_device_id(args.device_id)
    except ValueError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    with _admin(args, WRITE_RETRY_DEADLINE_S) as admin:
        try:
            if args.action == "accept":
                result = admin.accept(args.device_id, args.group or "", args.reason)
            elif args.action == "reject":
                result = admin.reject(args.device_id, args.reason)
            else:
                result = admin.revoke(args.device_id, args.reason)
        except ValueError as exc:
            raise CliError(f"INVALID_INPUT: {exc}") from None
    past = {"accept": "accepted", "reject": "rejected", "revoke": "revoked"}[args.action]
    emit(args, {**dataclasses.asdict(result), "reason": args.reason}, _write_text(past))
    return EXIT_OK


def cmd_list(args: argparse.Namespace) -> int:
    with _admin(args, READ_RETRY_DEADLINE_S) as admin:
        devices = admin.list_devices(args.state, stale_ok=args.stale)
    emit(args, {"devices": [device_doc(d) for d in devices]}, _list_text)
    return EXIT_OK


def cmd_show(args: argparse.Namespace) -> int:
    with _admin(args, READ_RETRY_DEADLINE_S) as admin:
        device = admin.get_device(args.device_id, stale_ok=args.stale)
    emit(args, device_doc(device), _device_text)
    return EXIT_OK


def public_key_path(private_path: Path) -> Path:
    """Where keygen writes the public half: ``dev.pem`` -> ``dev.pub.pem``."""
    name = private_path.name
    stem = name[: -len(".pem")] if name.endswith(".pem") else name
    return private_path.with_name(f"{stem}.pub.pem")


def cmd_keygen(args: argparse.Namespace) -> int:
    private_path = Path(args.out)
    public_path = public_key_path(private_path)
    if not args.force:
        taken = [str(p) for p in (private_path, public_path) if p.exists()]
        if taken:
            raise CliError(f"{', '.join(taken)} exists; --force overwrites")
    key = new_device_key()
    try:
        # The private key is the device's identity: readable by its owner only.
        fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(private_pem(key))
        public_path.write_bytes(public_pem(key))
    except OSError as exc:
        raise CliError(f"cannot write {exc.filename}: {exc.strerror}") from None
    doc = {"private_key": str(private_path), "public_key": str(public_path), "algorithm": "Ed25519"}
    emit(args, doc, lambda d: f"wrote {d['private_key']} (keep it on the device) and {d['public_key']} "
                              "(enroll it: fleetsuit device enroll --key)")
    return EXIT_OK


# ---------------------------------------------------------------- registration


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    device = command_group(sub, "device", help="enroll, accept, reject, revoke and list devices; run agents")

    p = device.add_parser(
        "enroll", help="enroll a device (accepted at once), or many from a CSV file",
        description="Enroll a device with its class and public key: it is accepted at once (a pending "
                    "device is accepted with this key, class and group). With --csv, every row of FILE "
                    "(header: device_id,device_class,public_key_file[,group]); exit 1 if any row is refused.",
    )
    p.add_argument("--id", metavar="D", help="the device id (1..128 of A-Z a-z 0-9 . _ : @ -)")
    p.add_argument("--class", dest="device_class", metavar="C", help="its device class")
    p.add_argument("--key", metavar="PUB.pem", help="its public key (Ed25519 or P-256, PEM)")
    p.add_argument("--group", metavar="G", help="its group (rollouts may target groups)")
    p.add_argument("--csv", metavar="FILE", help="enroll every row of this CSV file instead")
    add_client_options(p, WRITE_RETRY_DEADLINE_S)
    p.set_defaults(func=cmd_enroll)

    p = device.add_parser("pending", help="the devices waiting to be accepted or rejected")
    add_stale(p)
    add_client_options(p, READ_RETRY_DEADLINE_S)
    p.set_defaults(func=cmd_list, state="pending")

    helps = {"accept": "accept a pending device", "reject": "reject a pending device",
             "revoke": "revoke a device: gateways refuse it from then on"}
    for action, text in helps.items():
        p = device.add_parser(action, help=text)
        p.add_argument("device_id", metavar="ID", help="the device id")
        if action == "accept":
            p.add_argument("--group", metavar="G", help="put it in this group (default: the one it asked for)")
        p.add_argument("--reason", default="", help="why (kept in the ledger)")
        add_client_options(p, WRITE_RETRY_DEADLINE_S)
        p.set_defaults(func=cmd_action, action=action)

    p = device.add_parser("list", help="the devices in the ledger")
    p.add_argument("--state", default="", choices=("", *DEVICE_STATES), metavar="STATE",
                   help=f"only devices in this state ({', '.join(DEVICE_STATES)})")
    add_stale(p)
    add_client_options(p, READ_RETRY_DEADLINE_S)
    p.set_defaults(func=cmd_list)

    p = device.add_parser("show", help="one device: enrolment, installed versions, last event")
    p.add_argument("device_id", metavar="ID", help="the device id")
    add_stale(p)
    add_client_options(p, READ_RETRY_DEADLINE_S)
    p.set_defaults(func=cmd_show)

    p = device.add_parser("keygen", help="make a new Ed25519 device key (PRIV.pem and PRIV.pub.pem)")
    p.add_argument("--out", required=True, metavar="PRIV.pem",
                   help="where to write the private key; the public one goes next to it as .pub.pem")
    p.add_argument("--force", action="store_true", help="overwrite existing files")
    add_output_options(p)
    p.set_defaults(func=cmd_keygen)

    agent_cli.register(device)
