"""The image recipe (deploy/Dockerfile) and its lock file (requirements.lock).

No container engine runs here, so the Dockerfile is read, not built: its base
is an exact release, it runs as a numeric non-root user, it installs the
locked dependencies by hash and every package the project ships, and it
builds the generated gRPC modules itself. The lock is parsed: every pin has
hashes, no package twice, pyproject's dependencies pinned at their versions,
and the set closed under the locked packages' own requirements."""

from __future__ import annotations

import re
import shlex
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
LOCK = ROOT / "requirements.lock"
PYPROJECT = ROOT / "pyproject.toml"

BASE_RE = re.compile(
    r"^python:(?P<version>\d+\.\d+\.\d+)-slim-(?P<debian>[a-z]+)"
    r"(?:\$\{PYTHON_DIGEST:\+@\$\{PYTHON_DIGEST\}\}|@sha256:[0-9a-f]{64})?$"
)
PIN_RE = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[^\s;\\]+)\s*(?:\\)?$")
HASH_RE = re.compile(r"^--hash=sha256:[0-9a-f]{64}\s*(?:\\)?$")
# Where the image runs: markers of the locked packages' requirements are
# evaluated for it (CPython 3.11 on Linux x86_64, as the lock was compiled).
IMAGE_MARKERS = {
    "python_version": "3.11", "python_full_version": "3.11.14", "os_name": "posix",
    "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
    "platform_python_implementation": "CPython", "implementation_name": "cpython",
    "implementation_version": "3.11.14", "platform_release": "", "platform_version": "",
}


class LockError(ValueError):
    """A requirements.lock line that is not a pin, a hash or a comment."""


@dataclass
class Pin:
    name: str
    version: str
    hashes: list[str] = field(default_factory=list)
    via: list[str] = field(default_factory=list)


def instructions(text: str) -> Iterator[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined
    and comments dropped."""
    logical = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            logical += line[:-1] + " "
            continue
        logical += line
        keyword, _, rest = logical.partition(" ")
        yield keyword.upper(), rest.strip()
        logical = ""
    assert not logical, f"the Dockerfile ends inside a continued line: {logical!r}"


def parse_lock(text: str) -> dict[str, Pin]:
    """Pins by canonical name; LockError naming the line that is neither a
    pin, a hash of the pin above it, nor a comment, and naming a package
    pinned twice."""
    pins: dict[str, Pin] = {}
    current: Pin | None = None
    via_block = False
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            comment = line.lstrip("#").strip()
            if current is not None and comment.startswith("via"):
                via_block = True
                rest = comment[len("via"):].strip()
                if rest:
                    current.via.append(rest)
            elif current is not None and via_block and comment:
                current.via.append(comment)
            continue
        via_block = False
        if (pin := PIN_RE.match(line)) is not None:
            name = canonicalize_name(pin["name"])
            if name in pins:
                raise LockError(f"line {number}: {name} is pinned twice")
            current = pins[name] = Pin(name, pin["version"])
        elif HASH_RE.match(line) and current is not None:
            current.hashes.append(line.split("=", 1)[1].rstrip(" \\"))
        else:
            raise LockError(f"line {number}: not a pin, a hash or a comment: {line!r}")
    return pins


def _project_dependencies() -> list[Requirement]:
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    return [Requirement(text) for text in project["dependencies"]]


def _dockerfile() -> list[tuple[str, str]]:
    return list(instructions(DOCKERFILE.read_text()))


def _runs() -> list[str]:
    return [args for keyword, args in _dockerfile() if keyword == "RUN"]


# ------------------------------------------------------------------ the image


def test_every_stage_starts_from_an_exact_slim_python_release() -> None:
    bases = [args.split()[0] for keyword, args in _dockerfile() if keyword == "FROM"]
    assert len(bases) >= 2, "a build stage and a runtime stage"
    versions = set()
    for base in bases:
        match = BASE_RE.match(base)
        assert match is not None, f"FROM {base}: not python:X.Y.Z-slim-<debian>[@digest]"
        versions.add(match["version"])
    assert len(versions) == 1, f"the stages differ in Python: {sorted(versions)}"
    (version,) = versions
    requires = tomllib.loads(PYPROJECT.read_text())["project"]["requires-python"]
    assert Version(version) in Requirement(f"python{requires}").specifier
    # The lock was compiled for the image's minor version (its header).
    minor = ".".join(version.split(".")[:2])
    assert f"--python-version {minor}" in LOCK.read_text().split("\n", 3)[1]


def test_a_digest_is_an_argument_not_an_invented_value() -> None:
    args = {a.split("=", 1)[0]: a for keyword, a in _dockerfile() if keyword == "ARG"}
    assert "PYTHON_DIGEST" in args
    assert "sha256:" not in args["PYTHON_DIGEST"]


def test_the_image_runs_as_a_numeric_non_root_user() -> None:
    users = [args for keyword, args in _dockerfile() if keyword == "USER"]
    assert users, "no USER: the image would run as root"
    match = re.fullmatch(r"(\d+):(\d+)", users[-1])
    assert match is not None, f"USER {users[-1]}: Kubernetes' runAsNonRoot needs numeric ids"
    assert int(match[1]) != 0 and int(match[2]) != 0


def test_the_entrypoint_is_the_fleetsuit_command() -> None:
    (entrypoint,) = [args for keyword, args in _dockerfile() if keyword == "ENTRYPOINT"]
    assert entrypoint == '["fleetsuit"]'
    scripts = tomllib.loads(PYPROJECT.read_text())["project"]["scripts"]
    assert "fleetsuit" in scripts


def test_dependencies_install_from_the_lock_by_hash_and_the_project_without_any() -> None:
    copied = [args.split() for keyword, args in _dockerfile() if keyword == "COPY"]
    assert any(words[0] == "requirements.lock" for words in copied)
    commands = [cmd for run in _runs() for cmd in run.split("&&")]
    installs = [shlex.split(cmd) for cmd in commands if "pip install" in cmd]
    from_lock = [words for words in installs if "-r" in words]
    assert from_lock, "nothing installs requirements.lock"
    for words in from_lock:
        assert words[words.index("-r") + 1].endswith("requirements.lock")
        assert "--require-hashes" in words and "--only-binary=:all:" in words
    project = [words for words in installs if words[-1] == "."]
    assert project, "the project itself is not installed"
    for words in project:
        # Its dependencies came from the lock: nothing unlocked is fetched.
        assert {"--no-deps", "--no-index", "--no-build-isolation"} <= set(words), words
    assert len(installs) == len(from_lock) + len(project), installs


def test_every_package_the_project_ships_is_copied_into_the_image() -> None:
    find = tomllib.loads(PYPROJECT.read_text())["tool"]["setuptools"]["packages"]["find"]
    packages = {pattern.rstrip("*") for pattern in find["include"]}
    copied = {Path(words[0]).name for keyword, args in _dockerfile() if keyword == "COPY"
              for words in [args.split()] if not words[0].startswith("--from")}
    assert packages <= copied, f"not in the image: {sorted(packages - copied)}"
    assert "protos" in copied


def test_the_generated_grpc_modules_are_built_in_the_image() -> None:
    protos = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "protos").rglob("*.proto"))
    assert protos
    (build,) = [run for run in _runs() if "grpc_tools.protoc" in run]
    assert "rm -rf fleetsuit/v1" in build, "a work tree's generated files must not be used"
    for flag in ("--python_out=.", "--pyi_out=.", "--grpc_python_out=."):
        assert flag in build
    globbed = re.search(r"(protos/\S+\*\.proto)", build)
    assert globbed is not None
    assert protos == sorted(p.relative_to(ROOT).as_posix() for p in ROOT.glob(globbed[1]))
    assert "touch fleetsuit/v1/__init__.py" in build
    # Built before the project is installed, in the same step.
    assert build.index("grpc_tools.protoc") < build.index("pip install")


# ------------------------------------------------------------------- the lock


def test_the_lock_parses_with_hashes_for_every_pin_and_no_package_twice() -> None:
    pins = parse_lock(LOCK.read_text())
    assert pins
    for pin in pins.values():
        assert pin.hashes, f"{pin.name}=={pin.version} has no hash"
        assert len(set(pin.hashes)) == len(pin.hashes), f"{pin.name}: a hash twice"
        Version(pin.version)  # a version pip can compare


def test_the_parser_refuses_a_package_pinned_twice_and_a_stray_line() -> None:
    digest = "--hash=sha256:" + "0" * 64
    with pytest.raises(LockError, match="pinned twice"):
        parse_lock(f"a==1 \\\n    {digest}\nA==2 \\\n    {digest}\n")
    with pytest.raises(LockError, match="line 2"):
        parse_lock("a==1 \\\nb>=2\n")


def test_the_lock_pins_every_project_dependency_at_its_version() -> None:
    pins = parse_lock(LOCK.read_text())
    for requirement in _project_dependencies():
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} is a dependency of the project but not in the lock"
        (spec,) = requirement.specifier
        assert spec.operator == "==", f"{requirement}: the project pins exact versions"
        assert pins[name].version == spec.version, (
            f"{name}: pyproject wants {spec.version}, the lock has {pins[name].version}"
        )


def test_every_locked_package_is_wanted_by_the_project_or_another_locked_one() -> None:
    pins = parse_lock(LOCK.read_text())
    for pin in pins.values():
        assert pin.via, f"{pin.name}: no 'via' line says why it is locked"
        for reason in pin.via:
            if reason.startswith("fleetsuit"):
                continue
            assert canonicalize_name(reason) in pins, f"{pin.name} via {reason}: not locked"


def test_the_locked_set_holds_every_requirement_of_its_packages() -> None:
    """Each locked package's own requirements (read from its installed
    metadata, markers evaluated for the image) are locked at a version they
    accept. Packages installed here at another version than the lock's are
    not read; the project's own dependencies always are (pyproject pins
    them as the lock does)."""
    pins = parse_lock(LOCK.read_text())
    checked = set()
    for pin in pins.values():
        try:
            dist = metadata.distribution(pin.name)
        except metadata.PackageNotFoundError:
            continue
        if dist.version != pin.version:
            continue
        checked.add(pin.name)
        for text in dist.requires or []:
            requirement = Requirement(text)
            if requirement.marker is not None and not requirement.marker.evaluate(
                {**IMAGE_MARKERS, "extra": ""}
            ):
                continue
            name = canonicalize_name(requirement.name)
            assert name in pins, f"{pin.name} requires {requirement}, which is not locked"
            assert requirement.specifier.contains(pins[name].version, prereleases=True), (
                f"{pin.name} requires {requirement}; the lock has {pins[name].version}"
            )
    direct = {canonicalize_name(r.name) for r in _project_dependencies()}
    assert direct <= checked, f"not installed at the locked version: {sorted(direct - checked)}"

