"""The quorum-certified ledger with real processes: every node signs the
blocks it applies, a majority certificate is kept with each block, and
``fleetsuit ledger verify --anchors`` checks every hash link and certificate
offline, naming the first bad block; an entry proof convinces an offline
device."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from fleetsuit.grpcutil import insecure_channel
from fleetsuit.v1 import consensus_pb2 as pb
from fleetsuit.v1 import consensus_pb2_grpc as pb_grpc
from services.consensus.convert import block_from_pb
from services.consensus.ledger.block import ChainError, verify_chain
from services.consensus.ledger.certify import Anchors, verify_certified_chain
from services.consensus.ledger.export import ExportFormatError, read_blocks, write_blocks
from tests.support.cluster import LocalCluster
from tests.support.wait import wait_for

pytestmark = pytest.mark.slow
CLI = [sys.executable, "-m", "launcher"]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60)


@pytest.mark.asyncio
async def test_certified_export_verifies_and_any_tampering_is_named(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    endpoint = cluster.endpoint("n1")
    anchors = cluster.doc["anchors"]
    async with insecure_channel(endpoint) as channel:
        stub = pb_grpc.LedgerStub(channel)

        async def committed(i: int) -> pb.SubmitResponse | None:
            return await stub.Submit(pb.SubmitRequest(entry=pb.LedgerEntry(
                client_id="t", request_id=i, app=pb.AppEntry(payload=b"release %d" % i))), timeout=5)

        last = None
        for i in range(1, 13):
            last = await wait_for(lambda i=i: committed(i), 30, f"entry {i} committed")
        assert last is not None

        async def certified() -> int | None:
            s = await stub.Status(pb.StatusRequest(), timeout=2)
            return s.certified_height if s.certified_height >= last.block_height else None

        await wait_for(certified, 30, "every block certified")
        status = await stub.Status(pb.StatusRequest(), timeout=2)
        assert len(status.public_key) == 32

    ledger = tmp_path / "ledger.bin"
    assert _cli("ledger", "export", "--endpoint", endpoint, "-o", str(ledger)).returncode == 0
    ok = _cli("ledger", "verify", str(ledger), "--anchors", anchors, "--json")
    assert ok.returncode == 0, ok.stderr
    doc = json.loads(ok.stdout)
    assert doc["certificates_checked"] and doc["blocks"] >= 12

    blocks = list(read_blocks(io.BytesIO(ledger.read_bytes())))
    assert all(len(b.certificate) >= 2 for b in blocks)

    def write(path: Path, new_blocks: list) -> Path:  # type: ignore[type-arg]
        buf = io.BytesIO()
        write_blocks(buf, new_blocks)
        path.write_bytes(buf.getvalue())
        return path

    # A certificate reduced to one signature lacks a majority: named.
    target = blocks[4]
    minority = target.__class__(**{**_fields(target), "certificate": target.certificate[:1]})
    bad = write(tmp_path / "minority.bin", [*blocks[:4], minority, *blocks[5:]])
    out = _cli("ledger", "verify", str(bad), "--anchors", anchors)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert f"height {target.height}" in out.stderr and "majority" in out.stderr

    # A forged signature does not count.
    forged_cert = tuple((nid, bytes(64)) for nid, _ in target.certificate)
    forged = target.__class__(**{**_fields(target), "certificate": forged_cert})
    bad = write(tmp_path / "forged.bin", [*blocks[:4], forged, *blocks[5:]])
    out = _cli("ledger", "verify", str(bad), "--anchors", anchors)
    assert out.returncode != 0 and f"height {target.height}" in out.stderr

    # Every single flipped byte is caught (hash, link, record or certificate),
    # checked in process for every position, and through the CLI for a few.
    raw = ledger.read_bytes()
    loaded = Anchors.from_json(Path(anchors).read_text())
    for position in range(len(raw)):
        flipped = bytearray(raw)
        flipped[position] ^= 0x01
        with pytest.raises((ChainError, ExportFormatError)):
            chain = list(read_blocks(io.BytesIO(bytes(flipped))))
            verify_chain(chain)
            verify_certified_chain(chain, loaded)
    for position in (len(raw) // 3, len(raw) - 5):
        flipped = bytearray(raw)
        flipped[position] ^= 0x01
        path = tmp_path / "flipped.bin"
        path.write_bytes(bytes(flipped))
        out = _cli("ledger", "verify", str(path), "--anchors", anchors)
        assert out.returncode != 0 and "Traceback" not in out.stderr
        assert "block" in out.stderr or "record" in out.stderr


@pytest.mark.asyncio
async def test_entry_proof_convinces_an_offline_device(cluster: LocalCluster, tmp_path: Path) -> None:
    endpoint = cluster.endpoint("n2")
    anchors = cluster.doc["anchors"]
    async with insecure_channel(endpoint) as channel:
        stub = pb_grpc.LedgerStub(channel)
        resp = await wait_for(lambda: stub.Submit(pb.SubmitRequest(entry=pb.LedgerEntry(
            client_id="ci", request_id=1, app=pb.AppEntry(payload=b"firmware 1.2.3"))), timeout=5),
            30, "the entry committed")

        async def certified() -> bool | None:
            s = await stub.Status(pb.StatusRequest(), timeout=2)
            return True if s.certified_height >= resp.block_height else None

        await wait_for(certified, 30, "the block certified")
        block = block_from_pb(await stub.GetBlock(pb.GetBlockRequest(height=resp.block_height)))
        position = next(i for i, raw in enumerate(block.entries)
                        if pb.LedgerEntry.FromString(raw).client_id == "ci")

    proof = tmp_path / "proof.bin"
    out = _cli("ledger", "prove", "--endpoint", endpoint, "--height", str(resp.block_height),
               "--position", str(position), "-o", str(proof))
    assert out.returncode == 0, out.stderr
    ok = _cli("ledger", "verify-proof", str(proof), "--anchors", anchors, "--json")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["client_id"] == "ci"
    text = _cli("ledger", "verify-proof", str(proof), "--anchors", anchors)
    assert text.returncode == 0 and f"is in certified block {resp.block_height}" in text.stdout

    tampered = pb.EntryProof.FromString(proof.read_bytes())
    tampered.entry = pb.LedgerEntry(client_id="ci", request_id=1,
                                    app=pb.AppEntry(payload=b"firmware 6.6.6")).SerializeToString()
    bad = tmp_path / "tampered.bin"
    bad.write_bytes(tampered.SerializeToString())
    out = _cli("ledger", "verify-proof", str(bad), "--anchors", anchors)
    assert out.returncode != 0 and "do not lead to the hash" in out.stderr

    stripped = pb.EntryProof.FromString(proof.read_bytes())
    del stripped.certificate[1:]
    bad.write_bytes(stripped.SerializeToString())
    out = _cli("ledger", "verify-proof", str(bad), "--anchors", anchors)
    assert out.returncode != 0 and "majority" in out.stderr


def _fields(block: object) -> dict:  # type: ignore[type-arg]
    return {name: getattr(block, name) for name in block.__dataclass_fields__}  # type: ignore[attr-defined]
