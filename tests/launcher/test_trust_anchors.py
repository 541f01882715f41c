"""``fleetsuit cluster up --trust-anchor PEM[:components=..][:classes=..]``:
a bad anchor is refused before anything starts (exit 2, naming the file);
a good one reaches every consensus process, with the endpoints of its own
node's manifest and dht, and ends up in the ledger."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from fleetsuit.cli import EXIT_USAGE, CliError
from fleetsuit.grpcutil import insecure_channel
from fleetsuit.v1 import consensus_pb2 as pb
from fleetsuit.v1 import consensus_pb2_grpc as pb_grpc
from launcher.cluster import anchor_arguments, command_for, join_command, plan_nodes
from launcher.layout import SERVICES
from launcher.preflight import check_trust_anchors
from tests.support.cli import ClusterUp, run_cli
from tests.support.releases import Publisher
from tests.support.wait import wait_for


@pytest.fixture
def pem(tmp_path: Path) -> Path:
    path = tmp_path / "ci.pem"
    path.write_bytes(Publisher.new(1).pem)
    return path


def test_each_consensus_process_gets_its_nodes_services_and_the_anchors(tmp_path: Path) -> None:
    nodes = plan_nodes(2, tmp_path, 7100)
    consensus = next(s for s in SERVICES if s.name == "consensus")
    cmd = command_for(consensus, nodes[1], nodes, "c", ["/k/ci.pem:classes=a", "/k/other.pem"])
    assert cmd[cmd.index("--dht-endpoint") + 1] == "127.0.0.1:7112"
    assert cmd[cmd.index("--manifest-endpoint") + 1] == "127.0.0.1:7113"
    assert [cmd[i + 1] for i, arg in enumerate(cmd) if arg == "--trust-anchor"] == [
        "/k/ci.pem:classes=a", "/k/other.pem",
    ]
    for spec in SERVICES:
        if spec.name != "consensus":
            assert "--trust-anchor" not in command_for(spec, nodes[0], nodes, "c", ["/k/ci.pem"])


def test_a_joining_node_gets_its_services_and_the_anchors(tmp_path: Path, pem: Path) -> None:
    cmd = join_command(
        "n4", "127.0.0.1:7131", tmp_path / "n4", {"n1": "127.0.0.1:7101"}, "c",
        endpoints={"dht": "127.0.0.1:7132", "manifest": "127.0.0.1:7133"}, trust_anchors=[f"{pem}:classes=a"],
    )
    assert "--join" in cmd
    assert cmd[cmd.index("--dht-endpoint") + 1] == "127.0.0.1:7132"
    assert cmd[cmd.index("--manifest-endpoint") + 1] == "127.0.0.1:7133"
    assert cmd[cmd.index("--trust-anchor") + 1] == f"{pem.absolute()}:classes=a"
    from services.consensus.config import ConsensusConfig

    config = ConsensusConfig.from_args(cmd[3:], env={})
    assert config.services()["dht"] == "127.0.0.1:7132" and len(config.anchors()) == 1


def test_anchor_paths_are_made_absolute_and_keep_their_scope(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    assert anchor_arguments(["keys/ci.pem:components=fw:classes=a", Path("b.pem")]) == [
        f"{tmp_path}/keys/ci.pem:components=fw:classes=a", f"{tmp_path}/b.pem",
    ]


def test_preflight_names_a_missing_or_bad_anchor_file(tmp_path: Path, pem: Path) -> None:
    check_trust_anchors([f"{pem}:components=fw"])
    bad = tmp_path / "bad.pem"
    bad.write_text("not a key")
    for spec, named in ((str(tmp_path / "gone.pem"), "gone.pem"), (str(bad), "bad.pem"),
                        (f"{pem}:colour=red", "colour")):
        with pytest.raises(CliError, match=named) as info:
            check_trust_anchors([spec])
        assert info.value.code == EXIT_USAGE


@pytest.mark.parametrize("problem", ["missing", "not a key"])
def test_cluster_up_refuses_a_bad_anchor_before_starting_anything(tmp_path: Path, problem: str) -> None:
    anchor = tmp_path / "ci.pem"
    if problem == "not a key":
        anchor.write_text("-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n")
    data = tmp_path / "c"
    out = run_cli("cluster", "up", "--nodes", "1", "--data", str(data), "--trust-anchor", str(anchor))
    assert out.returncode == EXIT_USAGE, out.stdout + out.stderr
    assert str(anchor) in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and out.stdout == ""
    assert not data.exists()


@pytest.mark.slow
def test_the_anchors_given_to_cluster_up_end_up_in_the_ledger(tmp_path: Path, pem: Path) -> None:
    data = tmp_path / "c"
    up = ClusterUp(data, extra=["--trust-anchor", f"{pem}:components=fw"])
    try:
        doc = up.wait_up()
        assert doc["trust_anchors"] == [f"{pem}:components=fw"]
        endpoint = doc["nodes"][0]["endpoints"]["consensus"]

        async def anchors() -> list[pb.TrustAnchor]:
            async with insecure_channel(endpoint) as channel:
                stub = pb_grpc.ReleasesStub(channel)

                async def probe() -> list[pb.TrustAnchor] | None:
                    reply = await stub.TrustAnchors(pb.TrustAnchorsRequest(), timeout=2)
                    return list(reply.anchors) or None

                return await wait_for(probe, 30, "the trust anchors in the ledger")

        [anchor] = asyncio.run(anchors())
        assert (anchor.public_key_pem, list(anchor.components)) == (pem.read_bytes(), ["fw"])
    finally:
        up.stop()
