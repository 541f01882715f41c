"""``fleetsuit release`` and ``fleetsuit rollout``: time and stage values,
usage errors (exit 2, one line, before anything is read or sent), the one
shape of every command (help on every option, ``--json`` and ``-o``), the
JSON documents, and a failure as one ``CODE: message`` line with exit 1.
Against the in-process double of a node (fakes.py)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from fleetsuit.cli import EXIT_FAILED, EXIT_USAGE
from fleetsuit.v1 import consensus_pb2 as pb
from launcher.main import build_parser, main
from launcher.release_cli import parse_duration, parse_stages, parse_time
from suit import keys

from .fakes import Failure, FakeNode, fake_node

NOW_S = 1_800_000_000.0
COMMANDS = [("release", "push"), ("release", "list"), ("release", "show"), ("release", "revoke"),
            ("rollout", "status"), ("rollout", "pause"), ("rollout", "resume"), ("rollout", "halt")]


@pytest.mark.parametrize(("text", "unix_ms"), [
    ("2027-01-15T08:00:00Z", 1_800_000_000_000),
    ("2027-01-15T10:00:00+02:00", 1_800_000_000_000),
    ("1799481600", 1_799_481_600_000),
    ("1799481600.5", 1_799_481_600_500),
    ("now", 1_800_000_000_000),
    ("+10m", 1_800_000_600_000),
    ("+1h30m", 1_800_005_400_000),
    ("+2d", 1_800_172_800_000),
    ("+45s", 1_800_000_045_000),
])
def test_times_are_iso_unix_seconds_or_offsets_from_now(text: str, unix_ms: int) -> None:
    assert parse_time(text, NOW_S) == unix_ms


@pytest.mark.parametrize(("text", "words"), [
    ("2027-01-15T08:00:00", "no UTC offset"),
    ("2027-01-15", "no UTC offset"),
    ("tomorrow", "not a time"),
    ("+10", "not a time"),
    ("+10x", "not a time"),
    ("-5m", "not a time"),
])
def test_a_time_that_is_not_one_says_what_is_accepted(text: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        parse_time(text, NOW_S)


def test_stages_are_comma_separated_percentages() -> None:
    assert parse_stages("1,10,50,100") == (1, 10, 50, 100)
    assert parse_stages("100") == (100,)
    with pytest.raises(ValueError, match="comma-separated"):
        parse_stages("1;100")


@pytest.mark.parametrize(("text", "ms"), [
    ("90s", 90_000), ("10m", 600_000), ("1h", 3_600_000), ("1h30m", 5_400_000), ("2d", 172_800_000),
    ("45", 45_000), ("0.5", 500),
])
def test_durations_take_units_or_seconds(text: str, ms: int) -> None:
    assert parse_duration(text) == ms


@pytest.mark.parametrize("text", ["", "10x", "m10", "-5s", "1.5m", "ten minutes"])
def test_a_duration_that_is_not_one_says_what_is_accepted(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


def _subparser(path: tuple[str, ...]) -> argparse.ArgumentParser:
    parser = build_parser()
    for name in path:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[name]
    return parser


@pytest.mark.parametrize("path", COMMANDS)
def test_every_option_has_help_and_every_command_has_json_and_output(path: tuple[str, ...]) -> None:
    parser = _subparser(path)
    for action in parser._actions:
        assert action.help, f"fleetsuit {' '.join(path)}: {action.option_strings or action.dest} has no help"
    options = {s for a in parser._actions for s in a.option_strings}
    assert {"--json", "-o", "--output", "--endpoint", "--retry-deadline"} <= options


@pytest.fixture
def key(tmp_path: Path) -> Path:
    path = tmp_path / "ci.pem"
    path.write_bytes(keys.private_pem(keys.generate(keys.KeyAlgorithm.ED25519)))
    return path


@pytest.fixture
def payload(tmp_path: Path) -> Path:
    path = tmp_path / "fw.bin"
    path.write_bytes(b"firmware" * 1000)
    return path


@pytest.mark.parametrize(("extra", "words"), [
    (["--experimental"], "needs an end time"),
    (["--start-at", "+2h", "--end-at", "+1h"], "after start_at"),
    (["--stages", "10,50"], "end at 100"),
    (["--stages", "50,10,100"], "ascending"),
    (["--stages", "ten"], "comma-separated"),
    (["--start-at", "2030-01-01T00:00:00"], "no UTC offset"),
    (["--envelope", "env.cbor"], "--key KEY.pem to sign, or --envelope"),
    (["--payload-cid", "sha256:" + "0" * 64, "--payload-size", "3"], "not both"),
    (["--sequence", "0"], "sequence must be"),
    (["--stage-interval", "soon"], "not a duration"),
    (["--halt-failure-percent", "101"], "halt_failure_percent"),
    (["--halt-min-devices", "-1"], "halt_min_devices"),
    (["--group", ""], "groups are"),
    (["--group", "g" * 129], "groups are"),
])
def test_usage_errors_exit_2_with_one_line_before_anything_is_sent(
    extra: list[str], words: str, key: Path, payload: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["release", "push", str(payload), "--component", "ota", "--sequence", "1", "--key", str(key),
            "--endpoint", "127.0.0.1:1", *extra]
    assert main(argv) == EXIT_USAGE
    err = capsys.readouterr().err
    assert words in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("argv", [
    ["release", "push", "--component", "ota", "--sequence", "1", "--key", "k.pem", "--endpoint", "e"],
    ["release", "push", "--component", "ota", "--sequence", "1", "--key", "k.pem", "--endpoint", "e",
     "--payload-cid", "sha256:" + "0" * 64],
    ["release", "push", "--component", "ota", "--sequence", "1", "--key", "k.pem", "--endpoint", "e",
     "--payload-cid", "sha256:abc", "--payload-size", "1"],
    ["release", "push", "fw", "--component", "ota", "--sequence", "x", "--key", "k", "--endpoint", "e"],
    ["release", "list", "--state", "sleeping", "--endpoint", "e"],
    ["rollout", "stop", "ota@1", "--endpoint", "e"],
    ["release", "revoke", "ota@1", "--endpoint", "e"],  # --reason is required
])
def test_other_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == EXIT_USAGE
    assert capsys.readouterr().err


@pytest.fixture
def node() -> Iterator[FakeNode]:
    with fake_node() as served:
        yield served


def _json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> Any:
    assert main(argv) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def test_push_prints_the_release_and_a_re_run_says_already_published(
    node: FakeNode, key: Path, payload: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    node.certified_height = 10
    proof = tmp_path / "ota@1.proof"
    argv = ["release", "push", str(payload), "--component", "ota", "--sequence", "1", "--key", str(key),
            "--endpoint", node.address, "--stages", "1,10,100", "--start-at", "2030-01-01T00:00:00Z"]
    doc = _json(capsys, [*argv, "--json", "--proof", str(proof)])
    assert set(doc) == {"release_id", "index", "block_height", "position", "duplicate", "payload_cid",
                        "payload_size", "uploaded", "proof"}
    assert doc["release_id"] == "ota@1" and doc["duplicate"] is False and doc["uploaded"] is True
    assert doc["proof"] == str(proof) and pb.EntryProof.FromString(proof.read_bytes()).height == doc["block_height"]
    rollout = pb.LedgerEntry.FromString(node.submitted[0]).release_published.rollout
    assert list(rollout.stages) == [1, 10, 100] and rollout.start_at_unix_ms == 1_893_456_000_000
    assert (rollout.stage_interval_ms, list(rollout.groups), rollout.halt_failure_percent) == (0, [], 0)

    assert main([*argv, "--quiet"]) == 0
    captured = capsys.readouterr()
    assert captured.out == (f"ota@1 already published: index {doc['index']}, block {doc['block_height']}, "
                            f"position {doc['position']}\n")
    assert captured.err == ""


def test_push_notes_go_to_stderr_as_plain_lines_off_a_terminal(
    node: FakeNode, key: Path, payload: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["release", "push", str(payload), "--component", "ota", "--sequence", "1", "--key", str(key),
                 "--endpoint", node.address]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("published ota@1: index ")
    assert "uploading 8000 bytes" in captured.err and "\r" not in captured.err


def test_reads_and_rollout_actions_print_one_json_document(
    node: FakeNode, key: Path, payload: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ep = ["--endpoint", node.address, "--json", "--quiet"]
    _json(capsys, ["release", "push", str(payload), "--component", "ota", "--sequence", "3",
                   "--key", str(key), *ep])
    listed = _json(capsys, ["release", "list", "--component", "ota", *ep])
    (release,) = listed["releases"]
    assert set(release) == {
        "release_id", "component", "sequence_number", "device_classes", "vendor_domain", "payload_cid",
        "payload_size", "rollout", "state", "state_reason", "index", "block_height", "position",
        "signer_key_id"}
    assert release["rollout"] == {"start_at_unix_ms": 0, "end_at_unix_ms": 0, "experimental": False,
                                  "stages": [], "stage_interval_ms": 0, "groups": [], "halt_failure_percent": 0,
                                  "halt_min_devices": 0}
    assert _json(capsys, ["release", "show", "ota@3", *ep]) == release
    status = _json(capsys, ["rollout", "status", "ota@3", *ep])
    assert status == {"release_id": "ota@3", "state": "active", "state_reason": "", "rollout": release["rollout"]}
    paused = _json(capsys, ["rollout", "pause", "ota@3", "--reason", "reboots", *ep])
    assert paused["action"] == "pause" and paused["client_id"] == "rollout/ota@3" and paused["reason"] == "reboots"
    revoked = _json(capsys, ["release", "revoke", "ota@3", "--reason", "bad", *ep])
    assert revoked["action"] == "revoke" and revoked["release_id"] == "ota@3"
    assert main(["release", "show", "ota@3", "--endpoint", node.address]) == 0
    assert "state      active" in capsys.readouterr().out


def test_a_refusal_is_one_line_with_its_code_and_exit_1(
    node: FakeNode, key: Path, payload: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    node.refuse_with = Failure(grpc.StatusCode.FAILED_PRECONDITION, "STALE_SEQUENCE", "ota is at 9")
    argv = ["release", "push", str(payload), "--component", "ota", "--sequence", "2", "--key", str(key),
            "--endpoint", node.address, "--quiet"]
    assert main(argv) == EXIT_FAILED
    captured = capsys.readouterr()
    assert captured.err == "fleetsuit: STALE_SEQUENCE: ota is at 9\n" and captured.out == ""
    assert main(["release", "show", "nope@1", "--endpoint", node.address, "--quiet"]) == EXIT_FAILED
    assert capsys.readouterr().err == "fleetsuit: RELEASE_NOT_FOUND: no release nope@1\n"


def test_a_key_file_that_is_not_a_key_is_a_failure_line(
    node: FakeNode, payload: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_text("not a key")
    argv = ["release", "push", str(payload), "--component", "ota", "--sequence", "2",
            "--endpoint", node.address, "--quiet"]
    assert main([*argv, "--key", str(bad)]) == EXIT_FAILED
    err = capsys.readouterr().err
    assert err.startswith("fleetsuit: INVALID_INPUT: ") and len(err.splitlines()) == 1
    assert main([*argv, "--key", str(tmp_path / "missing.pem")]) == EXIT_FAILED
    assert "cannot read key" in capsys.readouterr().err
    assert not node.submitted


def test_push_carries_the_stage_interval_groups_and_halt_threshold(
    node: FakeNode, key: Path, payload: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["release", "push", str(payload), "--component", "ota", "--sequence", "4", "--key", str(key),
            "--endpoint", node.address, "--quiet", "--stages", "10,50,100", "--stage-interval", "10m",
            "--group", "canary", "--group", "lab", "--halt-failure-percent", "20", "--halt-min-devices", "50"]
    # Stages opening at an interval count from a start time, which must be given.
    assert main(argv) == 2
    assert "start_at: stages opening at an interval need a start time" in capsys.readouterr().err
    argv += ["--start-at", "2030-01-01T00:00:00+00:00"]
    assert main(argv) == 0, capsys.readouterr().err
    rollout = pb.LedgerEntry.FromString(node.submitted[0]).release_published.rollout
    assert (rollout.stage_interval_ms, list(rollout.groups), rollout.halt_failure_percent,
            rollout.halt_min_devices) == (600_000, ["canary", "lab"], 20, 50)
    capsys.readouterr()
    assert main(["rollout", "status", "ota@4", "--endpoint", node.address]) == 0
    out = capsys.readouterr().out
    assert "every 600s" in out and "groups canary, lab" in out and "halts at 20% failed of at least 50" in out
    # The same push again is the same release (the new fields compared too).
    assert main(argv) == 0
    assert "already published" in capsys.readouterr().out
