"""The consensus settings of issue 11: the trust anchors a node records in
the ledger (``--trust-anchor PATH[:components=..][:classes=..]``, repeatable,
read and checked at startup), the endpoints of the node's other services,
and the service map the Status answer carries."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fleetsuit.settings import ConfigError
from services.consensus.anchors import AnchorSpec, parse_anchor_spec
from services.consensus.config import ConsensusConfig
from services.consensus.ledger.releases import key_id_of
from tests.support.releases import Publisher

BASE = ["--node-id", "n1", "--data", "d"]


@pytest.fixture
def pems(tmp_path: Path) -> list[Path]:
    paths = []
    for seed in (1, 2):
        path = tmp_path / f"ci{seed}.pem"
        path.write_bytes(Publisher.new(seed).pem)
        paths.append(path)
    return paths


def test_anchors_are_read_with_their_scopes_and_sorted_by_key_id(pems: list[Path]) -> None:
    config = ConsensusConfig.from_args(
        [*BASE, "--trust-anchor", f"{pems[0]}:components=fw,boot:classes=board-a",
         "--trust-anchor", str(pems[1])], env={},
    )
    assert config.trust_anchors == (
        AnchorSpec(str(pems[0]), ("fw", "boot"), ("board-a",)), AnchorSpec(str(pems[1])),
    )
    anchors = config.anchors()
    assert [a.key_id for a in anchors] == sorted(key_id_of(p.read_bytes()) for p in pems)
    first = next(a for a in anchors if a.key_id == key_id_of(pems[0].read_bytes()))
    assert (first.components, first.device_classes, first.public_key_pem) == (
        ("fw", "boot"), ("board-a",), pems[0].read_bytes(),
    )


def test_anchors_come_from_the_environment_separated_by_semicolons(pems: list[Path]) -> None:
    env = {"FLEETSUIT_CONSENSUS_TRUST_ANCHORS": f"{pems[0]}:classes=x;{pems[1]}"}
    config = ConsensusConfig.from_args(BASE, env=env)
    assert config.trust_anchors == (AnchorSpec(str(pems[0]), (), ("x",)), AnchorSpec(str(pems[1])))
    # A flag replaces the variable.
    assert ConsensusConfig.from_args([*BASE, "--trust-anchor", str(pems[1])], env=env).trust_anchors == (
        AnchorSpec(str(pems[1])),
    )


@pytest.mark.parametrize(
    ("text", "spec"),
    [
        ("k.pem", AnchorSpec("k.pem")),
        ("k.pem:classes=a:components=fw", AnchorSpec("k.pem", ("fw",), ("a",))),
        ("C:/keys/k.pem:components=fw", AnchorSpec("C:/keys/k.pem", ("fw",))),
    ],
)
def test_the_scope_suffix_parses_in_either_order(text: str, spec: AnchorSpec) -> None:
    assert parse_anchor_spec(text) == spec
    assert parse_anchor_spec(str(spec)) == spec


@pytest.mark.parametrize(
    ("suffix", "message"),
    [
        (":colours=red", "unknown scope 'colours'"),
        (":components=", "components needs names"),
        (":classes=a,,b", "classes needs names"),
        (":classes=a:classes=b", "classes given twice"),
    ],
)
def test_a_bad_scope_is_refused_naming_the_flag(pems: list[Path], suffix: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        ConsensusConfig.from_args([*BASE, "--trust-anchor", f"{pems[0]}{suffix}"], env={})
    assert "--trust-anchor" in str(info.value)


def test_a_missing_file_is_a_config_error_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.pem"
    with pytest.raises(ConfigError, match=f"cannot read trust anchor {missing}"):
        ConsensusConfig.from_args([*BASE, "--trust-anchor", str(missing)], env={})


@pytest.mark.parametrize(
    "content",
    [b"not a key", b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"],
)
def test_a_file_that_is_not_a_key_is_a_config_error_naming_it(tmp_path: Path, content: bytes) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_bytes(content)
    with pytest.raises(ConfigError, match=f"trust anchor {bad}: "):
        ConsensusConfig.from_args([*BASE, "--trust-anchor", str(bad)], env={})


def test_a_p384_key_is_refused(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    path = tmp_path / "p384.pem"
    path.write_bytes(ec.generate_private_key(ec.SECP384R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    with pytest.raises(ConfigError, match="only P-256 and Ed25519"):
        ConsensusConfig.from_args([*BASE, "--trust-anchor", str(path)], env={})


def test_a_key_given_twice_is_refused(pems: list[Path]) -> None:
    with pytest.raises(ConfigError, match="give each key once"):
        ConsensusConfig.from_args(
            [*BASE, "--trust-anchor", str(pems[0]), "--trust-anchor", f"{pems[0]}:classes=x"], env={}
        )


def test_the_process_exits_2_on_a_bad_anchor_naming_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.pem"
    out = subprocess.run(
        [sys.executable, "-m", "services.consensus", *BASE, "--trust-anchor", str(missing)],
        capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 2, out.stderr
    assert str(missing) in out.stderr and "Traceback" not in out.stderr


def test_the_service_map_names_the_nodes_services() -> None:
    config = ConsensusConfig.from_args(
        [*BASE, "--listen", "0.0.0.0:7101", "--peers", "n1=10.0.0.1:7101,n2=10.0.0.2:7101",
         "--manifest-endpoint", "10.0.0.1:7103", "--dht-endpoint", "10.0.0.1:7102"], env={},
    )
    assert config.services() == {
        "consensus": "10.0.0.1:7101", "dht": "10.0.0.1:7102", "manifest": "10.0.0.1:7103",
    }
    with_gateway = ConsensusConfig.from_args([*BASE, "--gateway-endpoint", "127.0.0.1:7104"], env={})
    assert with_gateway.services() == {"consensus": "127.0.0.1:7101", "gateway": "127.0.0.1:7104"}


def test_an_endpoint_that_is_not_host_port_is_refused() -> None:
    with pytest.raises(ConfigError, match="manifest_endpoint"):
        ConsensusConfig.from_args([*BASE, "--manifest-endpoint", "localhost"], env={})


def test_skipping_the_checks_is_off_unless_asked() -> None:
    assert not ConsensusConfig.from_args(BASE, env={}).unsafe_skip_release_checks
    assert ConsensusConfig.from_args([*BASE, "--unsafe-skip-release-checks"], env={}).unsafe_skip_release_checks
    env = {"FLEETSUIT_CONSENSUS_UNSAFE_SKIP_RELEASE_CHECKS": "true"}
    assert ConsensusConfig.from_args(BASE, env=env).unsafe_skip_release_checks
