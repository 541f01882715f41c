"""``make run``: start a local cluster on loopback (RocksDB under ``--data``),
run the main job against it, print what happened, and stop every process.

The main job is the path of a release, as far as it is built today:
1. a CI step uploads a firmware payload to one node's dht, builds a SUIT
   envelope for it and signs it (the key stays with CI);
2. another node's manifest service validates the envelope against the trust
   anchor and a device's context; a stale copy (rollback) is refused;
3. the release is committed to the ledger through a follower (forwarded to
   the leader), idempotently;
4. a third node serves the payload from the dht, digest checked;
5. the leader is killed: the cluster elects another and keeps committing;
6. the certified ledger is exported and verified offline against the
   cluster's anchors, and a compact proof of the release is checked offline,
   as a device would.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import json
import os
import random
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

import grpc
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fleetsuit.cli import CliError
from fleetsuit.grpcutil import insecure_channel
from fleetsuit.v1 import consensus_pb2 as pb
from fleetsuit.v1 import consensus_pb2_grpc as pb_grpc
from fleetsuit.v1 import dht_pb2, dht_pb2_grpc, manifest_pb2, manifest_pb2_grpc
from services.consensus.convert import block_from_pb
from services.consensus.ledger.block import verify_chain
from services.consensus.ledger.certify import Anchors, verify_certified_chain
from services.consensus.ledger.export import read_blocks, write_blocks
from services.consensus.ledger.proof import verify_entry_proof
from suit.build import build_envelope, sign_envelope

from . import preflight
from .cluster import plan_nodes, planned_ports, start_cluster, stop_processes
from .up import wait_serving

PAYLOAD_BYTES = 4 * 1024 * 1024
VENDOR_DOMAIN = "example.com"
CLASS_INFO = "fleetsuit-demo-board"


async def _until(probe: Any, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            value = await probe()
            if value:
                return value
        except grpc.RpcError:
            pass
        await asyncio.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {what}")


class Cluster:
    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc
        self.ids = [n["id"] for n in doc["nodes"]]
        self.channels: list[grpc.aio.Channel] = []
        self.ledger = {n["id"]: pb_grpc.LedgerStub(self._ch(n["endpoints"]["consensus"])) for n in doc["nodes"]}
        self.dht = {n["id"]: dht_pb2_grpc.DhtStub(self._ch(n["endpoints"]["dht"])) for n in doc["nodes"]}
        self.manifest = {
            n["id"]: manifest_pb2_grpc.ManifestStub(self._ch(n["endpoints"]["manifest"])) for n in doc["nodes"]
        }

    def _ch(self, endpoint: str) -> grpc.aio.Channel:
        channel = insecure_channel(endpoint)
        self.channels.append(channel)
        return channel

    async def leader(self, among: list[str]) -> str | None:
        for nid in among:
            try:
                s = await self.ledger[nid].Status(pb.StatusRequest(), timeout=0.5)
            except grpc.RpcError:
                continue
            if s.role == "leader":
                return nid
        return None

    async def submit(self, node: str, entry: pb.LedgerEntry, among: list[str]) -> pb.SubmitResponse:
        order = [node] + [n for n in among if n != node]
        for attempt in range(100):
            try:
                answer: pb.SubmitResponse = await self.ledger[order[attempt % len(order)]].Submit(
                    pb.SubmitRequest(entry=entry, timeout_ms=2000), timeout=3)
                return answer
            except grpc.RpcError:
                await asyncio.sleep(0.05)
        raise RuntimeError("submission never committed")

    async def close(self) -> None:
        for ch in self.channels:
            await ch.close()


def _envelope(payload: bytes, cid: str, sequence: int, key: Ed25519PrivateKey) -> bytes:
    description = {
        "manifest-version": 1,
        "manifest-sequence-number": sequence,
        "text": {"manifest-description": f"demo firmware, sequence {sequence}"},
        "components": [{
            "install-id": ["00"],
            "vendor-domain": VENDOR_DOMAIN,
            "class-info": CLASS_INFO,
            "install-digest": {"algorithm-id": "sha256", "digest-bytes": hashlib.sha256(payload).hexdigest()},
            "install-size": len(payload),
            "uri": f"fleetsuit:{cid}",
        }],
    }
    signed: bytes = sign_envelope(build_envelope(description, {}), key)
    return signed


def _device_context(payload: bytes, cid: str, installed: int) -> manifest_pb2.ManifestDeviceContext:
    import uuid

    vendor = uuid.uuid5(uuid.NAMESPACE_DNS, VENDOR_DOMAIN)
    klass = uuid.uuid5(vendor, CLASS_INFO)
    component = manifest_pb2.ManifestComponentId(parts=[b"\x00"])
    return manifest_pb2.ManifestDeviceContext(
        vendor_id=vendor.bytes, class_id=klass.bytes,
        installed=[manifest_pb2.ManifestInstalledSequence(component=component, sequence_number=installed)],
        fetchable=[manifest_pb2.ManifestPayload(
            uri=f"fleetsuit:{cid}", sha256=hashlib.sha256(payload).digest(), size=len(payload))],
    )


async def main_job(doc: dict[str, Any], kill: Any) -> int:
    c = Cluster(doc)
    n1, n2, n3 = c.ids[:3]
    try:
        started = time.monotonic()
        leader = await _until(lambda: c.leader(c.ids), 30, "a leader")
        print(f"leader elected: {leader} ({time.monotonic() - started:.2f}s after start)")

        # 1. CI: upload, build, sign.
        payload = random.Random(7).randbytes(PAYLOAD_BYTES)

        async def chunks() -> Any:
            for i in range(0, len(payload), 256 * 1024):
                yield dht_pb2.BlobPutRequest(data=payload[i:i + 256 * 1024], pin=(i == 0))

        put = await c.dht[n1].Put(chunks(), timeout=60)
        print(f"[ci] payload of {put.size} bytes stored on {n1}'s dht as {put.content_id} "
              f"({put.chunk_count} chunks, {put.replicas_requested} replicas requested)")
        ci_key = Ed25519PrivateKey.generate()
        anchor = manifest_pb2.ManifestTrustAnchor(public_key_der=ci_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))
        envelope = _envelope(payload, put.content_id, 2, ci_key)
        print(f"[ci] SUIT envelope built and signed with Ed25519: {len(envelope)} bytes, sequence 2")

        # 2. Validation by another node's manifest service.
        verdict = await c.manifest[n2].Validate(manifest_pb2.ManifestValidateRequest(
            envelope=envelope, trust_anchors=[anchor], context=_device_context(payload, put.content_id, 1)))
        print(f"[{n2} manifest] update from sequence 1: accepted={verdict.accepted}")
        stale = _envelope(payload, put.content_id, 1, ci_key)
        refused = await c.manifest[n2].Validate(manifest_pb2.ManifestValidateRequest(
            envelope=stale, trust_anchors=[anchor], context=_device_context(payload, put.content_id, 1)))
        code = manifest_pb2.ManifestErrorCode.Name(refused.code)
        print(f"[{n2} manifest] stale envelope (sequence 1 over 1): accepted={refused.accepted} ({code})")
        if not verdict.accepted or refused.accepted:
            raise RuntimeError("manifest validation did not behave")

        # 3. Commit the release through a follower; retry it to show idempotency.
        follower = next(n for n in c.ids if n != leader)
        release = pb.LedgerEntry(client_id="ci-pipeline", request_id=1, release_published=pb.ReleasePublished(
            release_id="demo-2", envelope=envelope, component="00", sequence_number=2,
            payload_cid=put.content_id, payload_size=put.size))
        committed = await c.submit(follower, release, c.ids)
        again = await c.submit(n3, release, c.ids)
        if (again.index, again.block_height) != (committed.index, committed.block_height):
            raise RuntimeError("a retried submission was applied twice")
        print(f"[ledger] release demo-2 committed via {follower}: index {committed.index}, "
              f"block {committed.block_height}; the retry via {n3} got the same answer (applied once)")

        # 4. Another node serves the payload.
        got = bytearray()
        async for part in c.dht[n3].Get(dht_pb2.BlobGetRequest(content_id=put.content_id), timeout=60):
            got += part.data
        ok = hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
        print(f"[{n3} dht] served {len(got)} bytes, digest matches: {ok}")

        # 5. Kill the leader.
        print(f"killing the leader {leader} (SIGKILL) ...")
        killed_at = time.monotonic()
        kill(leader)
        survivors = [n for n in c.ids if n != leader]
        new_leader = await _until(lambda: c.leader(survivors), 30, "a new leader")
        after = await c.submit(new_leader, pb.LedgerEntry(
            client_id="ci-pipeline", request_id=2, app=pb.AppEntry(payload=b"after failover")), survivors)
        print(f"  new leader {new_leader}; first commit after the kill at index {after.index} "
              f"({(time.monotonic() - killed_at) * 1000:.0f} ms after the kill)")

        # 6. Offline verification against the anchors.
        anchors = Anchors.from_json(Path(doc["anchors"]).read_text())
        stub = c.ledger[new_leader]

        async def certified() -> bool:
            s = await stub.Status(pb.StatusRequest(), timeout=1)
            return bool(s.certified_height >= after.block_height)

        await _until(certified, 30, "certification of the new blocks")
        blocks = [block_from_pb(b) async for b in stub.ExportBlocks(pb.ExportRequest(certified_only=True))]
        buf = io.BytesIO()
        write_blocks(buf, blocks)
        chain = list(read_blocks(io.BytesIO(buf.getvalue())))
        head = verify_chain(chain)
        verify_certified_chain(chain, anchors)
        print(f"[offline] exported {len(chain)} blocks ({len(buf.getvalue())} bytes): every hash link and every "
              f"quorum certificate verifies against anchors.json; head {head.hex()[:16]}...")
        block = block_from_pb(await stub.GetBlock(pb.GetBlockRequest(height=committed.block_height)))
        position = next(i for i, raw in enumerate(block.entries)
                        if pb.LedgerEntry.FromString(raw).WhichOneof("kind") == "release_published")
        proof = await stub.GetProof(pb.ProofRequest(height=committed.block_height, position=position))
        proven = verify_entry_proof(proof.SerializeToString(), anchors)
        print(f"[device] a {proof.ByteSize()}-byte proof shows release "
              f"{proven.release_published.release_id} in certified block {proof.height} "
              f"({len(proof.certificate)} signatures, {len(proof.path)} Merkle steps)")
        for nid in survivors:
            s = await c.ledger[nid].Status(pb.StatusRequest(), timeout=2)
            print(f"  {nid}: role={s.role} term={s.term} commit={s.commit_index} blocks={s.block_height} "
                  f"certified={s.certified_height}")
        return 0
    finally:
        await c.close()


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m launcher.demo")
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--data", default="data/run")
    p.add_argument("--base-port", type=int, default=7100)
    args = p.parse_args()
    if args.nodes < 3:
        print("the demo needs at least 3 nodes", file=sys.stderr)
        return 2
    data = Path(args.data)
    try:
        # The same checks as `cluster up`, before the old run is wiped.
        preflight.check_plan(args.nodes, args.base_port)
        preflight.check_not_in_use(data)
        preflight.check_ports_free(planned_ports(plan_nodes(args.nodes, data, args.base_port)))
    except CliError as exc:
        print(f"demo cannot start: {exc}", file=sys.stderr)
        return exc.code
    if data.exists():
        shutil.rmtree(data)
    doc, procs = start_cluster(args.nodes, data, args.base_port)
    try:
        wait_serving(doc, procs)
    except CliError as exc:
        stop_processes(procs)
        print(f"demo cannot start: {exc}", file=sys.stderr)
        return exc.code
    print(f"started {args.nodes} nodes on 127.0.0.1 (data and logs in {data}/; anchors in {doc['anchors']})")
    print(json.dumps({n["id"]: n["endpoints"] for n in doc["nodes"]}))

    def kill(node_id: str) -> None:
        pid = next(n for n in doc["nodes"] if n["id"] == node_id)["pids"]["consensus"]
        os.kill(pid, signal.SIGKILL)

    try:
        return asyncio.run(main_job(doc, kill))
    except (RuntimeError, grpc.RpcError) as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1
    finally:
        stop_processes(procs)
        print("cluster stopped")


if __name__ == "__main__":
    sys.exit(main())
