"""``fleetsuit device``: the operator's commands end to end against a real
one-voter consensus node in this process (its Ledger and Devices APIs):
enrol one device or a CSV of them, the pending ones accepted or rejected,
revocation, list and show (text and JSON), keygen, and every failure as one
``CODE: message`` line with exit 1 (usage errors exit 2 before anything is
sent). The command runs in a worker thread; the node on the test's loop."""

from __future__ import annotations

import argparse
import asyncio
import json
import stat
from pathlib import Path
from typing import Any

import pytest

from fleetsuit.cli import EXIT_FAILED, EXIT_USAGE
from fleetsuit.device_auth import load_private_key, load_public_key, new_device_key, public_pem
from launcher.device_cli import public_key_path
from launcher.main import build_parser, main
from tests.consensus.test_devices_api import OneNode, enrol, one_node

COMMANDS = ["enroll", "pending", "accept", "reject", "revoke", "list", "show"]


def _subparser(*path: str) -> argparse.ArgumentParser:
    parser = build_parser()
    for name in path:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[name]
    return parser


@pytest.mark.parametrize("command", [*COMMANDS, "keygen"])
def test_every_option_has_help_and_every_command_prints_json(command: str) -> None:
    parser = _subparser("device", command)
    for action in parser._actions:
        assert action.help, f"fleetsuit device {command}: {action.option_strings or action.dest} has no help"
    options = {s for a in parser._actions for s in a.option_strings}
    assert {"--json", "-o", "--output"} <= options
    if command != "keygen":
        assert {"--endpoint", "--retry-deadline", "--timeout"} <= options


@pytest.mark.parametrize(("argv", "words"), [
    (["enroll", "--id", "d1", "--class", "board"], "--key PUB.pem"),
    (["enroll", "--csv", "f.csv", "--id", "d1"], "not both"),
    (["enroll", "--id", "bad id", "--class", "board", "--key", "k.pem"], "a device id is"),
    (["accept", "bad/id"], "a device id is"),
    (["list", "--state", "asleep"], "invalid choice"),
])
def test_usage_errors_exit_2_before_anything_is_sent(
    argv: list[str], words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["device", *argv, "--endpoint", "127.0.0.1:1"]) == EXIT_USAGE
    assert words in capsys.readouterr().err


def test_keygen_writes_a_private_key_for_the_owner_and_its_public_half(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "dev1.pem"
    assert main(["device", "keygen", "--out", str(out), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    public = public_key_path(out)
    assert doc == {"private_key": str(out), "public_key": str(public), "algorithm": "Ed25519"}
    assert public.name == "dev1.pub.pem" and stat.S_IMODE(out.stat().st_mode) == 0o600
    assert public_pem(load_private_key(out.read_bytes())) == public.read_bytes()
    load_public_key(public.read_bytes())
    before = out.read_bytes()
    assert main(["device", "keygen", "--out", str(out)]) == EXIT_FAILED
    assert "exists; --force overwrites" in capsys.readouterr().err and out.read_bytes() == before
    assert main(["device", "keygen", "--out", str(out), "--force"]) == 0
    assert out.read_bytes() != before


def _key(tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.pub.pem"
    path.write_bytes(public_pem(new_device_key()))
    return path


async def _run(argv: list[str], n: OneNode) -> int:
    code: int = await asyncio.to_thread(
        main, ["device", *argv, "--endpoint", n.address, "--retry-deadline", "5", "--quiet"])
    return code


async def _json(argv: list[str], n: OneNode, capsys: pytest.CaptureFixture[str]) -> Any:
    code = await _run([*argv, "--json"], n)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out)


@pytest.mark.asyncio
async def test_enroll_show_list_and_a_rerun_says_already_enrolled(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = _key(tmp_path, "d1")
    async with one_node(tmp_path / "node") as n:
        enroll = ["enroll", "--id", "d1", "--class", "board", "--key", str(key), "--group", "canary"]
        assert await _run(enroll, n) == 0
        assert capsys.readouterr().out.startswith("enrolled d1: index ")
        assert await _run(enroll, n) == 0
        assert capsys.readouterr().out == "d1 was enrolled already\n"
        shown = await _json(["show", "d1"], n, capsys)
        assert (shown["state"], shown["device_class"], shown["group"], shown["public_key_pem"]) == (
            "accepted", "board", "canary", key.read_text())
        assert await _run(["show", "d1"], n) == 0
        text = capsys.readouterr().out
        assert "state      accepted" in text and "installed  -" in text
        listed = await _json(["list"], n, capsys)
        assert [d["device_id"] for d in listed["devices"]] == ["d1"]
        # The same id with another key: refused, one line, exit 1.
        other = _key(tmp_path, "other")
        assert await _run(["enroll", "--id", "d1", "--class", "board", "--key", str(other)], n) == EXIT_FAILED
        err = capsys.readouterr().err
        assert err.startswith("fleetsuit: DEVICE_EXISTS: device d1 exists (accepted)") and len(err.splitlines()) == 1
        assert await _run(["show", "nobody"], n) == EXIT_FAILED
        assert capsys.readouterr().err == "fleetsuit: DEVICE_NOT_FOUND: no device 'nobody' in the ledger\n"
        bad = tmp_path / "bad.pem"
        bad.write_text("not a key")
        assert await _run(["enroll", "--id", "d2", "--class", "board", "--key", str(bad)], n) == EXIT_FAILED
        assert capsys.readouterr().err.startswith("fleetsuit: INVALID_INPUT: ")


@pytest.mark.asyncio
async def test_pending_devices_are_accepted_rejected_and_revoked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with one_node(tmp_path / "node") as n:
        for device_id in ("p1", "p2"):  # as a gateway records an unknown device that registered
            await n.submit(enrol(device_id, "request", 1, group="asked"))
        pending = await _json(["pending"], n, capsys)
        assert [d["device_id"] for d in pending["devices"]] == ["p1", "p2"]
        accepted = await _json(["accept", "p1", "--group", "field"], n, capsys)
        assert (accepted["action"], accepted["client_id"], accepted["duplicate"]) == (
            "accept", "device-admin/p1", False)
        assert await _run(["reject", "p2", "--reason", "not ours"], n) == 0
        assert capsys.readouterr().out.startswith("rejected p2: index ")
        assert await _run(["accept", "p2"], n) == EXIT_FAILED
        assert capsys.readouterr().err == "fleetsuit: DEVICE_STATE: cannot accept device p2: it is rejected\n"
        assert await _run(["revoke", "p1", "--reason", "stolen"], n) == 0
        capsys.readouterr()
        listed = await _json(["list", "--state", "revoked"], n, capsys)
        [p1] = listed["devices"]
        assert (p1["device_id"], p1["group"], p1["state_reason"]) == ("p1", "field", "stolen")
        assert (await _json(["pending"], n, capsys))["devices"] == []
        assert await _run(["revoke", "ghost"], n) == EXIT_FAILED
        assert capsys.readouterr().err.startswith("fleetsuit: DEVICE_UNKNOWN: ")


@pytest.mark.asyncio
async def test_enroll_from_csv_reports_every_row_and_exits_1_if_any_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = tmp_path / "keys"
    keys.mkdir()
    for name in ("a", "b", "c"):
        _key(keys, name)
    (keys / "bad.pem").write_text("nope")
    sheet = tmp_path / "fleet.csv"
    sheet.write_text(
        "device_id,device_class,public_key_file,group\n"
        "pump-a,pump,keys/a.pub.pem,canary\n"
        f"pump-b,pump,{keys / 'b.pub.pem'},\n"
        "pump-a,pump,keys/c.pub.pem,\n"  # the id again, another key
        "pump c,pump,keys/c.pub.pem,\n"  # not a device id
        "pump-d,pump,keys/bad.pem,\n"
        "pump-e,pump,keys/missing.pem,\n"
    )
    async with one_node(tmp_path / "node") as n:
        assert await _run(["enroll", "--csv", str(sheet), "--json"], n) == EXIT_FAILED
        doc = json.loads(capsys.readouterr().out)
        assert (doc["enrolled"], doc["refused"]) == (2, 4)
        outcomes = [(r["line"], r["device_id"], r.get("code", r["outcome"])) for r in doc["rows"]]
        assert outcomes == [(2, "pump-a", "enrolled"), (3, "pump-b", "enrolled"), (4, "pump-a", "DEVICE_EXISTS"),
                            (5, "pump c", "INVALID_INPUT"), (6, "pump-d", "INVALID_INPUT"),
                            (7, "pump-e", "INVALID_INPUT")]
        assert "cannot read key" in doc["rows"][5]["message"]
        devices = {d.device_id: d for d in n.node.machine.devices.devices()}
        assert sorted(devices) == ["pump-a", "pump-b"] and devices["pump-a"].group == "canary"
        # A re-run of the good rows alone: every one already enrolled, exit 0.
        good = tmp_path / "good.csv"
        good.write_text("\n".join(sheet.read_text().splitlines()[:3]) + "\n")
        assert await _run(["enroll", "--csv", str(good)], n) == 0
        assert capsys.readouterr().out == (
            "line 2: pump-a: already enrolled\nline 3: pump-b: already enrolled\n2 enrolled, 0 refused\n")
    missing = tmp_path / "cols.csv"
    missing.write_text("id,class\nd1,board\n")
    assert main(["device", "enroll", "--csv", str(missing), "--endpoint", "127.0.0.1:1"]) == EXIT_USAGE
    assert "lacks device_id, device_class, public_key_file" in capsys.readouterr().err
