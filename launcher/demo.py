"""``make run``: a local cluster, a fleet on it, and a release rolled out to
the fleet at a coordinated start time, shown as it happens; then the
cluster and the fleet keep running until Ctrl-C (with ``--once``, the
command exits instead: 0 only if every device reached the release).

1. A CI publisher key (Ed25519) is made; its public key, written under
   ``--data``, is the cluster's trust anchor, recorded in the ledger at
   bootstrap (the private key stays in this process, as with a CI step).
   Three nodes start, each a ``fleetsuit node`` supervisor of its four
   services; ``DATA/cluster.json`` describes them (``fleetsuit status``).
2. An operator enrolls simulated devices (300 by default), which open their
   sessions with the gateways, all on their factory image (``demo_fleet``).
3. A CI step pushes a 4 MiB release with ``FleetClient`` (the library a
   pipeline imports), its rollout starting a few seconds ahead in stages
   (10%, 50%, 100% of the fleet, two seconds apart). The devices are offered
   it at once, install it into their inactive slot, and switch only when
   their stage opens.
4. Meanwhile: what the cluster refuses before commit (an untrusted key, a
   stale sequence number, a payload nobody uploaded), the push re-run (the
   same release), a follower's reads, another node's dht serving the payload.
5. Every second, the devices per version, until every device runs the
   release and every report is committed; no device switched before the
   start time; the ledger's device table agrees.
6. The leader's consensus process is killed: another leader is elected, the
   next release (for another device class) commits through a survivor, and
   the node's supervisor starts the killed process again.
7. The certified ledger and the release's compact proof are verified
   offline against the cluster's anchors, as a device would.
8. Where the Prometheus metrics are (``DATA/prometheus.yml`` scrapes them)
   and the ``fleetsuit status`` command to look at the cluster.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

import grpc

from fleetsuit.cli import CliError
from fleetsuit.client import FleetClient
from fleetsuit.client_errors import FleetError, Refused
from fleetsuit.device_admin import DeviceAdmin
from fleetsuit.grpcutil import CHANNEL_OPTIONS
from fleetsuit.release_model import CID_PREFIX, PushResult
from fleetsuit.settings import ConfigError
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
from .cluster import plan_nodes, planned_ports, refresh_pids, spawn, start_cluster, stop_cluster
from .demo_fleet import FleetFailed, FleetState, FleetThread, enroll_fleet, fleet_config
from .up import wait_nodes_serving, wait_serving, write_description

MIB = 1024 * 1024
PAYLOAD_BYTES = 4 * MIB
NEXT_PAYLOAD_BYTES = 256 * 1024
COMPONENT = "firmware"
DEVICE_CLASS = "demo-board"
OTHER_CLASS = "demo-board-rev-b"  # the release after the failover: not for the fleet
PUBLISHER_FILE = "ci-publisher.pub.pem"
SCRAPE_FILE = "prometheus.yml"
RULES = Path(__file__).resolve().parents[1] / "deploy" / "prometheus" / "rules.yml"
FLEET_DEVICES = 300
START_IN_S = 8.0  # the rollout starts this long after the push
STAGES = (10, 50, 100)
STAGE_INTERVAL_S = 2.0
PROGRESS_S = 1.0  # a progress line this often
ROLLOUT_TIMEOUT_S = 90.0  # after the start time
WAIT_S = 30.0
CALL_TIMEOUT_S = 10.0
RUNNING_LINE_S = 30.0  # while running until Ctrl-C, a line about the fleet this often
EXIT_INTERRUPTED = 130
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


def _iso(unix_ms: int) -> str:
    return datetime.fromtimestamp(unix_ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _short(text: str, limit: int = 120) -> str:
    """``text`` with content ids cut to 16 hex digits, and at most ``limit`` characters."""
    text = _CID.sub(r"\1...", text)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _upload_progress(done: int, total: int) -> None:
    """The upload's progress as plain lines (a pipeline's log has no terminal)."""
    print(f"[ci]   upload {done / MIB:.1f} of {total / MIB:.1f} MiB ({100 * done // max(total, 1)}%)")


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


class Demo:
    """The steps of ``make run`` on a started cluster; ``procs`` are its
    processes (a restarted one is added), ``doc`` its cluster.json."""

    def __init__(self, doc: dict[str, Any], procs: list[subprocess.Popen[bytes]], data: Path,
                 ci_key_pem: bytes, rogue_key_pem: bytes, publisher: Path, devices: int, start_in_s: float) -> None:
        self.doc, self.procs, self.data = doc, procs, data
        self.ci_key_pem, self.rogue_key_pem, self.publisher = ci_key_pem, rogue_key_pem, publisher
        self.devices, self.start_in_s = devices, start_in_s
        self.nodes = Nodes(doc)
        self.ci_node = self.nodes.ids[0]
        self.client = FleetClient(self.nodes.consensus(self.ci_node), timeout_s=CALL_TIMEOUT_S,
                                  retry_deadline_s=WAIT_S)
        self.clients = [self.client]
        self.fleet: FleetThread | None = None
        self.rolled_out = False  # every device runs the release
        self.release = f"{COMPONENT}@2"

    def close(self) -> None:
        for c in self.clients:
            c.close()
        self.nodes.close()

    def stop_fleet(self) -> None:
        if self.fleet is not None:
            fleet, self.fleet = self.fleet, None
            fleet.stop()

    # ------------------------------------------------------------ 1..2: the cluster, the fleet

    def cluster_ready(self, started: float) -> None:
        leader = _until(lambda: self.nodes.leader(self.nodes.ids), WAIT_S, "a leader")
        print(f"leader elected: {leader} ({time.monotonic() - started:.2f}s after start)")
        for anchor in _until(self.client.trust_anchors, WAIT_S, "the trust anchors in the ledger"):
            scope = ", ".join((*anchor.components, *anchor.device_classes)) or "any component and device class"
            print(f"trust anchor in the ledger: key {anchor.key_id} (the CI publisher's; {scope}), "
                  f"{time.monotonic() - started:.2f}s after start")

    def start_fleet(self) -> None:
        took = enroll_fleet(DeviceAdmin(self.client), self.devices, DEVICE_CLASS)
        print(f"[operator] enrolled {self.devices} devices of class {DEVICE_CLASS} in the ledger ({took:.2f}s)")
        gateways = tuple(n["endpoints"]["gateway"] for n in self.doc["nodes"])
        self.fleet = FleetThread(fleet_config(self.devices, gateways, self.publisher, COMPONENT, DEVICE_CLASS))
        started = time.monotonic()
        self.fleet.start()
        state = self.fleet.until(lambda state: state.sessions == self.devices, WAIT_S, "every device in session")
        print(f"[fleet] {state.sessions} simulated devices in session with the gateways "
              f"({time.monotonic() - started:.2f}s): {state.line()}")

    # ------------------------------------------------------------ 3..4: the release

    def push(self) -> tuple[PushResult, int, bytes]:
        payload = random.Random(7).randbytes(PAYLOAD_BYTES)
        start_ms = int((time.time() + self.start_in_s) * 1000)
        print(f"[ci] FleetClient({self.client.endpoint}) push {self.release} for {DEVICE_CLASS}: "
              f"{len(payload)} bytes, signed here with Ed25519; rollout from {_iso(start_ms)} in stages "
              f"{','.join(map(str, STAGES))}% every {STAGE_INTERVAL_S:g}s")
        t0 = time.monotonic()
        pushed = self._push_2(payload, start_ms, progress=True)
        took = time.monotonic() - t0
        print(f"[ci] published {pushed.release_id}: block {pushed.block_height}, position {pushed.position} "
              f"(index {pushed.index}); {pushed.payload_size} bytes uploaded, checked and committed in "
              f"{took:.2f}s ({pushed.payload_size / MIB / max(took, 1e-3):.1f} MiB/s end to end)")
        if pushed.duplicate or not pushed.uploaded:
            raise DemoFailed(f"the first push of {self.release} was not a fresh upload and commit")
        print(f"[rollout] start time {_iso(start_ms)} ({(start_ms / 1000 - time.time()):.1f}s from now): "
              f"no device switches before it")
        return pushed, start_ms, payload

    def _push_2(self, payload: bytes, start_ms: int, progress: bool = False) -> PushResult:
        return self.client.push_release(
            payload, component=COMPONENT, sequence=2, key_pem=self.ci_key_pem, device_class=DEVICE_CLASS,
            start_at=start_ms / 1000, stages=STAGES, stage_interval_s=STAGE_INTERVAL_S,
            progress=_upload_progress if progress else None)

    def _expect_refusal(self, what: str, code: str, push: Callable[[], PushResult]) -> None:
        try:
            result = push()
        except Refused as exc:
            if exc.code != code:
                raise DemoFailed(f"{what}: refused {exc.code}, not {code}: {exc.message}") from None
            print(f"[{self.ci_node}] refused before commit: {what}: {exc.code} ({_short(exc.message)})")
            return
        raise DemoFailed(f"{what} was not refused: committed as {result.release_id} at index {result.index}")

    def refusals_and_reads(self, pushed: PushResult, start_ms: int, payload: bytes) -> None:
        client = self.client
        self._expect_refusal(f"{COMPONENT}@3 signed by a key the ledger does not trust", "UNTRUSTED_KEY",
                             lambda: client.push_release(payload, component=COMPONENT, sequence=3,
                                                         key_pem=self.rogue_key_pem, device_class=DEVICE_CLASS))
        self._expect_refusal(f"{COMPONENT}@1, below the current sequence 2", "STALE_SEQUENCE",
                             lambda: client.push_release(payload, component=COMPONENT, sequence=1,
                                                         key_pem=self.ci_key_pem, device_class=DEVICE_CLASS))
        never = b"firmware bytes nobody uploaded"
        missing = CID_PREFIX + hashlib.sha256(never).hexdigest()
        self._expect_refusal(f"{COMPONENT}@3 naming a payload no dht holds", "PAYLOAD_MISSING",
                             lambda: client.push_release(None, component=COMPONENT, sequence=3,
                                                         key_pem=self.ci_key_pem, device_class=DEVICE_CLASS,
                                                         payload_cid=missing, payload_size=len(never)))
        again = self._push_2(payload, start_ms)
        if not again.duplicate or (again.release_id, again.index, again.block_height, again.position) != (
                pushed.release_id, pushed.index, pushed.block_height, pushed.position):
            raise DemoFailed(f"the re-run of the push of {self.release} was not answered with the first release")
        print(f"[ci] the same push re-run: {again.release_id}, block {again.block_height}, position "
              f"{again.position}, duplicate={again.duplicate}, uploaded={again.uploaded} (applied once)")

        # A follower lists it (linearizable reads, through the leader's commit index).
        leader = _until(lambda: self.nodes.leader(self.nodes.ids), WAIT_S, "a leader")
        reader = next((n for n in self.nodes.ids if n not in (leader, self.ci_node)), None) or \
            next(n for n in self.nodes.ids if n != leader)
        follower = FleetClient(self.nodes.consensus(reader), timeout_s=CALL_TIMEOUT_S, retry_deadline_s=WAIT_S)
        self.clients.append(follower)
        listed = follower.list_releases(component=COMPONENT)
        # Exactly the one release: nothing of the refused pushes was committed.
        if [(r.release_id, r.block_height, r.position) for r in listed] != [
                (self.release, pushed.block_height, pushed.position)]:
            raise DemoFailed(f"{reader} lists {[r.release_id for r in listed]} for {COMPONENT}, "
                             f"not {self.release} alone where it was committed")
        r = listed[0]
        print(f"[{reader} follower] lists {r.release_id} (the one release of {COMPONENT}): {r.state}, "
              f"classes {', '.join(r.device_classes)}, payload {_short(r.payload_cid)} ({r.payload_size} bytes), "
              f"signed by {r.signer_key_id}")
        current = follower.current_release(COMPONENT, DEVICE_CLASS)
        print(f"[{reader} follower] current release of {COMPONENT} for {DEVICE_CLASS}: {current.release_id}")
        if current.release_id != self.release:
            raise DemoFailed(f"{reader}'s current release of {COMPONENT} is {current.release_id}, not {self.release}")

        # Another node's dht serves the payload.
        server = self.nodes.ids[-1]
        got = bytearray()
        for part in self.nodes.dht(server).Get(dht_pb2.BlobGetRequest(content_id=pushed.payload_cid), timeout=60):
            got += part.data
        ok = hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
        print(f"[{server} dht] served {len(got)} bytes of {_short(pushed.payload_cid)}, digest matches: {ok}")
        if not ok:
            raise DemoFailed(f"{server}'s dht served other bytes than the payload")

    # ------------------------------------------------------------ 5: the rollout

    def watch_rollout(self, start_ms: int) -> FleetState:
        assert self.fleet is not None
        policy = pb.RolloutPolicy(start_at_unix_ms=start_ms, stages=STAGES,
                                  stage_interval_ms=int(STAGE_INTERVAL_S * 1000))
        return self.fleet.watch(self.release, policy, PROGRESS_S, self.start_in_s + ROLLOUT_TIMEOUT_S)

    def check_rollout(self, state: FleetState, start_ms: int) -> None:
        first = state.first_switch_at_unix_ms
        if first is None or first < start_ms:
            raise DemoFailed(f"a device switched to {self.release} at {_iso(first or 0)}, before the start time "
                             f"{_iso(start_ms)}")
        print(f"[rollout] every one of the {self.devices} devices runs {self.release}; the first switched at "
              f"{_iso(first)}, {first - start_ms} ms after the start time: no device switched before it", flush=True)
        self.rolled_out = True  # what the demo shows is done: Ctrl-C from here on is a normal stop
        admin = DeviceAdmin(self.client)

        def ledger_agrees() -> Any:
            summary = admin.summary()
            outcome = next((o for o in summary.outcomes if o.release_id == self.release), None)
            on = summary.devices_by_version.get(self.release, 0)
            return summary if outcome is not None and outcome.installed == self.devices == on else None

        try:
            summary = _until(ledger_agrees, WAIT_S, "the ledger's device table")
        except DemoFailed:
            raise DemoFailed(f"the ledger's device table does not show {self.devices} devices on {self.release}: "
                             f"{dict(admin.summary().devices_by_version)}") from None
        outcome = next(o for o in summary.outcomes if o.release_id == self.release)
        print(f"[ledger] device table: {outcome.installed} devices report {self.release} installed, "
              f"{outcome.failed} failed; by version {dict(summary.devices_by_version)}")

    # ------------------------------------------------------------ 6..7: failover, offline proofs

    def failover(self) -> tuple[str, PushResult]:
        """Kill the leader's consensus process; the next release commits
        through a survivor; the killed process starts again."""
        leader = _until(lambda: self.nodes.leader(self.nodes.ids), WAIT_S, "a leader")
        print(f"killing the leader {leader} (SIGKILL) ...")
        node = next(n for n in self.doc["nodes"] if n["id"] == leader)
        refresh_pids(self.doc)
        killed_at = time.monotonic()
        os.kill(node["pids"]["consensus"], signal.SIGKILL)
        survivors = [n for n in self.nodes.ids if n != leader]
        new_leader = _until(lambda: self.nodes.leader(survivors), WAIT_S, "a new leader")
        elected_s = time.monotonic() - killed_at
        via = next((n for n in survivors if n != new_leader), new_leader)
        survivor = FleetClient(self.nodes.consensus(via), timeout_s=CALL_TIMEOUT_S, retry_deadline_s=WAIT_S)
        self.clients.append(survivor)
        after = survivor.push_release(
            random.Random(8).randbytes(NEXT_PAYLOAD_BYTES), component=COMPONENT, sequence=3,
            key_pem=self.ci_key_pem, device_class=OTHER_CLASS)
        print(f"  new leader {new_leader} ({elected_s * 1000:.0f} ms after the kill); {after.release_id} "
              f"(for {OTHER_CLASS}) committed through {via} at block {after.block_height} "
              f"({(time.monotonic() - killed_at) * 1000:.0f} ms after the kill)")
        pid = self._restarted(node)
        def caught_up() -> pb.StatusResponse | None:
            status = self.nodes.status(leader)
            return status if status.applied_index >= after.index else None

        back = _until(caught_up, WAIT_S, f"{leader} back")
        how = "its supervisor restarted it" if "supervisor_pid" in node else "started again with its same command"
        print(f"  {leader}'s consensus: {how} (pid {pid}); {back.role} at commit {back.commit_index}")
        return new_leader, after

    def _restarted(self, node: dict[str, Any]) -> int:
        """The pid of the killed consensus process of ``node`` once it runs
        again: restarted by the node's supervisor, or here (unsupervised)."""
        killed = node["pids"]["consensus"]
        if "supervisor_pid" not in node:
            proc = spawn(node["commands"]["consensus"], Path(node["data_dir"]) / "consensus.log")
            self.procs.append(proc)
            node["pids"]["consensus"] = proc.pid
        else:
            _until(lambda: refresh_pids(self.doc) and node["pids"]["consensus"] != killed, WAIT_S,
                   f"{node['id']}'s supervisor to restart its consensus")
        write_description(self.data, self.doc)
        pid: int = node["pids"]["consensus"]
        return pid

    def offline(self, new_leader: str, pushed: PushResult, after: PushResult) -> None:
        anchors = Anchors.from_json(Path(self.doc["anchors"]).read_text())
        stub = self.nodes.ledger(new_leader)
        _until(lambda: self.nodes.status(new_leader).certified_height >= after.block_height, WAIT_S,
               "certification of the new blocks")
        blocks = [block_from_pb(b) for b in stub.ExportBlocks(pb.ExportRequest(certified_only=True), timeout=60)]
        buf = io.BytesIO()
        write_blocks(buf, blocks)
        chain = list(read_blocks(io.BytesIO(buf.getvalue())))
        head = verify_chain(chain)
        verify_certified_chain(chain, anchors)
        print(f"[offline] exported {len(chain)} blocks ({len(buf.getvalue())} bytes): every hash link and every "
              f"quorum certificate verifies against anchors.json; head {head.hex()[:16]}...")
        raw = self.clients[-1].proof(pushed.block_height, pushed.position, wait_certified_s=WAIT_S)
        proven = verify_entry_proof(raw, anchors)
        proof = pb.EntryProof.FromString(raw)
        if proven.WhichOneof("kind") != "release_published" or proven.release_published.release_id != self.release:
            raise DemoFailed(f"the proof of block {pushed.block_height}, position {pushed.position} "
                             f"is not of {self.release}")
        print(f"[device] proof verified offline: a {len(raw)}-byte proof shows release "
              f"{proven.release_published.release_id} in certified block {proof.height} "
              f"({len(proof.certificate)} signatures, {len(proof.path)} Merkle steps)")
        for nid in self.nodes.ids:
            s = self.nodes.status(nid, 2.0)
            print(f"  {nid}: role={s.role} term={s.term} commit={s.commit_index} blocks={s.block_height} "
                  f"certified={s.certified_height}")

    # ------------------------------------------------------------ 8: where to look

    def where_to_look(self) -> None:
        from . import observe  # imported here: only this step needs the Prometheus helpers

        print("[metrics] Prometheus metrics (GET these):")
        by_node: dict[str, list[str]] = {}
        for node_id, service, url in observe.metrics_addresses(self.doc):
            by_node.setdefault(node_id, []).append(f"{'supervisor' if service == 'node' else service} {url}")
        for node_id, addresses in by_node.items():
            print(f"  {node_id}: {'  '.join(addresses)}")
        scrape = observe.write_scrape_config(self.doc, self.data / SCRAPE_FILE)
        if RULES.exists():
            shutil.copyfile(RULES, self.data / RULES.name)  # prometheus.yml names it beside itself
        print(f"[metrics] scrape configuration for Prometheus: {scrape} (prometheus --config.file={scrape})")
        print(f"[status] the whole cluster: {_fleetsuit()} status --cluster {self.data}")

    def keep_running(self) -> None:
        """Until SIGINT/SIGTERM (KeyboardInterrupt): the cluster serves, the
        fleet's heartbeats go on; a line about the fleet now and then, and
        one for any process that exits."""
        assert self.fleet is not None
        print("running: the cluster and the fleet keep going (heartbeats, sessions); Ctrl-C stops everything",
              flush=True)
        watched = {p.pid: p for p in self.procs if p.poll() is None}
        next_line = time.monotonic() + RUNNING_LINE_S
        while True:
            time.sleep(0.2)
            for pid, proc in list(watched.items()):
                if proc.poll() is not None:
                    del watched[pid]
                    print(f"process {pid} exited with code {proc.returncode}", file=sys.stderr, flush=True)
            if refresh_pids(self.doc):  # a supervisor restarted a child: cluster.json names it
                write_description(self.data, self.doc)
            if time.monotonic() >= next_line:
                next_line += RUNNING_LINE_S
                print(f"[fleet {datetime.now(UTC):%H:%M:%S}] {self.fleet.state().line()}", flush=True)


def _fleetsuit() -> str:
    """How to run ``fleetsuit`` from here: the script beside this Python, else ``python -m launcher``."""
    script = Path(sys.executable).parent / "fleetsuit"
    if not script.exists():
        return f"{sys.executable} -m launcher"
    relative = os.path.relpath(script)
    return str(script) if relative.startswith("..") else relative


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run(demo: Demo, started: float, once: bool) -> int:
    demo.cluster_ready(started)
    demo.start_fleet()
    pushed, start_ms, payload = demo.push()
    demo.refusals_and_reads(pushed, start_ms, payload)
    state = demo.watch_rollout(start_ms)
    demo.check_rollout(state, start_ms)
    new_leader, after = demo.failover()
    demo.offline(new_leader, pushed, after)
    demo.where_to_look()
    if once:
        assert demo.fleet is not None
        state = demo.fleet.state()
        if state.on(demo.release) != demo.devices:
            raise DemoFailed(f"not every device runs {demo.release} at the end: {state.line()}")
        print(f"done: every one of the {demo.devices} devices runs {demo.release}")
        return 0
    demo.keep_running()
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m launcher.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", type=int, default=3, help="nodes of the local cluster (at least 3)")
    p.add_argument("--data", default="data/run", help="its data directory, wiped first (default: data/run)")
    p.add_argument("--base-port", type=int, default=7100, help="node i's ports are base + 10*i + 0..9")
    p.add_argument("--devices", type=int, default=FLEET_DEVICES,
                   help=f"simulated devices in the fleet (default: {FLEET_DEVICES})")
    p.add_argument("--start-in", type=float, default=START_IN_S, metavar="SECONDS",
                   help=f"the rollout starts this long after the push (default: {START_IN_S:g})")
    p.add_argument("--once", action="store_true",
                   help="exit after the rollout: 0 only if every device reached the release")
    p.add_argument("--unsupervised", action="store_true",
                   help="start each node's four services bare instead of under a `fleetsuit node` supervisor")
    args = p.parse_args(argv)
    if args.nodes < 3 or args.devices < 1 or args.start_in <= 0:
        print("the demo needs at least 3 nodes, 1 device and a start time ahead", file=sys.stderr)
        return 2
    data = Path(args.data)
    supervised = not args.unsupervised
    try:
        # The same checks as `cluster up`, before the old run is wiped.
        preflight.check_plan(args.nodes, args.base_port)
        preflight.check_not_in_use(data)
        preflight.check_ports_free(planned_ports(plan_nodes(args.nodes, data, args.base_port), supervised=supervised))
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
        lock = preflight.DataDirLock(data)
        publisher.write_bytes(suit_keys.public_pem(ci_key.public_key()))
        preflight.check_trust_anchors([str(publisher)])
    except OSError as exc:
        print(f"demo cannot start: cannot write {publisher}: {exc.strerror}", file=sys.stderr)
        return 3
    except CliError as exc:
        print(f"demo cannot start: {exc}", file=sys.stderr)
        return exc.code
    old = {s: signal.signal(s, _interrupt) for s in (signal.SIGINT, signal.SIGTERM)}
    procs: list[subprocess.Popen[bytes]] = []
    doc: dict[str, Any] | None = None
    demo: Demo | None = None
    try:
        started = time.monotonic()
        doc, procs = start_cluster(args.nodes, data, args.base_port, trust_anchors=[str(publisher)],
                                   supervised=supervised)
        write_description(data, doc)
        (wait_nodes_serving if supervised else wait_serving)(doc, procs)
        write_description(data, doc)  # with the pids of the supervisors' children
        how = "each a `fleetsuit node` supervisor of its four services" if supervised else "unsupervised"
        print(f"started {args.nodes} nodes on 127.0.0.1, {how} (data and logs in {data}/; anchors in "
              f"{doc['anchors']}; trust anchor {publisher}; cluster file {data / 'cluster.json'})")
        demo = Demo(doc, procs, data, suit_keys.private_pem(ci_key), suit_keys.private_pem(rogue_key),
                    publisher, args.devices, args.start_in)
        return run(demo, started, args.once)
    except KeyboardInterrupt:
        done = demo is not None and demo.rolled_out
        print("stopping (interrupted)" if not done else "stopping", flush=True)
        return 0 if done else EXIT_INTERRUPTED
    except (CliError, ConfigError) as exc:
        print(f"demo cannot start: {exc}", file=sys.stderr)
        return exc.code if isinstance(exc, CliError) else 2
    except (DemoFailed, FleetFailed, FleetError, grpc.RpcError, ValueError) as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1
    finally:
        for s in old:  # the cleanup runs to its end
            signal.signal(s, signal.SIG_IGN)
        try:
            if demo is not None:
                demo.stop_fleet()
                demo.close()
        except FleetFailed as exc:
            print(f"demo: {exc}", file=sys.stderr)
        finally:
            stop_cluster(doc, procs)
            lock.close()
            for s, handler in old.items():
                signal.signal(s, handler)
            print("cluster stopped", flush=True)


if __name__ == "__main__":
    sys.exit(main())
