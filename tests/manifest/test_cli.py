"""``fleetsuit manifest`` end to end, as a user runs it (subprocesses)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from services.manifest import cli as manifest_cli

from .conftest import PAYLOAD, VECTORS, description

REPO = Path(__file__).resolve().parents[2]


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "launcher", "manifest", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )


def test_verify_spec_vectors() -> None:
    key = VECTORS / "spec_example_key_public.pem"
    ok = run("verify", "--key", key, VECTORS / "example2-signed-severed.cbor")
    assert ok.returncode == 0, ok.stderr
    bad = run("verify", "--key", key, VECTORS / "example0-unsigned.cbor")
    assert bad.returncode != 0
    assert "NO_AUTHENTICATION" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1 and "Traceback" not in bad.stderr


def test_keygen_create_sign_verify_show(tmp_path: Path) -> None:
    (tmp_path / "fw.bin").write_bytes(PAYLOAD)
    desc = description(component={"file": "fw.bin"}, severable=["text"])
    (tmp_path / "release.json").write_text(json.dumps(desc))
    assert run("keygen", "--alg", "ed25519", "-o", tmp_path / "k.pem").returncode == 0
    assert run("keygen", "--alg", "es256", "-o", tmp_path / "e.pem").returncode == 0
    created = run(
        "create", tmp_path / "release.json", "-o", tmp_path / "r.suit", "--key", tmp_path / "k.pem"
    )
    assert created.returncode == 0, created.stderr
    assert run("verify", "--key", tmp_path / "k.pem.pub", tmp_path / "r.suit").returncode == 0
    wrong = run("verify", "--key", tmp_path / "e.pem.pub", tmp_path / "r.suit")
    assert wrong.returncode != 0 and "UNTRUSTED_SIGNER" in wrong.stderr
    both = run("sign", tmp_path / "r.suit", "--key", tmp_path / "e.pem", "-o", tmp_path / "r2.suit")
    assert both.returncode == 0, both.stderr
    assert run("verify", "--key", tmp_path / "e.pem.pub", tmp_path / "r2.suit").returncode == 0
    shown = run("show", "--format", "json", tmp_path / "r2.suit")
    view = json.loads(shown.stdout)
    assert view["manifest"]["manifest-sequence-number"] == 7
    assert len(view["authentication"]["blocks"]) == 2
    diag = run("show", "--format", "diag", tmp_path / "r2.suit")
    assert diag.stdout.startswith("107({") and "<<" in diag.stdout


def test_verify_garbage_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "junk").write_bytes(b"\x9b\xff\xff\xff\xff\xff\xff\xff\xff")
    out = run("verify", "--key", VECTORS / "spec_example_key_public.pem", tmp_path / "junk")
    assert out.returncode == 1
    assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr
    missing = run("verify", "--key", tmp_path / "nokey.pem", tmp_path / "junk")
    assert missing.returncode == 1 and "Traceback" not in missing.stderr


def _one_line_error(out: subprocess.CompletedProcess[str], code: int = 1) -> str:
    assert out.returncode == code, (out.returncode, out.stderr)
    assert "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    return lines[0]


def test_keygen_refuses_to_overwrite_a_key_unless_forced(tmp_path: Path) -> None:
    key, public = tmp_path / "k.pem", tmp_path / "k.pem.pub"
    assert run("keygen", "-o", key).returncode == 0
    assert key.stat().st_mode & 0o777 == 0o600
    before = key.read_bytes(), public.read_bytes()
    line = _one_line_error(run("keygen", "--alg", "ed25519", "-o", key))
    assert str(key) in line and "--force" in line
    assert (key.read_bytes(), public.read_bytes()) == before
    # Only the public file in the way: nothing is written either.
    other = tmp_path / "other.pem"
    line = _one_line_error(run("keygen", "-o", other, "--public-out", public))
    assert str(public) in line and not other.exists()
    assert public.read_bytes() == before[1]
    forced = run("keygen", "--alg", "ed25519", "-o", key, "--force")
    assert forced.returncode == 0, forced.stderr
    assert key.read_bytes() != before[0] and public.read_bytes() != before[1]
    assert key.stat().st_mode & 0o777 == 0o600


def test_every_command_that_prints_a_result_prints_json(tmp_path: Path) -> None:
    (tmp_path / "release.json").write_text(json.dumps(description()))
    keygen = json.loads(run("keygen", "-o", tmp_path / "k.pem", "--json").stdout)
    assert keygen == {
        "algorithm": "es256",
        "private_key": str(tmp_path / "k.pem"),
        "public_key": str(tmp_path / "k.pem.pub"),
    }
    created = json.loads(
        run("create", tmp_path / "release.json", "-o", tmp_path / "r.suit", "--json").stdout
    )
    assert created["envelope"] == str(tmp_path / "r.suit") and created["signed"] is False
    assert created["bytes"] == (tmp_path / "r.suit").stat().st_size
    signed_doc = json.loads(
        run(
            "sign",
            tmp_path / "r.suit",
            "--key",
            tmp_path / "k.pem",
            "--output",
            tmp_path / "s.suit",
            "--json",
        ).stdout
    )
    assert signed_doc["signed"] is True and signed_doc["envelope"] == str(tmp_path / "s.suit")
    verified = json.loads(
        run("verify", "--key", tmp_path / "k.pem.pub", tmp_path / "s.suit", "--json").stdout
    )
    assert verified["verified"] is True and verified["sequence_number"] == 7
    shown = json.loads(run("show", tmp_path / "s.suit", "--json").stdout)
    assert shown["manifest"]["manifest-sequence-number"] == 7
    written = run("show", tmp_path / "s.suit", "--json", "-o", tmp_path / "view.json")
    assert written.returncode == 0 and written.stdout == ""
    assert json.loads((tmp_path / "view.json").read_text()) == shown


def test_every_option_has_help() -> None:
    parser = argparse.ArgumentParser()
    manifest_cli.register(parser.add_subparsers())
    (manifest,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)][
        0
    ].choices.values()
    commands = [a for a in manifest._actions if isinstance(a, argparse._SubParsersAction)]
    assert commands and set(commands[0].choices) == {"keygen", "create", "sign", "verify", "show"}
    for name, sub in commands[0].choices.items():
        for action in sub._actions:
            assert action.help and action.help != argparse.SUPPRESS, (name, action.dest)


def test_usage_and_input_errors_are_one_line(tmp_path: Path) -> None:
    assert run("keygen").returncode == 2  # -o is required: usage
    assert run("show", "--format", "xml", tmp_path / "x").returncode == 2
    (tmp_path / "bad.json").write_text("{not json")
    line = _one_line_error(run("create", tmp_path / "bad.json", "-o", tmp_path / "r.suit"))
    assert str(tmp_path / "bad.json") in line
    (tmp_path / "notakey.pem").write_text("hello")
    line = _one_line_error(
        run(
            "sign",
            tmp_path / "bad.json",
            "--key",
            tmp_path / "notakey.pem",
            "-o",
            tmp_path / "s.suit",
        )
    )
    assert str(tmp_path / "notakey.pem") in line


def test_a_closed_pipe_ends_the_command_quietly() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "launcher", "manifest", "show", str(VECTORS / "example4.cbor")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPO,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader is gone before the first write (``| head -0``)
    try:
        err = proc.stderr.read()
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=60)
        proc.stderr.close()
    assert b"Traceback" not in err and b"BrokenPipe" not in err, err.decode(errors="replace")
