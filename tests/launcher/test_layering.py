"""The layering the repository promises, checked on the sources: the common
package ``fleetsuit`` imports no service and not the launcher above it; no
service imports the launcher; the consensus command line knows nothing of
``cluster up``."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports (relative imports resolved)."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                out.add(".".join([*base, *([node.module] if node.module else [])]))
            else:
                out.add(node.module or "")
    return out


def _sources(folder: str) -> list[Path]:
    return sorted(p for p in (ROOT / folder).rglob("*.py") if "v1" not in p.relative_to(ROOT).parts)


def _under(module: str, *roots: str) -> bool:
    return any(module == r or module.startswith(r + ".") for r in roots)


@pytest.mark.parametrize("path", _sources("fleetsuit"), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_common_package_imports_no_service_and_not_the_launcher(path: Path) -> None:
    bad = {m for m in _imports(path) if _under(m, "services", "launcher")}
    assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_no_service_imports_the_launcher() -> None:
    for path in _sources("services"):
        bad = {m for m in _imports(path) if _under(m, "launcher")}
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_the_consensus_command_line_does_not_start_clusters() -> None:
    path = ROOT / "services" / "consensus" / "cli.py"
    bad = {m for m in _imports(path) if _under(m, "launcher", "fleetsuit.cluster")}
    assert not bad


def test_the_launcher_modules_moved_out_of_the_common_package() -> None:
    for name in ("cluster.py", "demo.py"):
        assert not (ROOT / "fleetsuit" / name).exists()
        assert (ROOT / "launcher" / name).exists()
