"""The consensus commands have the one shape of the command line: text or
``--json``, ``-o FILE``, the entry from TEXT, a file or stdin, and a gRPC
failure as one line naming the endpoint. Against in-process fake servers
(the same commands against a real cluster: tests/integration)."""

from __future__ import annotations

import io
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleetsuit.cli import EXIT_FAILED, EXIT_USAGE
from launcher.main import main
from tests.support.cli import CLI, run_cli
from tests.support.ports import free_port

from .fakes import FakeLedger, serving


@pytest.fixture
def ledger() -> FakeLedger:
    return FakeLedger()


@pytest.fixture
def endpoint(ledger: FakeLedger) -> Iterator[str]:
    with serving(ledger) as address:
        yield address


@pytest.fixture
def other_service() -> Iterator[str]:
    """A gRPC server that does not serve fleetsuit.v1.Ledger."""
    with serving(None) as address:
        yield address


def _json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> dict:  # type: ignore[type-arg]
    assert main(argv) == 0
    out = capsys.readouterr().out
    doc: dict = json.loads(out)  # type: ignore[type-arg]
    return doc


def test_status_prints_text_json_or_to_a_file(
    endpoint: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert main(["status", "--endpoint", endpoint]) == 0
    text = capsys.readouterr().out
    assert "role             leader" in text and "cluster_id       fs-feed" in text
    doc = _json(capsys, ["status", "--endpoint", endpoint, "--json"])
    assert doc["node_id"] == "n1" and doc["certified_height"] == 4
    assert doc["members"] == [{"id": "n1", "address": "127.0.0.1:7101", "voter": True}]
    out = tmp_path / "status.json"
    assert main(["status", "--endpoint", endpoint, "--json", "-o", str(out)]) == 0
    assert capsys.readouterr().out == ""
    assert json.loads(out.read_text()) == doc


def test_append_takes_text_a_file_or_stdin(
    endpoint: str, ledger: FakeLedger, capsys: pytest.CaptureFixture[str],
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    doc = _json(capsys, ["ledger", "append", "--endpoint", endpoint, "hello", "--json",
                         "--client-id", "ci", "--request-id", "7"])
    assert doc == {"index": 11, "block_height": 5, "duplicate": False, "position": 0,
                   "client_id": "ci", "request_id": 7}
    entry = tmp_path / "entry.bin"
    entry.write_bytes(b"\x00binary\xff")
    assert main(["ledger", "append", "--endpoint", endpoint, "--file", str(entry)]) == 0
    filed = ledger.submitted[1]
    assert capsys.readouterr().out == (
        f"committed at index 12, block 5, position 0; client id {filed.client_id}, request id {filed.request_id}\n"
    )
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"from stdin")))
    assert main(["ledger", "append", "--endpoint", endpoint, "-"]) == 0
    assert [e.app.payload for e in ledger.submitted] == [b"hello", b"\x00binary\xff", b"from stdin"]
    assert ledger.submitted[0].client_id == "ci" and ledger.submitted[0].request_id == 7
    assert filed.client_id.startswith("cli-")


def test_append_without_a_request_id_takes_a_fresh_one_and_prints_it(
    endpoint: str, ledger: FakeLedger, capsys: pytest.CaptureFixture[str]
) -> None:
    """A constant default would make a second append with the same client
    id a retry of the first (answered with the first entry): each append
    takes a new random request id, printed so that a retry can reuse it."""
    docs = [_json(capsys, ["ledger", "append", "--endpoint", endpoint, text, "--json", "--client-id", "ci"])
            for text in ("one", "two")]
    ids = [e.request_id for e in ledger.submitted]
    assert [d["request_id"] for d in docs] == ids
    assert ids[0] != ids[1] and all(1 <= i < 2**63 for i in ids)
    assert [e.client_id for e in ledger.submitted] == ["ci", "ci"]


@pytest.mark.parametrize("request_id", ["0", str(2**63)])
def test_append_refuses_a_request_id_out_of_range(
    endpoint: str, ledger: FakeLedger, capsys: pytest.CaptureFixture[str], request_id: str
) -> None:
    assert main(["ledger", "append", "--endpoint", endpoint, "x", "--request-id", request_id]) == EXIT_USAGE
    assert "--request-id must be between 1 and" in capsys.readouterr().err
    assert ledger.submitted == []


def test_a_failed_append_names_the_ids_to_retry_with(capsys: pytest.CaptureFixture[str]) -> None:
    address = f"127.0.0.1:{free_port()}"
    argv = ["ledger", "append", "--endpoint", address, "x", "--client-id", "ci", "--request-id", "5"]
    assert main(argv) == EXIT_FAILED
    err = capsys.readouterr().err
    assert err.startswith(f"fleetsuit: cannot reach {address}") and len(err.splitlines()) == 1
    assert err.rstrip().endswith("(retry with --client-id ci --request-id 5)")


@pytest.mark.parametrize("argv", [[], ["hello", "--file", "x"]])
def test_append_needs_exactly_one_source(
    endpoint: str, ledger: FakeLedger, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    assert main(["ledger", "append", "--endpoint", endpoint, *argv]) == EXIT_USAGE
    assert "give the entry as TEXT, as --file FILE, or on stdin with -" in capsys.readouterr().err
    assert ledger.submitted == []


def test_append_names_an_unreadable_file(endpoint: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ledger", "append", "--endpoint", endpoint, "--file", "/nonexistent/entry"]) == EXIT_FAILED
    assert capsys.readouterr().err == "fleetsuit: cannot read /nonexistent/entry: No such file or directory\n"


@pytest.mark.parametrize(
    ("argv", "call", "expected"),
    [
        (["add", "--node-id", "n4", "--address", "127.0.0.1:7131"], "add", 12),
        (["remove", "--node-id", "n4"], "remove", 13),
        (["transfer-leader", "--node-id", "n2"], "transfer", 0),
        (["transfer-leader", "--target", "n2"], "transfer", 0),
    ],
)
def test_membership_commands_print_text_or_json(
    endpoint: str, ledger: FakeLedger, capsys: pytest.CaptureFixture[str],
    argv: list[str], call: str, expected: int,
) -> None:
    doc = _json(capsys, ["cluster", *argv, "--endpoint", endpoint, "--json"])
    assert doc["index"] == expected and {"id", "address", "voter"} == set(doc["members"][0])
    assert main(["cluster", *argv, "--endpoint", endpoint]) == 0
    assert capsys.readouterr().out.startswith(f"ok (index {expected}, leader ")
    assert [c for c, _ in ledger.membership] == [call, call]


@pytest.mark.parametrize(
    "argv",
    [
        ["status"],
        ["ledger", "append", "x"],
        ["ledger", "export", "-o", "ledger.bin"],
        ["ledger", "prove", "--height", "1", "-o", "proof.bin"],
        ["cluster", "add", "--node-id", "n4", "--address", "127.0.0.1:1"],
    ],
)
def test_an_endpoint_of_another_service_is_named_as_such(
    other_service: str, capsys: pytest.CaptureFixture[str], argv: list[str], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main([*argv, "--endpoint", other_service]) == EXIT_FAILED
    err = capsys.readouterr().err
    assert err == (f"fleetsuit: {other_service} is not a consensus endpoint (it does not implement "
                   "this call); check the port\n")
    assert not list(tmp_path.iterdir()), "nothing written on failure"


def test_an_unreachable_endpoint_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    address = f"127.0.0.1:{free_port()}"
    assert main(["status", "--endpoint", address]) == EXIT_FAILED
    err = capsys.readouterr().err
    assert err.startswith(f"fleetsuit: cannot reach {address}") and len(err.splitlines()) == 1


def test_a_wrong_endpoint_through_the_command_has_no_traceback(other_service: str) -> None:
    out = run_cli("status", "--endpoint", other_service, "--json")
    assert out.returncode == EXIT_FAILED and out.stdout == ""
    assert out.stderr.startswith(f"fleetsuit: {other_service} is not a consensus endpoint")
    assert "Traceback" not in out.stderr


def test_status_into_a_pipe_closed_early_has_no_traceback(endpoint: str) -> None:
    """``fleetsuit status --json | head -c1``: the reader is gone before the
    result is written."""
    proc = subprocess.Popen([*CLI, "status", "--endpoint", endpoint, "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    proc.stdout.close()
    _, err = proc.communicate(timeout=60)
    assert b"Traceback" not in err and b"Exception ignored" not in err, err.decode()
    assert err == b""
