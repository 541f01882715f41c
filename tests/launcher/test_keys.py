"""``fleetsuit cluster keys``: the nodes' block-signing keys (0600, the
format a consensus process writes) and anchors.json made ahead of a
deployment; a rerun keeps every key; bad ids and a directory that cannot be
written are refused naming them; and a consensus process started with
``--key-file`` from that directory signs blocks that verify against that
anchors.json."""

from __future__ import annotations

import argparse
import json
import stat
import sys
from pathlib import Path

import pytest

from fleetsuit.cli import EXIT_FAILED, EXIT_USAGE, CliError
from fleetsuit.grpcutil import insecure_channel
from fleetsuit.v1 import consensus_pb2 as pb
from fleetsuit.v1 import consensus_pb2_grpc as pb_grpc
from launcher import cli as launcher_cli
from launcher import keys_cli
from launcher.cluster import spawn
from services.consensus import cli as consensus_cli
from services.consensus.convert import block_from_pb
from services.consensus.ledger.block import ChainError, verify_chain
from services.consensus.ledger.certify import Anchors, NodeKey, verify_certified_chain
from tests.support.ports import free_port
from tests.support.procs import stop_processes
from tests.support.wait import wait_for

IDS = ["fleetsuit-0", "fleetsuit-1", "fleetsuit-2"]


def _parser() -> argparse.ArgumentParser:
    """``fleetsuit`` as launcher/main.py builds it: the ``cluster`` group
    shared by the consensus service's commands, ``cluster up`` and ``keys``."""
    parser = argparse.ArgumentParser(prog="fleetsuit")
    sub = parser.add_subparsers(dest="command")
    sub.required = True
    for module in (consensus_cli, launcher_cli, keys_cli):
        module.register(sub)
    return parser


def keys(*argv: str) -> int:
    args = _parser().parse_args(["cluster", "keys", *argv])
    return int(args.func(args))


def _anchors(out: Path) -> Anchors:
    return Anchors.from_json((out / "anchors.json").read_text())


def test_keys_are_written_0600_and_the_anchors_hold_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "secret"
    assert keys("--node-ids", ",".join(IDS), "--cluster-id", "fs-prod", "--out", str(out), "--json") == 0
    doc = json.loads(capsys.readouterr().out)
    assert [k["id"] for k in doc["keys"]] == IDS and all(k["created"] for k in doc["keys"])
    assert sorted(p.name for p in out.iterdir()) == ["anchors.json", *(f"{i}.key" for i in IDS)]
    anchors = _anchors(out)
    assert anchors.cluster_id == "fs-prod"
    for node_id in IDS:
        path = out / f"{node_id}.key"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8 PEM
        assert anchors.keys[node_id] == NodeKey.load_or_create(path).public
    assert len(set(anchors.keys.values())) == 3
    assert stat.S_IMODE(out.stat().st_mode) == 0o700


def test_a_rerun_keeps_every_key_and_adds_the_new_nodes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "secret"
    keys("--node-ids", ",".join(IDS), "--cluster-id", "fs-prod", "--out", str(out))
    before = {i: (out / f"{i}.key").read_bytes() for i in IDS}
    capsys.readouterr()
    assert keys("--node-ids", ",".join([*IDS, "fleetsuit-3"]), "--cluster-id", "fs-prod", "--out", str(out)) == 0
    text = capsys.readouterr().out
    assert text.count("(kept)") == 3 and text.count("(created)") == 1
    assert {i: (out / f"{i}.key").read_bytes() for i in IDS} == before
    assert sorted(_anchors(out).keys) == [*IDS, "fleetsuit-3"]
    # Fewer ids: the anchors name those only; no key file is removed.
    keys("--node-ids", "fleetsuit-0", "--cluster-id", "fs-prod", "--out", str(out))
    assert sorted(_anchors(out).keys) == ["fleetsuit-0"]
    assert len(list(out.glob("*.key"))) == 4


def test_the_anchors_name_the_voters_while_keys_are_made_for_every_ordinal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "secret"
    every = [*IDS, "fleetsuit-3", "fleetsuit-4"]
    assert keys("--node-ids", ",".join(every), "--voters", ",".join(IDS), "--cluster-id", "c",
                "--out", str(out)) == 0
    assert "voters fleetsuit-0, fleetsuit-1, fleetsuit-2" in capsys.readouterr().out
    assert sorted(p.stem for p in out.glob("*.key")) == every
    anchors = _anchors(out)
    assert sorted(anchors.keys) == IDS
    assert anchors.keys["fleetsuit-2"] == NodeKey.load_or_create(out / "fleetsuit-2.key").public
    with pytest.raises(CliError, match="--voters: fleetsuit-9 not among --node-ids") as refused:
        keys("--node-ids", ",".join(IDS), "--voters", "fleetsuit-0,fleetsuit-9", "--cluster-id", "c",
             "--out", str(out))
    assert refused.value.code == EXIT_USAGE
    with pytest.raises(CliError, match="--voters: 'a/b' is not a node id"):
        keys("--node-ids", ",".join(IDS), "--voters", "a/b", "--cluster-id", "c", "--out", str(out))


def test_a_key_written_by_a_consensus_process_is_kept_and_anchored(tmp_path: Path) -> None:
    out = tmp_path / "secret"
    own = NodeKey.load_or_create(out / "fleetsuit-0.key")
    keys("--node-ids", "fleetsuit-0", "--cluster-id", "c", "--out", str(out))
    assert _anchors(out).keys == {"fleetsuit-0": own.public}


@pytest.mark.parametrize(
    ("node_ids", "named"),
    [
        ("fleetsuit-0,../etc/passwd", "'../etc/passwd' is not a node id"),
        ("fleetsuit-0,a/b", "'a/b' is not a node id"),
        ("fleetsuit-0,.hidden", "'.hidden' is not a node id"),
        ("fleetsuit-0,fleetsuit-0", "fleetsuit-0 given more than once"),
        (" , ", "give at least one node id"),
        ("x" * 129, "is not a node id"),
    ],
)
def test_a_bad_node_id_is_refused_before_anything_is_written(
    tmp_path: Path, node_ids: str, named: str
) -> None:
    out = tmp_path / "secret"
    with pytest.raises(CliError) as refused:
        keys("--node-ids", node_ids, "--cluster-id", "c", "--out", str(out))
    assert refused.value.code == EXIT_USAGE and named in str(refused.value)
    assert not out.exists()


def test_a_bad_cluster_id_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CliError, match="--cluster-id: 'a b' is not a cluster id") as refused:
        keys("--node-ids", "n1", "--cluster-id", "a b", "--out", str(tmp_path / "k"))
    assert refused.value.code == EXIT_USAGE


def test_a_directory_that_cannot_be_written_is_refused_naming_it(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(CliError, match=f"--out {blocker} is not a directory") as refused:
        keys("--node-ids", "n1", "--cluster-id", "c", "--out", str(blocker))
    assert refused.value.code == EXIT_FAILED
    below = blocker / "keys"
    with pytest.raises(CliError, match=f"cannot write the keys to {below}: Not a directory"):
        keys("--node-ids", "n1", "--cluster-id", "c", "--out", str(below))
    assert blocker.read_text() == "not a directory"


def test_an_existing_file_that_is_not_a_key_is_refused_and_left_alone(tmp_path: Path) -> None:
    out = tmp_path / "secret"
    out.mkdir()
    (out / "n1.key").write_text("garbage")
    with pytest.raises(CliError, match=f"{out / 'n1.key'}: not a node key"):
        keys("--node-ids", "n1", "--cluster-id", "c", "--out", str(out))
    assert (out / "n1.key").read_text() == "garbage"
    assert not (out / "anchors.json").exists()


def test_keys_joins_the_shared_cluster_group() -> None:
    parser = _parser()
    assert parser.parse_args(["cluster", "keys", "--node-ids", "a", "--cluster-id", "c", "--out", "d"]).func \
        is keys_cli.cmd_keys
    assert parser.parse_args(["cluster", "remove", "--endpoint", "h:1", "--node-id", "a"]).func \
        is consensus_cli.cmd_cluster_remove


@pytest.mark.slow
@pytest.mark.asyncio
async def test_a_node_started_with_its_key_file_signs_blocks_that_verify_against_the_anchors(
    tmp_path: Path,
) -> None:
    out = tmp_path / "secret"  # what the Secret holds, mounted at /keys
    # Keys for three ordinals; one voter runs (a cluster of one).
    keys("--node-ids", ",".join(IDS), "--voters", "fleetsuit-0", "--cluster-id", "fs-keys", "--out", str(out))
    key_file = out / "fleetsuit-0.key"
    pem = key_file.read_bytes()
    address = f"127.0.0.1:{free_port()}"
    data = tmp_path / "data"
    data.mkdir()
    proc = spawn([sys.executable, "-m", "services.consensus", "--node-id", "fleetsuit-0", "--listen", address,
                  "--data", str(data), "--cluster-id", "fs-keys", "--key-file", str(key_file)],
                 tmp_path / "consensus.log")
    try:
        async with insecure_channel(address) as channel:
            stub = pb_grpc.LedgerStub(channel)

            async def committed(i: int) -> pb.SubmitResponse | None:
                entry = pb.LedgerEntry(client_id="keys", request_id=i, app=pb.AppEntry(payload=b"e%d" % i))
                return await stub.Submit(pb.SubmitRequest(entry=entry), timeout=5)

            last = None
            for i in range(1, 6):
                last = await wait_for(lambda i=i: committed(i), 60, f"entry {i} committed")
            assert last is not None

            async def certified() -> pb.StatusResponse | None:
                s = await stub.Status(pb.StatusRequest(), timeout=2)
                return s if s.certified_height >= last.block_height else None

            status = await wait_for(certified, 60, "every block certified")
            blocks = [block_from_pb(b) async for b in stub.ExportBlocks(
                pb.ExportRequest(from_height=1, certified_only=True))]
        anchors = _anchors(out)
        assert status.public_key == anchors.keys["fleetsuit-0"]
        verify_chain(blocks)
        assert verify_certified_chain(blocks, anchors) == len(blocks) >= last.block_height
        # Why the anchors name the voters only: with keys of nodes that are
        # not voting, a majority of the anchors never signs.
        keys("--node-ids", ",".join(IDS), "--cluster-id", "fs-keys", "--out", str(tmp_path / "all"))
        with pytest.raises(ChainError, match="a majority needs 2"):
            verify_certified_chain(blocks, Anchors("fs-keys", {
                **_anchors(tmp_path / "all").keys, "fleetsuit-0": anchors.keys["fleetsuit-0"]}))
        assert key_file.read_bytes() == pem and not (data / "node.key").exists()
    finally:
        stop_processes([proc])
