"""Benchmark of the gateway on loopback clusters of real processes, each
figure beside an anchor measured in the same run (issue 12):

- **sessions**: device sessions held by one gateway process pinned to CPU 0
  (a 1-node cluster; the node's other processes and the load generator on
  CPU 1), each with a heartbeat every 10 s (``bench/session_load.py``: the
  full Hello/Challenge/Register/Welcome with a signature, then heartbeats
  carrying the installed components), ramped 1,000 -> 5,000 -> 10,000.
  At each level: check-in latency p50/p99 (heartbeat written to its echo
  read), sessions held, the gateway's CPU share over the window (from
  /proc), the generator's own event-loop lag. Anchor: the same generator
  against a bare grpc.aio Session servicer that only answers (no ledger, no
  signature check, no decisions), pinned to the same core: the gateway's
  p99 as a ratio of that floor;
- **downloads**: a release's payload (32 MiB) pushed, prefetched by the
  gateway, then 100 concurrent devices (in two client processes,
  ``bench/download_load.py``) each GET the whole payload with aiohttp, in
  4 MiB Range pieces, and with a lean client (HTTP/1.1 by hand, the body
  read into one reused buffer, as the TCP anchor's receiver reads);
  aggregate MB/s. Two anchors in the same run: raw loopback TCP
  (``bench.dht.raw_tcp``, one stream: what the link carries), and the very
  same clients against a bare server sending the same file with
  ``os.sendfile`` and nothing else (what 100 Python devices can take on
  two cores: the gateway's own cost is the difference). The gateway's CPU
  per GiB sent is given beside the TCP sender's;
- **rollout**: 1,000 devices (the fleet simulator, without installs) on a
  3-node cluster with its gateways; a release pushed to start at once: the
  time from the push to every device switched, and from its commit.

Figures are medians. ``main(results_dir)`` returns them and writes
``results_dir/gateway.json``; run standalone with ``python -m bench.gateway
[--quick] [RESULTS_DIR]`` (``--quick``: small counts, to check it runs).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from bench.cpu import cpu_seconds
from bench.download_load import LEAN, DownloadClients, FileServer
from bench.session_load import COMPONENT, DEVICE_CLASS, LoadGen, device_id, device_key
from fleetsuit import device_auth
from fleetsuit.client import FleetClient
from fleetsuit.ledger_client import SubmitBatcher
from fleetsuit.v1 import consensus_pb2 as pb
from fleetsuit.v1 import consensus_pb2_grpc as pb_grpc
from fleetsuit.v1 import gateway_pb2 as gw
from fleetsuit.v1 import gateway_pb2_grpc as gw_grpc
from launcher.cluster import start_cluster, stop_processes
from suit.keys import KeyAlgorithm, generate, private_pem, public_pem
from tests.support.ports import free_base_port
from tests.support.wait import wait_until

from .dht import raw_tcp

MIB = 1024 * 1024
REPO = Path(__file__).resolve().parents[1]
SEED = "fleetsuit-bench-gateway"
GATEWAY_CPU, LOAD_CPU = 0, 1


@dataclass(frozen=True)
class Params:
    levels: tuple[int, ...] = (1_000, 5_000, 10_000)
    window_s: float = 30.0  # three heartbeat rounds per level
    interval_ms: int = 10_000
    generators: int = 1
    payload_bytes: int = 32 * MIB
    download_clients: int = 100
    download_processes: int = 2
    download_rounds: int = 3
    range_bytes: int = 4 * MIB
    rollout_devices: int = 1_000
    rollout_timeout_s: float = 120.0


FULL = Params()
QUICK = Params(levels=(200, 500), window_s=4.0, interval_ms=2_000, payload_bytes=4 * MIB,
               download_clients=10, download_rounds=2, rollout_devices=50, rollout_timeout_s=60.0)


# ------------------------------------------------------------------ helpers


def _pin(pid: int, cpus: set[int]) -> None:
    """Every thread of ``pid`` onto ``cpus`` (sched_setaffinity on a pid
    moves only its main thread; gRPC's threads are others)."""
    if not hasattr(os, "sched_setaffinity") or (os.cpu_count() or 1) <= max(cpus):
        return
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return
    for tid in tids:
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            os.sched_setaffinity(int(tid), cpus)


def _all_cpus() -> set[int]:
    return set(range(os.cpu_count() or 1))


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))] if ordered else 0.0


def _node_pids(doc: dict[str, Any], node: int = 0) -> dict[str, int]:
    return dict(doc["nodes"][node]["pids"])


def _wait_ledger(endpoint: str) -> None:
    with grpc.insecure_channel(endpoint) as channel:
        ledger, releases = pb_grpc.LedgerStub(channel), pb_grpc.ReleasesStub(channel)
        wait_until(lambda: ledger.Status(pb.StatusRequest(), timeout=1).leader_id, 60, "a leader")
        wait_until(lambda: releases.TrustAnchors(pb.TrustAnchorsRequest(), timeout=2).anchors, 60, "the anchors")


def _wait_gateways(endpoints: Iterable[str], count: int) -> None:
    """Until every gateway answers Info and sees ``count`` live gateways."""
    for endpoint in endpoints:
        with grpc.insecure_channel(endpoint) as channel:
            info = gw_grpc.GatewayStub(channel).Info
            wait_until(lambda info=info: len(info(gw.GatewayInfoRequest(), timeout=2).live_gateways) >= count, 60,
                  f"the gateway at {endpoint}")


def enroll(endpoint: str, keys: dict[str, bytes]) -> float:
    """Enrol every device of ``keys`` (id -> public key PEM; accepted,
    class DEVICE_CLASS) through one SubmitBatcher; the seconds it took."""
    entries = [pb.LedgerEntry(client_id=f"device-admin/{dev}", request_id=1, device_enrollment=pb.DeviceEnrollment(
        device_id=dev, action="enroll", device_class=DEVICE_CLASS, public_key_pem=pem)) for dev, pem in keys.items()]

    async def run() -> None:
        async with grpc.aio.insecure_channel(endpoint) as channel:
            batcher = SubmitBatcher(pb_grpc.LedgerStub(channel), timeout_ms=30_000)
            try:
                for start in range(0, len(entries), 2_000):
                    answers = await asyncio.gather(
                        *(batcher.submit(e) for e in entries[start:start + 2_000]), return_exceptions=True)
                    failed = [a for a in answers if isinstance(a, BaseException) or a.error_code]
                    if failed:
                        raise RuntimeError(f"{len(failed)} enrolments failed, first: {failed[0]}")
            finally:
                await batcher.close()

    started = time.monotonic()
    asyncio.run(run())
    return time.monotonic() - started


# ------------------------------------------------------------------ sessions


def run_levels(target: str, server_pid: int, params: Params, what: str) -> list[dict[str, Any]]:
    """Ramp the sessions to each level, then measure a window: latency,
    sessions held, the server's CPU share, the generators' lag."""
    n = params.generators
    share = -(-max(params.levels) // n)
    gens = [LoadGen(target, SEED, i * share, params.interval_ms, LOAD_CPU) for i in range(n)]
    rows = []
    try:
        for level in params.levels:
            for i, gen in enumerate(gens):
                gen.send({"cmd": "level", "count": min(share, level - i * share) if level > i * share else 0})
            ramp = [gen.answer() for gen in gens]
            cpu0, t0 = cpu_seconds(server_pid), time.monotonic()
            for gen in gens:
                gen.send({"cmd": "measure", "seconds": params.window_s})
            windows = [gen.answer() for gen in gens]
            cpu_share = (cpu_seconds(server_pid) - cpu0) / (time.monotonic() - t0)
            latencies = [us / 1000 for w in windows for us in w["latencies_us"]]
            row = {
                "level": level,
                "held": sum(w["held"] for w in windows),
                "ramp_s": max(r["seconds"] for r in ramp),
                "refused": sum(r["failed"] for r in ramp),
                "refusals": {k: v for r in ramp for k, v in r["refusals"].items()},
                "checkins": len(latencies),
                "p50_ms": round(_pct(latencies, 50), 2),
                "p99_ms": round(_pct(latencies, 99), 2),
                "max_ms": round(max(latencies, default=0.0), 2),
                "dropped": sum(w["dropped"] for w in windows),
                "unanswered": sum(w["unanswered"] for w in windows),
                "server_cpu_share": round(cpu_share, 3),
                "generator_cpu_share": round(sum(w["cpu_s"] for w in windows) / params.window_s, 3),
                "generator_lag_p99_ms": max(w["lag_ms"]["p99"] for w in windows),
                "generator_lag_max_ms": max(w["lag_ms"]["max"] for w in windows),
            }
            rows.append(row)
            print(f"  {what}: {row['held']:>6} sessions held, check-in p50 {row['p50_ms']} ms p99 "
                  f"{row['p99_ms']} ms ({row['checkins']} check-ins), server CPU {row['server_cpu_share']:.0%}, "
                  f"generator lag p99 {row['generator_lag_p99_ms']} ms", flush=True)
    finally:
        for gen in gens:
            gen.close()
    return rows


def sessions_anchor(params: Params) -> list[dict[str, Any]]:
    proc = subprocess.Popen([sys.executable, "-m", "bench.session_load", "--echo-server"], cwd=REPO,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        _pin(proc.pid, {GATEWAY_CPU})
        return run_levels(f"127.0.0.1:{port}", proc.pid, params, "bare gRPC")
    finally:
        stop_processes([proc])  # type: ignore[list-item]


# ------------------------------------------------------------------ downloads


def downloads(doc: dict[str, Any], key_pem: bytes, params: Params) -> dict[str, Any]:
    node = doc["nodes"][0]
    payload = os.urandom(params.payload_bytes)
    with FleetClient(node["endpoints"]["consensus"], retry_deadline_s=60) as client:
        pushed = client.push_release(payload, component="bench-download", sequence=1, key_pem=key_pem,
                                     device_class=DEVICE_CLASS)
    url = f"http://{node['downloads']}/v1/payloads/{pushed.payload_cid}"

    def cached() -> bool:
        request = urllib.request.Request(url, method="HEAD")
        try:
            with urllib.request.urlopen(request, timeout=5) as resp:
                return bool(resp.status == 200)
        except urllib.error.HTTPError:
            return False

    started = time.monotonic()
    wait_until(cached, 60, "the gateway's prefetch of the payload")
    prefetch_s = time.monotonic() - started
    gateway_pid = node["pids"]["gateway"]
    cached_file = Path(node["data_dir"]) / "cache" / pushed.payload_cid.split(":", 1)[1]
    bare = FileServer(cached_file)  # the anchor with the same clients: the same file, sendfile, nothing else

    def group(target: str, range_bytes: int) -> DownloadClients:
        return DownloadClients(target, params.download_clients, params.download_processes, range_bytes)

    clients = {"whole": group(url, 0), "range": group(url, params.range_bytes), "lean": group(url, LEAN),
               "bare_whole": group(bare.url, 0), "bare_lean": group(bare.url, LEAN)}
    servers = {mode: bare.proc.pid if mode.startswith("bare") else gateway_pid for mode in clients}
    rounds: dict[str, list[dict[str, float]]] = {mode: [] for mode in clients}
    tcp, tcp_sender_cpu = [], []
    try:
        time.sleep(1.0)  # the clients' start (imports), not timed
        # Each round of every mode beside a TCP run, so all see the same machine.
        for _ in range(params.download_rounds):
            for mode, clients_of_mode in clients.items():
                rounds[mode].append(clients_of_mode.round(servers[mode]))
            transfer = raw_tcp()
            tcp.append(transfer.mb_s)
            tcp_sender_cpu.append(transfer.sender_cpu_s_per_gib)
    finally:
        for clients_of_mode in clients.values():
            clients_of_mode.close()
        bare.close()
    tcp_mb_s = statistics.median(tcp)

    def median(mode: str, key: str = "mb_s") -> float:
        return statistics.median(r[key] for r in rounds[mode])

    return {
        "payload_mib": params.payload_bytes // MIB,
        "clients": params.download_clients,
        "client_processes": params.download_processes,
        "prefetch_seen_s": round(prefetch_s, 2),
        "whole_mb_s": round(median("whole"), 1),
        "range_mb_s": round(median("range"), 1),
        "lean_mb_s": round(median("lean"), 1),
        "raw_tcp_mb_s": round(tcp_mb_s, 1),
        "whole_vs_tcp": round(median("whole") / tcp_mb_s, 3),
        "range_vs_tcp": round(median("range") / tcp_mb_s, 3),
        "lean_vs_tcp": round(median("lean") / tcp_mb_s, 3),
        # The same 100 clients against a bare sendfile server of the same file.
        "bare_whole_mb_s": round(median("bare_whole"), 1),
        "bare_lean_mb_s": round(median("bare_lean"), 1),
        "whole_vs_bare": round(median("whole") / median("bare_whole"), 3),
        "lean_vs_bare": round(median("lean") / median("bare_lean"), 3),
        "server_cpu_s_per_gib": {mode: round(median(mode, "server_cpu_s_per_gib"), 3) for mode in rounds},
        "tcp_sender_cpu_s_per_gib": round(statistics.median(tcp_sender_cpu), 3),
        "clients_cpu_s_per_gib": {mode: round(median(mode, "clients_cpu_s_per_gib"), 3) for mode in rounds},
        "rounds_mb_s": {**{mode: [round(r["mb_s"], 1) for r in rows] for mode, rows in rounds.items()},
                        "tcp": [round(x, 1) for x in tcp]},
    }


# ------------------------------------------------------------------ rollout


ROLLOUT_PAYLOAD_BYTES = 1 * MIB
SIM_SEED = "fleetsuit-bench-rollout"


def _sessions_on(endpoints: list[str]) -> int:
    total = 0
    for endpoint in endpoints:
        with grpc.insecure_channel(endpoint) as channel:
            total += gw_grpc.GatewayStub(channel).Info(gw.GatewayInfoRequest(), timeout=2).sessions
    return total


def rollout(root: Path, anchor: Path, key_pem: bytes, params: Params) -> dict[str, Any]:
    """A 3-node cluster with its gateways, ``rollout_devices`` simulated
    devices (``fleetsuit device simulate --no-install``: they download and
    hash the payload, write no slot) in session; a release of a 1 MiB
    payload pushed to start at once: the time from the push call to the
    last device's switch (the simulator's switch times), and from the push
    call's return (the release committed) to it."""
    from agent.enrol import fleet_public_pems
    from fleetsuit.release_model import release_id_of

    count = params.rollout_devices
    base = free_base_port(40)
    doc, procs = start_cluster(3, root / "cluster3", base, "bench-rollout", trust_anchors=[anchor],
                               extra_args={"gateway": ["--heartbeat-interval-ms", str(params.interval_ms)]})
    sim: subprocess.Popen[str] | None = None
    try:
        consensus = doc["nodes"][0]["endpoints"]["consensus"]
        gateways = [n["endpoints"]["gateway"] for n in doc["nodes"]]
        _wait_ledger(consensus)
        _wait_gateways(gateways, 3)
        enroll(consensus, fleet_public_pems(count, SIM_SEED, "sim-"))
        release_id = release_id_of(COMPONENT, 1)
        summary_path = root / "simulate.json"
        sim = subprocess.Popen(
            [sys.executable, "-m", "launcher", "device", "simulate", "--count", str(count),
             *(a for g in gateways for a in ("--gateway", g)), "--trust-anchor", str(anchor),
             "--seed", SIM_SEED, "--no-install", "--until-release", release_id,
             "--duration", str(params.rollout_timeout_s + 60), "--summary-interval", "2",
             "--json", str(summary_path)],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        wait_until(lambda: _sessions_on(gateways) >= count, 60, f"{count} devices in session")
        payload = os.urandom(ROLLOUT_PAYLOAD_BYTES)
        with FleetClient(consensus, retry_deadline_s=60) as client:
            pushed_at_ms = time.time_ns() // 1_000_000
            pushed_mono = time.monotonic()
            client.push_release(payload, component=COMPONENT, sequence=1, key_pem=key_pem,
                                device_class=DEVICE_CLASS)
            committed_at_ms = time.time_ns() // 1_000_000
        assert sim.stdout is not None
        final_mono = None
        for line in sim.stdout:  # ends when the simulator exits: reached, or its duration over
            if " final " in line and final_mono is None:
                final_mono = time.monotonic()
        sim.wait(timeout=60)
        summary = json.loads(summary_path.read_text())
    finally:
        if sim is not None and sim.poll() is None:
            stop_processes([sim])  # type: ignore[list-item]
        stop_processes(procs)
    switches = [s["at_unix_ms"] for s in summary["switches"] if s["release_id"] == release_id and not s["back"]]
    if not summary["reached"] or len(switches) < count:
        raise RuntimeError(f"the rollout did not reach every device: {summary['versions']}, "
                           f"{len(switches)} switches")
    last = max(switches)
    return {
        "devices": count,
        "gateways": 3,
        "payload_mib": ROLLOUT_PAYLOAD_BYTES / MIB,
        "push_to_all_s": round((last - pushed_at_ms) / 1000, 2),
        "commit_to_all_s": round((last - committed_at_ms) / 1000, 2),
        "push_s": round((committed_at_ms - pushed_at_ms) / 1000, 2),
        "push_to_first_s": round((min(switches) - pushed_at_ms) / 1000, 2),
        "push_to_median_s": round((statistics.median(switches) - pushed_at_ms) / 1000, 2),
        "push_to_reported_s": round(final_mono - pushed_mono, 2) if final_mono else None,
        "failovers": summary["failovers"],
        "reports": summary["reports"],
    }


# ------------------------------------------------------------------ the run


def single_node(root: Path, anchor: Path, key_pem: bytes, params: Params) -> dict[str, Any]:
    """The sessions (gateway, then bare gRPC) and the downloads, on one 1-node cluster."""
    base = free_base_port(20)
    doc, procs = start_cluster(1, root / "cluster1", base, "bench-gateway", trust_anchors=[anchor],
                               extra_args={"gateway": ["--heartbeat-interval-ms", str(params.interval_ms)]})
    try:
        node = doc["nodes"][0]
        _wait_ledger(node["endpoints"]["consensus"])
        _wait_gateways([node["endpoints"]["gateway"]], 1)
        keys = {dev: device_auth.public_pem(device_key(SEED, dev))
                for dev in (device_id("bench-dev", i) for i in range(max(params.levels)))}
        enroll_s = enroll(node["endpoints"]["consensus"], keys)
        print(f"  enrolled {len(keys)} devices in {enroll_s:.1f} s", flush=True)
        pids = _node_pids(doc)
        for name, pid in pids.items():
            _pin(pid, {GATEWAY_CPU} if name == "gateway" else {LOAD_CPU})
        gateway_rows = run_levels(node["endpoints"]["gateway"], pids["gateway"], params, "gateway")
        for pid in pids.values():
            _pin(pid, _all_cpus())  # the downloads use both cores, as the TCP anchor does
        download = downloads(doc, key_pem, params)
    finally:
        stop_processes(procs)
    anchor_rows = sessions_anchor(params)
    return {"enroll_s": round(enroll_s, 1), "gateway": gateway_rows, "bare_grpc": anchor_rows,
            "downloads": download}


def run(root: Path, params: Params) -> dict[str, Any]:
    key = generate(KeyAlgorithm.ED25519)
    anchor = root / "ci.pub.pem"
    anchor.write_bytes(public_pem(key.public_key()))
    key_pem = private_pem(key)
    one = single_node(root, anchor, key_pem, params)
    for row, bare in zip(one["gateway"], one["bare_grpc"], strict=True):
        row["p99_vs_bare_grpc"] = round(row["p99_ms"] / bare["p99_ms"], 2) if bare["p99_ms"] else None
    roll = rollout(root, anchor, key_pem, params)
    top = one["gateway"][-1]
    return {
        "sessions": {"levels": one["gateway"], "bare_grpc": one["bare_grpc"], "enroll_s": one["enroll_s"],
                     "interval_ms": params.interval_ms, "window_s": params.window_s,
                     "max_level_held": top["held"], "max_level_p99_ms": top["p99_ms"],
                     "max_level_p99_vs_bare_grpc": top["p99_vs_bare_grpc"]},
        "downloads": one["downloads"],
        "rollout": roll,
    }


def main(results_dir: Path, params: Params = FULL) -> dict[str, Any]:
    results_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fleetsuit-bench-gateway-") as tmp:
        result = run(Path(tmp), params)
    s, d, r = result["sessions"], result["downloads"], result["rollout"]
    print(f"sessions on one gateway process (one core, heartbeat every {s['interval_ms'] / 1000:g} s): "
          f"{s['max_level_held']} held, check-in p99 {s['max_level_p99_ms']} ms "
          f"({s['max_level_p99_vs_bare_grpc']}x a bare gRPC echo's)")
    print(f"downloads, {d['clients']} devices, {d['payload_mib']} MiB from a warm cache: whole {d['whole_mb_s']} MB/s "
          f"({d['whole_vs_tcp']} of raw TCP's {d['raw_tcp_mb_s']}), 4 MiB ranges {d['range_mb_s']} MB/s "
          f"({d['range_vs_tcp']}); a lean client (one reused buffer, as TCP's) {d['lean_mb_s']} MB/s "
          f"({d['lean_vs_tcp']}); against a bare sendfile server with the same clients: whole "
          f"{d['whole_vs_bare']} ({d['bare_whole_mb_s']} MB/s), lean {d['lean_vs_bare']} ({d['bare_lean_mb_s']} MB/s); "
          f"gateway CPU {d['server_cpu_s_per_gib']['whole']} s/GiB, TCP sender's {d['tcp_sender_cpu_s_per_gib']}")
    print(f"rollout of {r['devices']} devices on {r['gateways']} gateways: push to all switched "
          f"{r['push_to_all_s']} s, commit to the last switch {r['commit_to_all_s']} s")
    (results_dir / "gateway.json").write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    flags = [a for a in sys.argv[1:] if a.startswith("--")]
    rest = [a for a in sys.argv[1:] if not a.startswith("--")]
    main(Path(rest[0]) if rest else Path("bench/results"), QUICK if "--quick" in flags else FULL)
