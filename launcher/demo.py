"""``make run``: start a local cluster on loopback (RocksDB under ``--data``),
run the main job against it, print what happened, and stop every process.

The main job is the path of a release as it is built today:
1. before the cluster starts, a CI publisher key (Ed25519) is made; its
   public key is written under ``--data`` and the cluster is started with it
   as its trust anchor, recorded in the ledger at bootstrap (the private key
   stays in this process, as it stays with a CI step);
2. a CI step pushes a 4 MiB firmware release with ``fleetsuit.client``
   (``FleetClient``, the library a pipeline imports): upload to one node's
   dht, envelope built and signed here, release committed;
3. the refusals the cluster makes before commit, each with its code: a push
   signed by an untrusted key (UNTRUSTED_KEY), a stale sequence number
   (STALE_SEQUENCE), a payload nobody uploaded (PAYLOAD_MISSING); and the
   same push re-run, answered with the same release (idempotent);
4. a follower lists the release (linearizable reads);
5. another node's dht serves the payload, digest checked;
6. the leader is killed (SIGKILL): the cluster elects another and the next
   release commits through a survivor;
7. the certified ledger is exported and verified offline against the
   cluster's anchors, and the release's compact proof is checked offline,
   as a device would.

Between 5 and 6, a fleet (``demo_fleet``): an operator enrolls 200
simulated devices, which update to the release through the gateways (each
verifying the envelope against the CI key itself), and the ledger's device
table shows every install.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import random
import re
import shutil
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import grpc

from fleetsuit.cli import CliError
from fleetsuit.client import FleetClient
from fleetsuit.client_errors import FleetError, Refused
from fleetsuit.grpcutil import CHANNEL_OPTIONS
from fleetsuit.release_model import CID_PREFIX, PushResult
from fleetsuit.v1 import consensus_pb2 as pb
from fleetsuit.v1 import consensus_pb2_grpc as pb_grpc
from fleetsuit.v1 import dht_pb2, dht_pb2_grpc
from services.consensus.convert import block_from_pb
from services.consensus.ledger.block import verify_chain
from services.consensus.ledger.certify import Anchors, verify_certified_chain
from services.consensus.ledger.export import read_blocks, write_blocks
from services.consensus.ledger.proof import verify_entry_proof
from suit import keys as suit_keys

from . import preflight
from .cluster import plan_nodes, planned_ports, start_cluster, stop_processes
from .demo_fleet import FleetFailed, run_fleet
from .up import wait_serving

MIB = 1024 * 1024
PAYLOAD_BYTES = 4 * MIB
NEXT_PAYLOAD_BYTES = 256 * 1024
COMPONENT = "firmware"
DEVICE_CLASS = "demo-board"
PUBLISHER_FILE = "ci-publisher.pub.pem"
WAIT_S = 30.0
FLEET_DEVICES = 200
FLEET_TIMEOUT_S = 90.0
CALL_TIMEOUT_S = 10.0
T = TypeVar("T")
_CID = re.compile(r"(sha256:[0-9a-f]{16})[0-9a-f]{48}")


class DemoFailed(RuntimeError):
    """The cluster did not do what the demo shows; the message says what."""


def _until(probe: Callable[[], T | None], timeout_s: float, what: str) -> T:
    """``probe()`` until it returns a true value (errors count as not yet)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            value = probe()
            if value:
                return value
        except (grpc.RpcError, FleetError):
            pass
        time.sleep(0.05)
    raise DemoFailed(f"timed out after {timeout_s:g}s waiting for {what}")


class Nodes:
    """Plain channels to every node's consensus and dht services (the
    release path goes through ``FleetClient``; these are for what a pipeline
    does not do: find the leader, read a blob, export the ledger)."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.ids: list[str] = [n["id"] for n in doc["nodes"]]
        self.endpoints: dict[str, dict[str, str]] = {n["id"]: n["endpoints"] for n in doc["nodes"]}
        self._channels: dict[str, grpc.Channel] = {}

    def _channel(self, endpoint: str) -> grpc.Channel:
        if endpoint not in self._channels:
            self._channels[endpoint] = grpc.insecure_channel(endpoint, options=CHANNEL_OPTIONS)
        return self._channels[endpoint]

    def consensus(self, nid: str) -> str:
        return self.endpoints[nid]["consensus"]

    def ledger(self, nid: str) -> pb_grpc.LedgerStub:
        return pb_grpc.LedgerStub(self._channel(self.consensus(nid)))

    def dht(self, nid: str) -> dht_pb2_grpc.DhtStub:
        return dht_pb2_grpc.DhtStub(self._channel(self.endpoints[nid]["dht"]))

    def status(self, nid: str, timeout_s: float = 1.0) -> pb.StatusResponse:
        answer: pb.StatusResponse = self.ledger(nid).Status(pb.StatusRequest(), timeout=timeout_s)
        return answer

    def leader(self, among: list[str]) -> str | None:
        for nid in among:
            try:
                if self.status(nid, 0.5).role == "leader":
                    return nid
            except grpc.RpcError:
                continue
        return None

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()


def _progress(done: int, total: int) -> None:
    """The upload's progress as plain lines (a pipeline's log has no terminal)."""
    print(f"[ci]   upload {done / MIB:.1f} of {total / MIB:.1f} MiB ({100 * done // max(total, 1)}%)")


def _short(text: str, limit: int = 120) -> str:
    """``text`` with content ids cut to 16 hex digits, and at most ``limit`` characters."""
    text = _CID.sub(r"\1...", text)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _expect_refusal(what: str, code: str, push: Callable[[], PushResult], node: str) -> None:
    try:
        result = push()
    except Refused as exc:
        if exc.code != code:
            raise DemoFailed(f"{what}: refused {exc.code}, not {code}: {exc.message}") from None
        print(f"[{node}] refused before commit: {what}: {exc.code} ({_short(exc.message)})")
        return
    raise DemoFailed(f"{what} was not refused: committed as {result.release_id} at index {result.index}")


def main_job(
    doc: dict[str, Any], ci_key_pem: bytes, rogue_key_pem: bytes, kill: Callable[[str], None], started: float,
    anchor_file: Path,
) -> int:
    """The path of a release on the started cluster; ``started``: when the
    cluster was started (monotonic clock); ``anchor_file``: the CI
    publisher's public key (the devices' trust anchor)."""
    nodes = Nodes(doc)
    ci_node = nodes.ids[0]
    client = FleetClient(nodes.consensus(ci_node), timeout_s=CALL_TIMEOUT_S, retry_deadline_s=WAIT_S)
    clients = [client]
    try:
        leader = _until(lambda: nodes.leader(nodes.ids), WAIT_S, "a leader")
        print(f"leader elected: {leader} ({time.monotonic() - started:.2f}s after start)")

        # 1. The CI publisher's key, in the ledger as its trust anchor.
        anchors_in_ledger = _until(client.trust_anchors, WAIT_S, "the trust anchors in the ledger")
        for anchor in anchors_in_ledger:
            scope = ", ".join((*anchor.components, *anchor.device_classes)) or "any component and device class"
            print(f"trust anchor in the ledger: key {anchor.key_id} (the CI publisher's; {scope}), "
                  f"{time.monotonic() - started:.2f}s after start")

        # 2. CI: push a release with the client library.
        payload = random.Random(7).randbytes(PAYLOAD_BYTES)
        release = f"{COMPONENT}@2"
        print(f"[ci] FleetClient({client.endpoint}) push {release} for {DEVICE_CLASS}: "
              f"{len(payload)} bytes, signed here with Ed25519")

        def push_2() -> PushResult:
            return client.push_release(payload, component=COMPONENT, sequence=2, key_pem=ci_key_pem,
                                       device_class=DEVICE_CLASS, progress=_progress)

        t0 = time.monotonic()
        pushed = push_2()
        took = time.monotonic() - t0
        print(f"[ci] published {pushed.release_id}: block {pushed.block_height}, position {pushed.position} "
              f"(index {pushed.index}); {pushed.payload_size} bytes uploaded, checked and committed in "
              f"{took:.2f}s ({pushed.payload_size / MIB / max(took, 1e-3):.1f} MiB/s end to end)")
        if pushed.duplicate or not pushed.uploaded:
            raise DemoFailed(f"the first push of {release} was not a fresh upload and commit")

        # 3. What the cluster refuses before commit; a re-run is the same release.
        _expect_refusal(f"{COMPONENT}@3 signed by a key the ledger does not trust", "UNTRUSTED_KEY",
                        lambda: client.push_release(payload, component=COMPONENT, sequence=3,
                                                    key_pem=rogue_key_pem, device_class=DEVICE_CLASS),
                        ci_node)
        _expect_refusal(f"{COMPONENT}@1, below the current sequence 2", "STALE_SEQUENCE",
                        lambda: client.push_release(payload, component=COMPONENT, sequence=1,
                                                    key_pem=ci_key_pem, device_class=DEVICE_CLASS),
                        ci_node)
        never = b"firmware bytes nobody uploaded"
        missing = CID_PREFIX + hashlib.sha256(never).hexdigest()
        _expect_refusal(f"{COMPONENT}@3 naming a payload no dht holds", "PAYLOAD_MISSING",
                        lambda: client.push_release(None, component=COMPONENT, sequence=3, key_pem=ci_key_pem,
                                                    device_class=DEVICE_CLASS, payload_cid=missing,
                                                    payload_size=len(never)),
                        ci_node)
        again = push_2()
        if not again.duplicate or (again.release_id, again.index, again.block_height, again.position) != (
                pushed.release_id, pushed.index, pushed.block_height, pushed.position):
            raise DemoFailed(f"the re-run of the push of {release} was not answered with the first release")
        print(f"[ci] the same push re-run: {again.release_id}, block {again.block_height}, position "
              f"{again.position}, duplicate={again.duplicate}, uploaded={again.uploaded} (applied once)")

        # 4. A follower lists it (linearizable reads, through the leader's commit index).
        leader = _until(lambda: nodes.leader(nodes.ids), WAIT_S, "a leader")
        reader = next((n for n in nodes.ids if n not in (leader, ci_node)), None) or \
            next(n for n in nodes.ids if n != leader)
        follower_client = FleetClient(nodes.consensus(reader), timeout_s=CALL_TIMEOUT_S, retry_deadline_s=WAIT_S)
        clients.append(follower_client)
        listed = follower_client.list_releases(component=COMPONENT)
        # Exactly the one release: nothing of the refused pushes was committed.
        if [(r.release_id, r.block_height, r.position) for r in listed] != [
                (release, pushed.block_height, pushed.position)]:
            raise DemoFailed(f"{reader} lists {[r.release_id for r in listed]} for {COMPONENT}, "
                             f"not {release} alone where it was committed")
        r = listed[0]
        print(f"[{reader} follower] lists {r.release_id} (the one release of {COMPONENT}): {r.state}, "
              f"classes {', '.join(r.device_classes)}, payload {_short(r.payload_cid)} ({r.payload_size} bytes), "
              f"signed by {r.signer_key_id}")
        current = follower_client.current_release(COMPONENT, DEVICE_CLASS)
        print(f"[{reader} follower] current release of {COMPONENT} for {DEVICE_CLASS}: {current.release_id}")
        if current.release_id != release:
            raise DemoFailed(f"{reader}'s current release of {COMPONENT} is {current.release_id}, not {release}")

        # 5. Another node's dht serves the payload.
        server = nodes.ids[-1]
        got = bytearray()
        for part in nodes.dht(server).Get(dht_pb2.BlobGetRequest(content_id=pushed.payload_cid), timeout=60):
            got += part.data
        ok = hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
        print(f"[{server} dht] served {len(got)} bytes of {_short(pushed.payload_cid)}, digest matches: {ok}")
        if not ok:
            raise DemoFailed(f"{server}'s dht served other bytes than the payload")

        # 5b. A fleet updates to it through the gateways.
        run_fleet(client, [n["endpoints"]["gateway"] for n in doc["nodes"]], Path(anchor_file),
                  count=FLEET_DEVICES, component=COMPONENT, device_class=DEVICE_CLASS, release_id=release,
                  timeout_s=FLEET_TIMEOUT_S)

        # 6. Kill the leader; the next release commits through a survivor.
        print(f"killing the leader {leader} (SIGKILL) ...")
        killed_at = time.monotonic()
        kill(leader)
        survivors = [n for n in nodes.ids if n != leader]
        new_leader = _until(lambda: nodes.leader(survivors), WAIT_S, "a new leader")
        elected_s = time.monotonic() - killed_at
        via = next((n for n in survivors if n != new_leader), new_leader)
        survivor_client = FleetClient(nodes.consensus(via), timeout_s=CALL_TIMEOUT_S, retry_deadline_s=WAIT_S)
        clients.append(survivor_client)
        after = survivor_client.push_release(
            random.Random(8).randbytes(NEXT_PAYLOAD_BYTES), component=COMPONENT, sequence=3, key_pem=ci_key_pem,
            device_class=DEVICE_CLASS)
        print(f"  new leader {new_leader} ({elected_s * 1000:.0f} ms after the kill); {after.release_id} "
              f"committed through {via} at block {after.block_height} "
              f"({(time.monotonic() - killed_at) * 1000:.0f} ms after the kill)")

        # 7. Offline: the certified ledger against anchors.json, and the release's proof.
        anchors = Anchors.from_json(Path(doc["anchors"]).read_text())
        stub = nodes.ledger(new_leader)
        _until(lambda: nodes.status(new_leader).certified_height >= after.block_height, WAIT_S,
               "certification of the new blocks")
        blocks = [block_from_pb(b) for b in stub.ExportBlocks(pb.ExportRequest(certified_only=True), timeout=60)]
        buf = io.BytesIO()
        write_blocks(buf, blocks)
        chain = list(read_blocks(io.BytesIO(buf.getvalue())))
        head = verify_chain(chain)
        verify_certified_chain(chain, anchors)
        print(f"[offline] exported {len(chain)} blocks ({len(buf.getvalue())} bytes): every hash link and every "
              f"quorum certificate verifies against anchors.json; head {head.hex()[:16]}...")
        raw = survivor_client.proof(pushed.block_height, pushed.position, wait_certified_s=WAIT_S)
        proven = verify_entry_proof(raw, anchors)
        proof = pb.EntryProof.FromString(raw)
        if proven.WhichOneof("kind") != "release_published" or proven.release_published.release_id != release:
            raise DemoFailed(f"the proof of block {pushed.block_height}, position {pushed.position} "
                             f"is not of {release}")
        print(f"[device] proof verified offline: a {len(raw)}-byte proof shows release "
              f"{proven.release_published.release_id} in certified block {proof.height} "
              f"({len(proof.certificate)} signatures, {len(proof.path)} Merkle steps)")
        for nid in survivors:
            s = nodes.status(nid, 2.0)
            print(f"  {nid}: role={s.role} term={s.term} commit={s.commit_index} blocks={s.block_height} "
                  f"certified={s.certified_height}")
        return 0
    finally:
        for c in clients:
            c.close()
        nodes.close()


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
    # The CI publisher's key, made before the cluster starts: the public half
    # is the cluster's trust anchor; the private half stays in this process.
    ci_key = suit_keys.generate(suit_keys.KeyAlgorithm.ED25519)
    rogue_key = suit_keys.generate(suit_keys.KeyAlgorithm.ED25519)
    publisher = data / PUBLISHER_FILE
    try:
        data.mkdir(parents=True, exist_ok=True)
        publisher.write_bytes(suit_keys.public_pem(ci_key.public_key()))
        preflight.check_trust_anchors([str(publisher)])
    except OSError as exc:
        print(f"demo cannot start: cannot write {publisher}: {exc.strerror}", file=sys.stderr)
        return 3
    except CliError as exc:
        print(f"demo cannot start: {exc}", file=sys.stderr)
        return exc.code
    started = time.monotonic()
    doc, procs = start_cluster(args.nodes, data, args.base_port, trust_anchors=[str(publisher)])
    try:
        wait_serving(doc, procs)
    except CliError as exc:
        stop_processes(procs)
        print(f"demo cannot start: {exc}", file=sys.stderr)
        return exc.code
    print(f"started {args.nodes} nodes on 127.0.0.1 (data and logs in {data}/; anchors in {doc['anchors']}; "
          f"trust anchor {publisher})")
    print(json.dumps({n["id"]: n["endpoints"] for n in doc["nodes"]}))

    def kill(node_id: str) -> None:
        pid = next(n for n in doc["nodes"] if n["id"] == node_id)["pids"]["consensus"]
        os.kill(pid, signal.SIGKILL)

    try:
        return main_job(doc, suit_keys.private_pem(ci_key), suit_keys.private_pem(rogue_key), kill, started,
                        publisher)
    except (DemoFailed, FleetFailed, FleetError, grpc.RpcError, ValueError) as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1
    finally:
        stop_processes(procs)
        print("cluster stopped")


if __name__ == "__main__":
    sys.exit(main())
