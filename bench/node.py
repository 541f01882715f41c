"""Benchmark of the node supervisor (``launcher/node/supervisor.py``) on a
supervised 3-node loopback cluster of real processes
(``start_cluster(..., supervised=True)``), each figure beside an anchor
measured in the same run, sample by sample:

- **child restart**: SIGKILL one child of a node (dht, manifest, gateway,
  and the consensus process of a follower), then the time from the kill to
  that service answering grpc.health.v1 ``Check`` SERVING again at its
  endpoint, from the process the supervisor started in its place (its new
  pid in node.json; polled every 10 ms). Split in two: kill to the new pid
  in node.json (the supervisor noticing the exit, plus its restart
  backoff) and new pid to SERVING. Anchor, right after each sample: the
  cold start of the same service as a fresh process with the very same
  command, environment, ports and data (the node's supervisor held with
  SIGSTOP meanwhile, its child killed, then resumed): spawn to SERVING.
  The ratio is what supervision adds. The supervisor's backoff doubles at
  each exit in a row unless the child ran ``stable_after_ms``: a child is
  only killed for a sample on its first exit or once it has run that long,
  and the delay the supervisor chose (from its log) is kept per sample;
- **leader stop**: SIGTERM to the supervisor of the leader's node, then
  the time until both survivors answer ``Status`` naming the same new
  leader at the same term (polled every 10 ms). Anchor, interleaved: the
  leader node's supervisor and its consensus child SIGKILLed together (by
  pid from node.json), the same measure: an election after the timeout.
  Between repetitions the stopped node is started again with its same
  supervisor command and waited for until healthy and caught up (after a
  crash, its other three children, orphaned, are stopped first).

The cluster launcher writes each node's node.toml without ``[node]``
supervisor settings, and keeps ``FLEETSUIT_NODE_*`` variables from its
supervisors, so the supervisor's defaults apply; the bench reads the
values in force from each node's resolved config and reports them.

Figures are medians. ``main(results_dir)`` returns them and writes
``results_dir/node-<timestamp>.json``; run standalone with ``python -m
bench.node [RESULTS_DIR]``. ``FLEETSUIT_BENCH_NODE_REPS`` (default 5) sets
the repetitions of each row.
"""

from __future__ import annotations

import calendar
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fleetsuit.v1 import consensus_pb2 as pb
from fleetsuit.v1 import consensus_pb2_grpc as pb_grpc
from launcher.cluster import (
    SUPERVISOR_LOG,
    node_state,
    refresh_pids,
    spawn,
    start_cluster,
    stop_cluster,
    stop_processes,
)
from launcher.layout import NODE_PORT_SPAN, SUPERVISOR_COMMAND
from launcher.node.config import NodeConfig, NodeSettings, identity_variables, load
from launcher.processes import running
from launcher.up import wait_nodes_serving
from tests.support.ports import free_base_port
from tests.support.wait import wait_until

REPS = int(os.environ.get("FLEETSUIT_BENCH_NODE_REPS", "5"))
POLL_S = 0.01
TIMEOUT_S = 60.0
SETTLE_S = 1.0  # after a node is back, before the next sample
RESTART_SERVICES = ("dht", "manifest", "gateway", "consensus")  # consensus: a follower's
SERVING = health_pb2.HealthCheckResponse.SERVING
PROBE_OPTIONS = [
    ("grpc.use_local_subchannel_pool", 1),
    ("grpc.initial_reconnect_backoff_ms", 10),
    ("grpc.min_reconnect_backoff_ms", 10),
    ("grpc.max_reconnect_backoff_ms", 10),
]


# ------------------------------------------------------------------ helpers


class Prober:
    """grpc.health.v1 Check of a whole server at ``endpoint``: a TCP connect
    first (refused at once while nothing listens), then one channel kept
    while it answers (dropped on any error, so no reconnect backoff)."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        host, _, port = endpoint.rpartition(":")
        self.address = (host, int(port))
        self.channel: grpc.Channel | None = None

    def serving(self) -> bool:
        if self.channel is None:
            try:
                socket.create_connection(self.address, timeout=0.2).close()
            except OSError:
                return False
            self.channel = grpc.insecure_channel(self.endpoint, options=PROBE_OPTIONS)
        try:
            reply = health_pb2_grpc.HealthStub(self.channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=0.5)
        except grpc.RpcError:
            self.close()
            return False
        return bool(reply.status == SERVING)

    def close(self) -> None:
        if self.channel is not None:
            self.channel.close()
            self.channel = None


def _child(node: dict[str, Any], name: str) -> dict[str, Any]:
    return dict(((node_state(node) or {}).get("children") or {}).get(name) or {})


def _child_pid(node: dict[str, Any], name: str) -> int | None:
    pid = _child(node, name).get("pid")
    return pid if isinstance(pid, int) else None


def _status(channel: grpc.Channel) -> pb.StatusResponse | None:
    try:
        status: pb.StatusResponse = pb_grpc.LedgerStub(channel).Status(pb.StatusRequest(), timeout=0.5)
    except grpc.RpcError:
        return None
    return status


def _agreed(channels: list[grpc.Channel]) -> tuple[str, int] | None:
    """(leader id, term) when every node asked answers and all agree."""
    seen = set()
    for channel in channels:
        status = _status(channel)
        if status is None or not status.leader_id:
            return None
        seen.add((status.leader_id, status.term))
    return seen.pop() if len(seen) == 1 else None


def _healthy(url: str) -> bool:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=1.0) as reply:
            return bool(reply.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _backoff_chosen(node: dict[str, Any], name: str, old_pid: int) -> float | None:
    """The delay (s) the supervisor's log gave for restarting ``old_pid``."""
    text = (Path(node["data_dir"]) / SUPERVISOR_LOG).read_text(errors="replace")
    found = re.search(rf"{name} \(pid {old_pid}\) exited with code -?\d+ after [\d.]+s; "
                      rf"restart \d+ in ([\d.]+)s", text)
    return float(found.group(1)) if found else None


_STAMP = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)\.(\d{3})Z ")


def _last_stamp(path: Path, needle: str) -> float | None:
    """The time (s, UTC epoch) of the last line of a service log holding ``needle``."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        if needle in line:
            found = _STAMP.match(line)
            if found is None:
                return None
            return calendar.timegm(time.strptime(found.group(1), "%Y-%m-%dT%H:%M:%S")) + int(found.group(2)) / 1000
    return None


def _stop_stages(node: dict[str, Any]) -> dict[str, float | None]:
    """From the logs of a node stopped with SIGTERM (ms): its three stop
    stages (gateway; consensus; dht and manifest to the supervisor's last
    word), and from the consensus stage's start to the handover."""
    data = Path(node["data_dir"])
    stopping = _last_stamp(data / SUPERVISOR_LOG, f"node {node['id']} stopping")
    gateway = _last_stamp(data / SUPERVISOR_LOG, "stopping gateway")
    consensus = _last_stamp(data / SUPERVISOR_LOG, "stopping consensus")
    handed = _last_stamp(data / "consensus.log", "leadership handed over before shutdown")
    consensus_gone = _last_stamp(data / SUPERVISOR_LOG, f"consensus (pid {node['pids'].get('consensus')}) stopped")
    rest = _last_stamp(data / SUPERVISOR_LOG, "stopping dht")
    stopped = _last_stamp(data / SUPERVISOR_LOG, f"node {node['id']} stopped")

    def ms(a: float | None, b: float | None) -> float | None:
        return round((b - a) * 1000, 1) if a is not None and b is not None else None

    return {"signal_to_gateway_stop_ms": ms(stopping, gateway), "gateway_stage_ms": ms(gateway, consensus),
            "consensus_stage_to_handover_ms": ms(consensus, handed),
            "consensus_stage_ms": ms(consensus, consensus_gone), "last_stage_ms": ms(rest, stopped)}


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


class Bench:
    """The cluster, its supervisors' configs, and what the samples need."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.env = {k: v for k, v in os.environ.items() if k not in identity_variables()}
        base = free_base_port(NODE_PORT_SPAN * 4)
        self.doc, self.procs = start_cluster(3, root / "cluster", base, supervised=True)
        self.configs: dict[str, NodeConfig] = {}
        # When each (node, service) child was last (re)started by its
        # supervisor after one of our kills: its uptime decides the backoff.
        self.restarted_at: dict[tuple[str, str], float] = {}

    def start(self) -> float:
        started = time.monotonic()
        wait_nodes_serving(self.doc, self.procs, timeout_s=120)
        self.configs = {n["id"]: load(Path(n["config"]), self.env) for n in self.doc["nodes"]}
        self.channels = {n["id"]: grpc.insecure_channel(n["endpoints"]["consensus"]) for n in self.doc["nodes"]}
        self.leader()
        return time.monotonic() - started

    def close(self) -> None:
        for channel in getattr(self, "channels", {}).values():
            channel.close()
        stop_cluster(self.doc, self.procs)

    def node(self, node_id: str) -> dict[str, Any]:
        return next(n for n in self.doc["nodes"] if n["id"] == node_id)

    def leader(self) -> str:
        leader, _term = wait_until(lambda: _agreed(list(self.channels.values())), TIMEOUT_S, "one agreed leader")
        return str(leader)

    def supervision(self) -> dict[str, Any]:
        """The supervisor settings in force on every node (and the defaults)."""
        per_node = {nid: {"restart_backoff_initial_ms": c.node.restart_backoff_initial_ms,
                          "restart_backoff_max_ms": c.node.restart_backoff_max_ms,
                          "stable_after_ms": c.node.stable_after_ms}
                    for nid, c in self.configs.items()}
        defaults = NodeSettings()
        return {"nodes": per_node, "defaults": {
            "restart_backoff_initial_ms": defaults.restart_backoff_initial_ms,
            "restart_backoff_max_ms": defaults.restart_backoff_max_ms,
            "stable_after_ms": defaults.stable_after_ms}}

    # -------------------------------------------------------------- restart

    def wait_stable(self, node_id: str, name: str) -> float:
        """Sleep until the child last restarted by its supervisor has run
        stable_after_ms (its next restart comes after the initial delay)."""
        since = self.restarted_at.get((node_id, name))
        if since is None:
            return 0.0
        stable_s = self.configs[node_id].node.stable_after_ms / 1000 + 1.0
        wait = since + stable_s - time.monotonic()
        if wait > 0:
            print(f"    (waiting {wait:.0f} s: {name} of {node_id} to have run {stable_s:.0f} s, "
                  "so its supervisor restarts it after the initial delay)", flush=True)
            time.sleep(wait)
        return max(0.0, wait)

    def wait_replaced(self, node: dict[str, Any], name: str, old_pid: int, prober: Prober,
                      started: float) -> tuple[float, float, int]:
        """Poll every POLL_S until node.json names a new pid for ``name``
        and the service answers SERVING: (seconds to the new pid, seconds
        to SERVING, the new pid), both from ``started``."""
        new_pid: int | None = None
        seen_s = 0.0
        while True:
            now = time.monotonic()
            if now - started > TIMEOUT_S:
                raise RuntimeError(f"{name} of {node['id']} not serving again {TIMEOUT_S:.0f} s after its kill")
            if new_pid is None:
                pid = _child_pid(node, name)
                if pid is not None and pid != old_pid:
                    new_pid, seen_s = pid, now - started
            if new_pid is not None and prober.serving():
                return seen_s, time.monotonic() - started, new_pid
            time.sleep(POLL_S)

    def restart_sample(self, node_id: str, name: str) -> dict[str, Any]:
        waited = self.wait_stable(node_id, name)
        node = self.node(node_id)
        old_pid = _child_pid(node, name)
        assert old_pid is not None, f"{name} of {node_id} not in node.json"
        prober = Prober(node["endpoints"][name])
        try:
            started = time.monotonic()
            os.kill(old_pid, signal.SIGKILL)
            seen_s, serving_s, new_pid = self.wait_replaced(node, name, old_pid, prober, started)
        finally:
            prober.close()
        self.restarted_at[(node_id, name)] = started + seen_s
        return {"node": node_id, "service": name, "kill_to_serving_s": round(serving_s, 4),
                "kill_to_respawn_s": round(seen_s, 4), "respawn_to_serving_s": round(serving_s - seen_s, 4),
                "backoff_s": _backoff_chosen(node, name, old_pid), "waited_for_stable_s": round(waited, 1)}

    def cold_start_sample(self, node_id: str, name: str) -> dict[str, Any]:
        """The same service as a fresh process, same command, environment,
        ports and data, its supervisor held (SIGSTOP) meanwhile; then the
        supervisor resumed and its own restart awaited."""
        node = self.node(node_id)
        supervisor = node["supervisor_pid"]
        child = _child(node, name)
        old_pid, command = child["pid"], list(child["command"])
        spec = self.configs[node_id].children[name]
        env = {**self.env, **spec.env}
        prober = Prober(node["endpoints"][name])
        anchor: subprocess.Popen[bytes] | None = None
        os.kill(supervisor, signal.SIGSTOP)
        try:
            os.kill(old_pid, signal.SIGKILL)
            wait_until(lambda: not running(old_pid, command), 10, f"{name} of {node_id} to die", POLL_S)
            log = self.root / f"anchor-{node_id}-{name}.log"
            started = time.monotonic()
            anchor = spawn(command, log, env)
            while True:
                if anchor.poll() is not None:
                    raise RuntimeError(f"the cold-start {name} exited with {anchor.returncode}: see {log}")
                if time.monotonic() - started > TIMEOUT_S:
                    raise RuntimeError(f"the cold-start {name} of {node_id} not serving in {TIMEOUT_S:.0f} s")
                if prober.serving():
                    cold_s = time.monotonic() - started
                    break
                time.sleep(POLL_S)
        finally:
            prober.close()
            if anchor is not None:
                stop_processes([anchor])
            os.kill(supervisor, signal.SIGCONT)
        # The supervisor restarts its own child (after a longer delay: a
        # second exit in a row); wait for it before anything else.
        prober = Prober(node["endpoints"][name])
        try:
            resumed = time.monotonic()
            seen_s, _serving_s, _pid = self.wait_replaced(node, name, old_pid, prober, resumed)
        finally:
            prober.close()
        self.restarted_at[(node_id, name)] = resumed + seen_s
        return {"node": node_id, "service": name, "spawn_to_serving_s": round(cold_s, 4)}

    def restarts(self) -> dict[str, Any]:
        ids = [n["id"] for n in self.doc["nodes"]]
        samples: dict[str, list[dict[str, Any]]] = {s: [] for s in RESTART_SERVICES}
        anchors: dict[str, list[dict[str, Any]]] = {s: [] for s in RESTART_SERVICES}
        for rep in range(REPS):
            for k, name in enumerate(RESTART_SERVICES):
                if name == "consensus":
                    # A follower's, the one whose consensus can be killed soonest.
                    leader = self.leader()
                    followers = [i for i in ids if i != leader]
                    node_id = min(followers, key=lambda i: (self.restarted_at.get((i, name), -1e9),
                                                            (followers.index(i) + rep) % len(followers)))
                else:
                    node_id = ids[(rep + k) % len(ids)]
                sample = self.restart_sample(node_id, name)
                time.sleep(SETTLE_S)
                anchor = self.cold_start_sample(node_id, name)
                time.sleep(SETTLE_S)
                samples[name].append(sample)
                anchors[name].append(anchor)
                print(f"  {name:9} of {node_id} #{rep + 1}: supervised restart {sample['kill_to_serving_s'] * 1000:6.0f} ms"
                      f" (kill -> new pid {sample['kill_to_respawn_s'] * 1000:4.0f} ms, backoff "
                      f"{sample['backoff_s']} s; new pid -> SERVING {sample['respawn_to_serving_s'] * 1000:5.0f} ms)"
                      f" | cold start {anchor['spawn_to_serving_s'] * 1000:6.0f} ms", flush=True)
        rows = {}
        for name in RESTART_SERVICES:
            restart = _median([s["kill_to_serving_s"] for s in samples[name]])
            cold = _median([a["spawn_to_serving_s"] for a in anchors[name]])
            rows[name] = {
                "restart_ms": round(restart * 1000, 1),
                "kill_to_respawn_ms": round(_median([s["kill_to_respawn_s"] for s in samples[name]]) * 1000, 1),
                "respawn_to_serving_ms": round(
                    _median([s["respawn_to_serving_s"] for s in samples[name]]) * 1000, 1),
                "cold_start_ms": round(cold * 1000, 1),
                "ratio": round(restart / cold, 2),
                "backoffs_s": [s["backoff_s"] for s in samples[name]],
                "samples": samples[name], "anchors": anchors[name],
            }
        return rows

    # -------------------------------------------------------------- leader

    def restart_node(self, node_id: str) -> float:
        """Start the node's supervisor again, same command; wait until its
        /healthz answers 200, node.json names its four children and its
        consensus has applied what the leader had committed."""
        node = self.node(node_id)
        started = time.monotonic()
        proc = spawn([*SUPERVISOR_COMMAND, node["config"]], Path(node["data_dir"]) / SUPERVISOR_LOG, self.env)
        old = node["supervisor_pid"]
        self.procs[:] = [p for p in self.procs if p.pid != old] + [proc]
        node["supervisor_pid"] = proc.pid
        node["pids"] = {}

        def back() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"the supervisor of {node_id} exited with {proc.returncode}")
            refresh_pids(self.doc)
            return set(node["pids"]) == set(node["endpoints"]) and _healthy(node["health"])

        wait_until(back, 120, f"{node_id} healthy again")
        leader = self.leader()
        target = wait_until(lambda: getattr(_status(self.channels[leader]), "commit_index", 0), 10, "a commit index")
        wait_until(lambda: getattr(_status(self.channels[node_id]), "applied_index", 0) >= target, 60,
               f"{node_id} caught up")
        return time.monotonic() - started

    def stop_orphans(self, node: dict[str, Any]) -> None:
        """The children a killed supervisor left running, by pid from node.json."""
        state = node_state(node) or {}
        live = [(c["pid"], c.get("command")) for c in (state.get("children") or {}).values()
                if isinstance(c.get("pid"), int) and running(c["pid"], c.get("command"))]
        for pid, _command in live:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for pid, command in live:
            while running(pid, command) and time.monotonic() < deadline:
                time.sleep(0.05)
            if running(pid, command):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def leader_sample(self, mode: str) -> dict[str, Any]:
        leader = self.leader()
        term = _status(self.channels[leader]).term  # type: ignore[union-attr]
        node = self.node(leader)
        refresh_pids(self.doc)
        supervisor = next(p for p in self.procs if p.pid == node["supervisor_pid"])
        consensus_pid = _child_pid(node, "consensus")
        assert consensus_pid is not None
        survivors = [self.channels[i] for i in self.channels if i != leader]
        agreed = None
        started = time.monotonic()
        if mode == "graceful":
            supervisor.send_signal(signal.SIGTERM)
        else:
            supervisor.send_signal(signal.SIGKILL)
            os.kill(consensus_pid, signal.SIGKILL)
        while time.monotonic() - started < TIMEOUT_S:
            agreed = _agreed(survivors)
            if agreed is not None and agreed[0] != leader:
                break
            time.sleep(POLL_S)
        else:
            raise RuntimeError(f"the survivors agreed on no new leader {TIMEOUT_S:.0f} s after the {mode} stop")
        window_s = time.monotonic() - started
        supervisor.wait(timeout=60)
        exited_s = time.monotonic() - started
        stages = _stop_stages(node) if mode == "graceful" else {}
        if mode == "crash":
            self.stop_orphans(node)
        back_s = self.restart_node(leader)
        return {"mode": mode, "old_leader": leader, "new_leader": agreed[0], "old_term": term,
                "new_term": agreed[1], "to_new_leader_s": round(window_s, 4),
                "supervisor_gone_s": round(exited_s, 3) if mode == "graceful" else None,
                "node_back_s": round(back_s, 2), **stages}

    def leader_stops(self) -> dict[str, Any]:
        samples: dict[str, list[dict[str, Any]]] = {"graceful": [], "crash": []}
        for rep in range(REPS):
            for mode in ("graceful", "crash"):
                sample = self.leader_sample(mode)
                samples[mode].append(sample)
                extra = (f" (its logs: gateway stage {sample['gateway_stage_ms']} ms, consensus stage to "
                         f"handover {sample['consensus_stage_to_handover_ms']} ms, consensus stage "
                         f"{sample['consensus_stage_ms']} ms), supervisor exited after "
                         f"{sample['supervisor_gone_s'] * 1000:.0f} ms" if mode == "graceful" else "")
                print(f"  leader {mode:8} #{rep + 1}: {sample['old_leader']} -> {sample['new_leader']} "
                      f"(term {sample['old_term']} -> {sample['new_term']}) in "
                      f"{sample['to_new_leader_s'] * 1000:6.0f} ms{extra}; node back and caught up in "
                      f"{sample['node_back_s']:.1f} s", flush=True)
                time.sleep(SETTLE_S)
        graceful = _median([s["to_new_leader_s"] for s in samples["graceful"]])
        crash = _median([s["to_new_leader_s"] for s in samples["crash"]])
        return {
            "graceful_ms": round(graceful * 1000, 1), "crash_ms": round(crash * 1000, 1),
            "ratio": round(graceful / crash, 2),
            "graceful_supervisor_gone_ms": round(
                _median([s["supervisor_gone_s"] for s in samples["graceful"]]) * 1000, 1),
            "graceful_gateway_stage_ms": _median(
                [s["gateway_stage_ms"] for s in samples["graceful"] if s["gateway_stage_ms"] is not None]),
            "graceful_consensus_stage_to_handover_ms": _median(
                [s["consensus_stage_to_handover_ms"] for s in samples["graceful"]
                 if s["consensus_stage_to_handover_ms"] is not None]),
            "graceful_consensus_stage_ms": _median(
                [s["consensus_stage_ms"] for s in samples["graceful"] if s["consensus_stage_ms"] is not None]),
            "graceful_last_stage_ms": _median(
                [s["last_stage_ms"] for s in samples["graceful"] if s["last_stage_ms"] is not None]),
            "graceful_terms_up": [s["new_term"] - s["old_term"] for s in samples["graceful"]],
            "crash_terms_up": [s["new_term"] - s["old_term"] for s in samples["crash"]],
            "samples": samples,
        }


def _machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "python": sys.version.split()[0],
            "loadavg_start": [round(x, 2) for x in os.getloadavg()]}


def main(results_dir: Path) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="fleetsuit-bench-node-"))
    out: dict[str, Any] = {"machine": _machine(), "reps": REPS, "poll_ms": POLL_S * 1000}
    begun = time.monotonic()
    bench = None
    try:
        bench = Bench(root)
        out["cluster_start_s"] = round(bench.start(), 2)
        out["supervision"] = bench.supervision()
        sup = out["supervision"]["nodes"][next(iter(out["supervision"]["nodes"]))]
        print(f"  3 supervised nodes serving in {out['cluster_start_s']:.1f} s; supervisor settings in force "
              f"(the launcher's node.toml sets none: the defaults): restart_backoff_initial_ms "
              f"{sup['restart_backoff_initial_ms']}, max {sup['restart_backoff_max_ms']}, stable_after_ms "
              f"{sup['stable_after_ms']}", flush=True)
        out["restart"] = bench.restarts()
        out["leader_stop"] = bench.leader_stops()
    finally:
        if bench is not None:
            bench.close()
        shutil.rmtree(root, ignore_errors=True)
    out["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    out["seconds"] = round(time.monotonic() - begun, 1)

    print(f"\nnode supervisor: 3 supervised nodes on loopback, {os.cpu_count()} cores, medians of {REPS}")
    print(f"{'row':34} {'supervised':>11} {'anchor':>11} {'ratio':>6}  notes")
    for name, row in out["restart"].items():
        what = f"{name} restart (a follower's)" if name == "consensus" else f"{name} restart"
        print(f"{what:34} {row['restart_ms']:>8.0f} ms {row['cold_start_ms']:>8.0f} ms {row['ratio']:>6.2f}  "
              f"cold start = anchor; kill -> new pid {row['kill_to_respawn_ms']:.0f} ms (backoffs "
              f"{row['backoffs_s']} s), new pid -> SERVING {row['respawn_to_serving_ms']:.0f} ms")
    ls = out["leader_stop"]
    print(f"{'leader stop: SIGTERM -> new leader':34} {ls['graceful_ms']:>8.0f} ms {ls['crash_ms']:>8.0f} ms "
          f"{ls['ratio']:>6.2f}  anchor = kill -9 of supervisor + consensus; terms up graceful "
          f"{ls['graceful_terms_up']}, crash {ls['crash_terms_up']}")
    print(f"{'':34} graceful, from the node's logs: gateway stage {ls['graceful_gateway_stage_ms']:.0f} ms, "
          f"consensus stage to handover {ls['graceful_consensus_stage_to_handover_ms']:.0f} ms, consensus "
          f"stage {ls['graceful_consensus_stage_ms']:.0f} ms, dht+manifest stage "
          f"{ls['graceful_last_stage_ms']:.0f} ms; supervisor gone after {ls['graceful_supervisor_gone_ms']:.0f} ms")
    print(f"({out['seconds']:.0f} s in all; load average {out['machine']['loadavg_start']} -> "
          f"{out['machine']['loadavg_end']})")
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"node-{time.strftime('%Y%m%dT%H%M%S')}.json"
    path.write_text(json.dumps(out, indent=2))
    print(f"written to {path}")
    return out


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("bench/results"))
