"""The shape of the tree, checked (issue: one shape for every service):
the common package imports no service (and, but for the release client,
not the SUIT library); the consensus runtime depends on
ports, not concrete classes; every service builds its server and maps its
errors the same way; the SUIT library imports no service or gRPC."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SERVICES = ("consensus", "dht", "manifest", "gateway")


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    out: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append(node.module)
    return out


def _py(folder: str) -> list[Path]:
    return sorted(p for p in (ROOT / folder).rglob("*.py") if "v1" not in p.relative_to(ROOT).parts)


MAY_IMPORT_SUIT = {"fleetsuit/release_content.py"}


def test_the_common_package_imports_no_service_and_no_launcher() -> None:
    """Nor the SUIT library, except ``fleetsuit/release_content.py``: the release
    client builds and signs envelopes, and signing must happen where the key
    is (in the CI job, never on a node). ``suit/`` is a pure library (bytes
    in, envelopes and verdicts out; no I/O, no service, no gRPC), so that
    one exception brings no service into the common package."""
    for path in _py("fleetsuit"):
        forbidden = ("services", "launcher") if path.relative_to(ROOT).as_posix() in MAY_IMPORT_SUIT \
            else ("services", "launcher", "suit")
        bad = [m for m in _imports(path) if m.split(".")[0] in forbidden]
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_a_service_imports_no_other_service_internals() -> None:
    for service in SERVICES:
        for path in _py(f"services/{service}"):
            bad = [m for m in _imports(path)
                   if m.startswith("services.") and not m.startswith(f"services.{service}")]
            bad += [m for m in _imports(path) if m.split(".")[0] == "launcher"]
            assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_the_consensus_runtime_depends_on_ports_not_concrete_classes() -> None:
    concrete = {"GrpcTransport", "RocksStorage", "FileSnapshotStore", "RocksKeyValue"}
    for path in _py("services/consensus/runtime"):
        source = path.read_text()
        tree = ast.parse(source)
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "isinstance":
                names = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}
                assert not names & concrete, f"{path.name}: isinstance on {names & concrete}"
            if isinstance(node, ast.Name):
                assert node.id not in concrete, f"{path.name} names {node.id}"
        assert not [m for m in _imports(path) if m.startswith("grpc") or m == "rocksdict"], path.name


@pytest.mark.parametrize("service", SERVICES)
def test_every_service_builds_its_server_and_maps_errors_the_same_way(service: str) -> None:
    server = (ROOT / "services" / service / "server.py").read_text()
    assert "new_server(" in server and "bind(" in server, service
    assert "def build_server(" in server and "async def serve(" in server, service
    for path in _py(f"services/{service}"):
        text = path.read_text()
        assert "context.abort(" not in text, f"{path.relative_to(ROOT)} aborts by hand"
        assert 'AssertionError("unreachable")' not in text, path.relative_to(ROOT)
    convert = (ROOT / "services" / service / "convert.py").read_text()
    assert "ErrorTable" in convert, f"{service}: its error table belongs in convert.py"
    errors = "".join(p.read_text() for p in _py(f"services/{service}") if p.name == "errors.py")
    errors += "".join(p.read_text() for p in _py("suit") if p.name == "errors.py") if service == "manifest" else ""
    assert "ServiceError" in errors, f"{service}: its errors derive from fleetsuit.errors.ServiceError"


@pytest.mark.parametrize("service", SERVICES)
def test_every_service_logs_a_start_line_and_serves_standard_metrics(service: str) -> None:
    server = (ROOT / "services" / service / "server.py").read_text()
    assert "log_start(" in server and "new_registry(" in server, service


def test_the_manifest_service_logs_instead_of_printing() -> None:
    for path in _py("services/manifest"):
        if path.name not in ("cli.py", "__main__.py"):  # a command prints its result; a bad config comes before logging
            assert "print(" not in path.read_text(), path.relative_to(ROOT)


def test_the_device_agent_imports_no_service_and_not_the_launcher() -> None:
    """The agent is the device's side: it speaks the gateway's proto API and
    verifies envelopes with ``suit/`` itself; nothing of a node runs there."""
    for path in _py("agent"):
        bad = [m for m in _imports(path) if m.split(".")[0] in ("services", "launcher")]
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"
