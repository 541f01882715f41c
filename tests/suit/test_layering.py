"""The SUIT library stands alone (STYLE 1): it imports no gRPC, no generated
protobuf code, nothing from the services and no I/O module; every import is
at module level; and its modules import each other along a DAG, so no
import dodges a cycle (``DeviceContext`` lives in ``device``, below the
processor, the one-pass reader and the interpreter that all read it)."""

from __future__ import annotations

import ast
import graphlib
import subprocess
import sys
from pathlib import Path

SUIT = Path(__file__).resolve().parents[2] / "suit"
# Top-level packages the library may import (the standard library aside).
ALLOWED_THIRD_PARTY = {"cbor2", "cryptography"}
ALLOWED_FLEETSUIT = {"fleetsuit.errors"}  # the error root; it imports only the stdlib
FORBIDDEN_STDLIB = {
    "asyncio",
    "os",
    "socket",
    "time",
    "random",
    "subprocess",
    "threading",
    "pickle",
}


def _modules() -> dict[str, ast.Module]:
    return {p.stem: ast.parse(p.read_text(), str(p)) for p in sorted(SUIT.glob("*.py"))}


def _imports(tree: ast.Module) -> list[tuple[ast.stmt, str, int]]:
    """(statement, module, level) for every import anywhere in the tree."""
    found: list[tuple[ast.stmt, str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node, alias.name, 0) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.module is None:  # from . import x, y
                found.extend((node, alias.name, node.level) for alias in node.names)
            else:
                found.append((node, node.module, node.level))
    return found


def test_every_import_is_at_module_level() -> None:
    for name, tree in _modules().items():
        top = {id(stmt) for stmt in tree.body}
        for stmt, module, _ in _imports(tree):
            assert id(stmt) in top, f"suit/{name}.py imports {module} below module level"


def test_the_library_imports_no_grpc_protobuf_services_or_io() -> None:
    stdlib = set(sys.stdlib_module_names)
    for name, tree in _modules().items():
        for _, module, level in _imports(tree):
            if level:
                continue
            root = module.split(".")[0]
            if root == "__future__" or (root in stdlib and root not in FORBIDDEN_STDLIB):
                continue
            if root == "fleetsuit":
                assert module in ALLOWED_FLEETSUIT, f"suit/{name}.py imports {module}"
                continue
            assert root in ALLOWED_THIRD_PARTY, f"suit/{name}.py imports {module}"


def test_the_import_graph_is_a_dag() -> None:
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, tree in modules.items():
        deps = {m.split(".")[0] for _, m, level in _imports(tree) if level == 1}
        assert deps <= set(modules), f"suit/{name}.py imports {deps - set(modules)}"
        graph[name] = deps
    try:
        order = list(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as exc:
        raise AssertionError(f"import cycle in suit/: {exc.args[1]}") from None
    assert order.index("device") < min(
        order.index("interpreter"), order.index("fastpath"), order.index("processor")
    )


def test_importing_the_processor_loads_no_grpc() -> None:
    code = (
        "import sys, suit.processor, suit.build, suit.show, suit.keys; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('grpc', 'google', 'services') or m.startswith('fleetsuit.v1')); "
        "print(','.join(bad))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=SUIT.parent,
        timeout=60,
    )
    assert out.stdout.strip() == ""
