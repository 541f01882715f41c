"""``fleetsuit manifest`` end to end, as a user runs it (subprocesses)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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
    created = run("create", tmp_path / "release.json", "-o", tmp_path / "r.suit",
                  "--key", tmp_path / "k.pem")
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
