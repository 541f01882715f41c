"""``fleetsuit release push | list | show | revoke`` and ``fleetsuit rollout
status | pause | resume | halt``: the command line over ``fleetsuit.client``.

One shape for every command (``fleetsuit.cli``): text, or one JSON document
with ``--json``, to stdout or ``-o FILE``; a failure is one line, ``CODE:
message``, on stderr and exit 1; a bad option or value is exit 2. Notes for
a person (upload skipped, retries) go to stderr unless ``--quiet``; the
upload's progress bar only when stderr is a terminal.

Times (``--start-at``, ``--end-at``) are ISO-8601 with a UTC offset
(``2030-01-01T08:00:00Z``), unix seconds, ``now``, or an offset from now
(``+10m``, ``+1h30m``; units s, m, h, d). An offset is resolved when the
command runs, so a re-run of a push with one is another release's rollout:
use absolute times where a CI job may be re-run. Durations
(``--stage-interval``) are ``90s``, ``10m``, ``1h30m`` or seconds.

``client_for``, ``add_client_options`` and ``add_stale`` are shared with
the other commands over ``fleetsuit.client`` (``device_cli.py``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import re
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fleetsuit.cli import (
    EXIT_FAILED,
    EXIT_USAGE,
    CliError,
    Progress,
    add_endpoint,
    add_output_options,
    add_quiet,
    command_group,
    emit,
)
from fleetsuit.client import FleetClient
from fleetsuit.client_errors import FleetError
from fleetsuit.release_model import (
    DEFAULT_DEVICE_CLASS,
    DEFAULT_VENDOR_DOMAIN,
    ROLLOUT_ACTIONS,
    STATES,
    ReleaseInfo,
    RolloutPolicy,
    WriteResult,
    check_content_id,
    check_release_names,
)

SERVICE = "consensus"
WRITE_RETRY_DEADLINE_S = 60.0
READ_RETRY_DEADLINE_S = 15.0
PROOF_WAIT_S = 30.0
_UNITS_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_OFFSET = re.compile(r"\+((?:\d+[smhd])+)")
_OFFSET_PART = re.compile(r"(\d+)([smhd])")
_UNIX = re.compile(r"\d+(?:\.\d+)?")
_DURATION = re.compile(r"(?:\d+[smhd])+")


# ---------------------------------------------------------------- values


def parse_time(text: str, now_s: float) -> int:
    """A time option as unix milliseconds; ValueError saying what is accepted."""
    text = text.strip()
    if text == "now":
        return round(now_s * 1000)
    if _OFFSET.fullmatch(text):
        seconds = sum(int(n) * _UNITS_S[unit] for n, unit in _OFFSET_PART.findall(text))
        return round((now_s + seconds) * 1000)
    if _UNIX.fullmatch(text):
        return round(float(text) * 1000)
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a time: give ISO-8601 with an offset "
                         "(2030-01-01T08:00:00Z), unix seconds, now, or +10m / +2h / +1d") from None
    if when.tzinfo is None:
        raise ValueError(f"{text!r} has no UTC offset: add Z or +HH:MM")
    return round(when.timestamp() * 1000)


def parse_duration(text: str) -> int:
    """A duration option as milliseconds (``90s``, ``10m``, ``1h30m``,
    ``2d``, or plain seconds); ValueError saying what is accepted."""
    text = text.strip()
    if _UNIX.fullmatch(text):
        return round(float(text) * 1000)
    if _DURATION.fullmatch(text):
        return 1000 * sum(int(n) * _UNITS_S[unit] for n, unit in _OFFSET_PART.findall(text))
    raise ValueError(f"{text!r} is not a duration: give 90s, 10m, 1h30m, 2d or seconds")


def parse_stages(text: str) -> tuple[int, ...]:
    """``1,10,50,100`` -> (1, 10, 50, 100); the rules are RolloutPolicy's."""
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ValueError(f"stages are comma-separated percentages (1,10,50,100), not {text!r}") from None


def rollout_policy(args: argparse.Namespace, now_s: float) -> RolloutPolicy:
    """The push's rollout policy from its options, checked (ValueError)."""
    start = parse_time(args.start_at, now_s) if args.start_at else 0
    end = parse_time(args.end_at, now_s) if args.end_at else 0
    stages = parse_stages(args.stages) if args.stages else ()
    interval = parse_duration(args.stage_interval) if args.stage_interval else 0
    return RolloutPolicy(
        start, end, args.experimental, stages, interval, tuple(args.group or ()), args.halt_failure_percent,
        args.halt_min_devices,
    ).validate()


def _iso(unix_ms: int) -> str:
    return datetime.fromtimestamp(unix_ms / 1000, UTC).isoformat().replace("+00:00", "Z")


# ---------------------------------------------------------------- documents


def release_doc(release: ReleaseInfo) -> dict[str, Any]:
    doc = dataclasses.asdict(release)
    doc.pop("envelope")
    doc["device_classes"] = list(release.device_classes)
    doc["rollout"]["stages"] = list(release.rollout.stages)
    doc["rollout"]["groups"] = list(release.rollout.groups)
    return doc


def _rollout_text(rollout: dict[str, Any]) -> str:
    start = _iso(rollout["start_at_unix_ms"]) if rollout["start_at_unix_ms"] else "at once"
    end = _iso(rollout["end_at_unix_ms"]) if rollout["end_at_unix_ms"] else "none"
    stages = ",".join(str(s) for s in rollout["stages"]) or "100"
    interval = f" every {rollout['stage_interval_ms'] / 1000:g}s" if rollout["stage_interval_ms"] else ""
    kind = "; experimental (devices switch back at the end)" if rollout["experimental"] else ""
    groups = f"; groups {', '.join(rollout['groups'])}" if rollout["groups"] else ""
    halt = (f"; halts at {rollout['halt_failure_percent']}% failed of at least "
            f"{max(1, rollout['halt_min_devices'])} devices" if rollout["halt_failure_percent"] else "")
    return f"start {start}; end {end}; stages {stages}%{interval}{kind}{groups}{halt}"


def _state(doc: dict[str, Any]) -> str:
    return str(doc["state"]) + (f" ({doc['state_reason']})" if doc["state_reason"] else "")


def _release_text(doc: dict[str, Any]) -> str:
    rows = [
        ("release", doc["release_id"]),
        ("state", _state(doc)),
        ("component", doc["component"]),
        ("sequence", doc["sequence_number"]),
        ("classes", ", ".join(doc["device_classes"])),
        ("vendor", doc["vendor_domain"]),
        ("payload", f"{doc['payload_cid']} ({doc['payload_size']} bytes)"),
        ("rollout", _rollout_text(doc["rollout"])),
        ("signed by", doc["signer_key_id"] or "-"),
        ("ledger", f"index {doc['index']}, block {doc['block_height']}, position {doc['position']}"),
    ]
    return "\n".join(f"{name:10} {value}" for name, value in rows)


def _list_text(doc: dict[str, Any]) -> str:
    if not doc["releases"]:
        return "no releases"
    return "\n".join(
        f"{r['release_id']:24} {_state(r):20} {', '.join(r['device_classes']):16} "
        f"{r['payload_cid'][:23]}… {r['payload_size']} bytes"
        for r in doc["releases"]
    )


def _write_doc(result: WriteResult, **extra: Any) -> dict[str, Any]:
    return {**dataclasses.asdict(result), **extra}


# ---------------------------------------------------------------- plumbing


@contextlib.contextmanager
def client_for(args: argparse.Namespace, retry_deadline_s: float) -> Iterator[FleetClient]:
    """A client for the command, notes on stderr (unless --quiet), and every
    FleetError as one ``CODE: message`` line."""
    handler: logging.Handler | None = None
    logger = logging.getLogger("fleetsuit.client")
    if not getattr(args, "quiet", False):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    deadline = args.retry_deadline if args.retry_deadline is not None else retry_deadline_s
    try:
        with FleetClient(args.endpoint, timeout_s=args.timeout, retry_deadline_s=deadline) as client:
            yield client
    except FleetError as exc:
        raise CliError(f"{exc.code}: {exc.message}", EXIT_FAILED) from None
    finally:
        if handler is not None:
            logger.removeHandler(handler)


def _read_file(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise CliError(f"cannot read {what} {path}: {exc.strerror}") from None


class _UploadProgress:
    """The upload's bar on a terminal (``fleetsuit.cli.Progress``), made
    once the size is known."""

    def __init__(self, quiet: bool) -> None:
        self._quiet = quiet
        self._bar: Progress | None = None

    def __call__(self, done: int, total: int) -> None:
        if self._bar is None:
            self._bar = Progress(total, "upload", quiet=self._quiet)
        self._bar.update(done)
        if done >= total:  # end the bar's line before the next note
            self.close()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


# ---------------------------------------------------------------- commands


def _check_push(args: argparse.Namespace) -> RolloutPolicy:
    """Usage errors of ``release push`` (exit 2), before anything is read or sent."""
    try:
        check_release_names(args.component, args.sequence, args.device_class, args.vendor_domain)
        policy = rollout_policy(args, time.time())
        if (args.key is None) == (args.envelope is None):
            raise ValueError("give --key KEY.pem to sign, or --envelope FILE signed elsewhere")
        if args.payload_cid is not None or args.payload_size is not None:
            if args.payload is not None:
                raise ValueError("give PAYLOAD or --payload-cid with --payload-size, not both")
            if args.payload_cid is None or args.payload_size is None:
                raise ValueError("--payload-cid and --payload-size go together")
            check_content_id(args.payload_cid)
            if args.payload_size < 0:
                raise ValueError("--payload-size must not be negative")
        elif args.payload is None:
            raise ValueError("give PAYLOAD, or --payload-cid and --payload-size of a payload in the dht")
    except ValueError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    return policy


def cmd_push(args: argparse.Namespace) -> int:
    policy = _check_push(args)
    key_pem = _read_file(args.key, "key") if args.key else None
    envelope = _read_file(args.envelope, "envelope") if args.envelope else None
    payload = Path(args.payload) if args.payload is not None else None
    if payload is not None and not payload.is_file():
        raise CliError(f"cannot read payload {payload}: not a file")
    progress = _UploadProgress(args.quiet)
    proof: bytes | None = None
    with client_for(args, WRITE_RETRY_DEADLINE_S) as client:
        try:
            result = client.push_release(
                payload, component=args.component, sequence=args.sequence, key_pem=key_pem,
                envelope=envelope, device_class=args.device_class, vendor_domain=args.vendor_domain,
                start_at=policy.start_at_unix_ms / 1000 if policy.start_at_unix_ms else None,
                end_at=policy.end_at_unix_ms / 1000 if policy.end_at_unix_ms else None,
                experimental=policy.experimental, stages=policy.stages,
                stage_interval_s=policy.stage_interval_ms / 1000, groups=policy.groups,
                halt_failure_percent=policy.halt_failure_percent, halt_min_devices=policy.halt_min_devices,
                payload_cid=args.payload_cid, payload_size=args.payload_size, progress=progress,
            )
        except ValueError as exc:  # a key or envelope file that cannot make this release
            raise CliError(f"INVALID_INPUT: {exc}") from None
        except OSError as exc:
            raise CliError(f"cannot read payload {payload}: {exc.strerror}") from None
        finally:
            progress.close()
        if args.proof:
            proof = client.proof(result.block_height, result.position, wait_certified_s=args.proof_wait)
    if proof is not None:
        try:
            Path(args.proof).write_bytes(proof)
        except OSError as exc:
            raise CliError(f"cannot write {args.proof}: {exc.strerror}") from None
    doc = {**dataclasses.asdict(result), "proof": args.proof}

    def text(d: dict[str, Any]) -> str:
        head = (f"{d['release_id']} already published" if d["duplicate"]
                else f"published {d['release_id']}")
        line = f"{head}: index {d['index']}, block {d['block_height']}, position {d['position']}"
        return line + (f"\nproof written to {d['proof']}" if d["proof"] else "")

    emit(args, doc, text)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    with client_for(args, READ_RETRY_DEADLINE_S) as client:
        releases = client.list_releases(component=args.component, state=args.state, stale_ok=args.stale)
    emit(args, {"releases": [release_doc(r) for r in releases]}, _list_text)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    with client_for(args, READ_RETRY_DEADLINE_S) as client:
        release = client.get_release(args.release_id, stale_ok=args.stale)
    emit(args, release_doc(release), _release_text)
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    with client_for(args, WRITE_RETRY_DEADLINE_S) as client:
        result = client.revoke(args.release_id, args.reason)
    doc = _write_doc(result, action="revoke", reason=args.reason)
    emit(args, doc, lambda d: f"revoked {d['release_id']}: index {d['index']}, block {d['block_height']}")
    return 0


def cmd_rollout_status(args: argparse.Namespace) -> int:
    with client_for(args, READ_RETRY_DEADLINE_S) as client:
        release = client.get_release(args.release_id, stale_ok=args.stale)
    doc = {key: value for key, value in release_doc(release).items()
           if key in ("release_id", "state", "state_reason", "rollout")}
    emit(args, doc, lambda d: f"{d['release_id']}: {_state(d)}\n{_rollout_text(d['rollout'])}")
    return 0


def cmd_rollout_action(args: argparse.Namespace) -> int:
    with client_for(args, WRITE_RETRY_DEADLINE_S) as client:
        result = client.rollout(args.release_id, args.action, args.reason)
    doc = _write_doc(result, action=args.action, reason=args.reason)
    past = {"pause": "paused", "resume": "resumed", "halt": "halted"}[args.action]
    emit(args, doc, lambda d: f"{past} {d['release_id']}: index {d['index']}, block {d['block_height']}")
    return 0


# ---------------------------------------------------------------- registration


def add_client_options(p: argparse.ArgumentParser, retry_deadline_s: float) -> None:
    """--endpoint, --timeout, --retry-deadline, --json, -o and --quiet."""
    add_endpoint(p, SERVICE)
    p.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS",
                   help="how long one call may take (default: 10)")
    p.add_argument("--retry-deadline", type=float, default=None, metavar="SECONDS",
                   help="keep retrying (no leader, node down, outcome unknown) for this long, "
                        f"with the same idempotency key (default: {retry_deadline_s:g})")
    add_output_options(p)
    add_quiet(p)


def add_stale(p: argparse.ArgumentParser) -> None:
    p.add_argument("--stale", action="store_true",
                   help="answer from the node's applied state at once (not linearizable)")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    release = command_group(sub, "release", help="publish, list, show and revoke releases")

    p = release.add_parser(
        "push", help="upload a payload, sign its SUIT envelope and publish the release",
        description=(
            "Upload PAYLOAD to the node's dht (skipped when it is there), build and sign the "
            "SUIT envelope with KEY (it never leaves this machine), and publish the release "
            "<component>@<sequence>. A re-run of the same push prints the first result "
            "(\"already published\"). Times: ISO-8601 with an offset, unix seconds, now, or "
            "+10m / +2h / +1d from now."
        ),
    )
    p.add_argument("payload", nargs="?", metavar="PAYLOAD", help="the firmware image file")
    p.add_argument("--component", required=True, help="the SUIT component (its id is this name's UTF-8 bytes)")
    p.add_argument("--sequence", type=int, required=True, metavar="N",
                   help="the manifest sequence number: greater than the component's current one")
    p.add_argument("--key", metavar="KEY.pem", help="the signing key (Ed25519 or P-256, PEM)")
    p.add_argument("--envelope", metavar="ENV",
                   help="push this signed envelope as is instead of signing one (no --key)")
    p.add_argument("--device-class", default=DEFAULT_DEVICE_CLASS, metavar="D",
                   help=f"the device class it is for (default: {DEFAULT_DEVICE_CLASS})")
    p.add_argument("--vendor-domain", default=DEFAULT_VENDOR_DOMAIN, metavar="V",
                   help=f"the vendor's domain name (default: {DEFAULT_VENDOR_DOMAIN})")
    p.add_argument("--start-at", metavar="T", help="when the rollout starts (default: at once)")
    p.add_argument("--end-at", metavar="T", help="when it ends (default: never; required with --experimental)")
    p.add_argument("--experimental", action="store_true",
                   help="devices switch back to the previous release at --end-at")
    p.add_argument("--stages", metavar="P,P,...",
                   help="cumulative percentages of the fleet, ascending, ending at 100 (e.g. 1,10,50,100)")
    p.add_argument("--stage-interval", metavar="DURATION",
                   help="time between stage openings: 90s, 10m, 1h (default: every stage opens at the start)")
    p.add_argument("--group", action="append", metavar="G",
                   help="a device group the release targets (repeatable; default: every group)")
    p.add_argument("--halt-failure-percent", type=int, default=0, metavar="P",
                   help="the ledger halts the rollout when P%% of the devices reporting failed (default: 0, never)")
    p.add_argument("--halt-min-devices", type=int, default=0, metavar="N",
                   help="only once at least N devices reported an outcome (default: 0, from the first)")
    p.add_argument("--payload-cid", metavar="CID",
                   help="a payload already in the dht (sha256:<hex>), instead of PAYLOAD")
    p.add_argument("--payload-size", type=int, metavar="N", help="its size in bytes (with --payload-cid)")
    p.add_argument("--proof", metavar="FILE",
                   help="write the entry's proof, once its block is certified (for ledger verify-proof)")
    p.add_argument("--proof-wait", type=float, default=PROOF_WAIT_S, metavar="SECONDS",
                   help=f"how long to wait for the block's certificate (default: {PROOF_WAIT_S:g})")
    add_client_options(p, WRITE_RETRY_DEADLINE_S)
    p.set_defaults(func=cmd_push)

    p = release.add_parser("list", help="the releases, newest state of each")
    p.add_argument("--component", default="", help="only this component's")
    p.add_argument("--state", default="", choices=("", *STATES), metavar="STATE",
                   help=f"only releases in this state ({', '.join(STATES)})")
    add_stale(p)
    add_client_options(p, READ_RETRY_DEADLINE_S)
    p.set_defaults(func=cmd_list)

    p = release.add_parser("show", help="one release")
    p.add_argument("release_id", metavar="ID", help="the release id (component@sequence)")
    add_stale(p)
    add_client_options(p, READ_RETRY_DEADLINE_S)
    p.set_defaults(func=cmd_show)

    p = release.add_parser("revoke", help="revoke a release: no device is offered it any more")
    p.add_argument("release_id", metavar="ID", help="the release id (component@sequence)")
    p.add_argument("--reason", required=True, help="why (kept in the ledger)")
    add_client_options(p, WRITE_RETRY_DEADLINE_S)
    p.set_defaults(func=cmd_revoke)

    rollout = command_group(sub, "rollout", help="a release's rollout: status, pause, resume, halt")
    p = rollout.add_parser("status", help="a release's state and rollout policy")
    p.add_argument("release_id", metavar="ID", help="the release id (component@sequence)")
    add_stale(p)
    add_client_options(p, READ_RETRY_DEADLINE_S)
    p.set_defaults(func=cmd_rollout_status)

    helps = {"pause": "stop offering the release to more devices, for now",
             "resume": "continue a paused rollout",
             "halt": "stop the rollout for good"}
    for action in ROLLOUT_ACTIONS:
        p = rollout.add_parser(action, help=helps[action])
        p.add_argument("release_id", metavar="ID", help="the release id (component@sequence)")
        p.add_argument("--reason", default="", help="why (kept in the ledger)")
        add_client_options(p, WRITE_RETRY_DEADLINE_S)
        p.set_defaults(func=cmd_rollout_action, action=action)
