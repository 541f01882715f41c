"""The committed Kubernetes recipe (deploy/k8s) run on loopback, with this
test playing the kubelet: the StatefulSet's replicas as "pods" of four
containers each, every container started with its own args from
statefulset.yaml (``fleetsuit node --config /etc/fleetsuit/node.toml
--service NAME``, the image's entrypoint being ``python -m launcher``), the
ConfigMap's node.toml, its environment from statefulset.yaml expanded as the
kubelet expands it ($(POD_NAME) from the downward API), and the keys Secret
made by the very commands secret.yaml documents.

Only what loopback forces is changed, as an overlay would change it: with
FLEETSUIT_* variables patched into the containers' env by name (see
``loopback_overlay`` for each one and why), and the mount paths of the
ConfigMap (in the args) and the Secret (in the env values) pointed at
their files here.

Shown: all four services of every pod serve (grpc.health.v1, and the
kubelet's probes as statefulset.yaml declares them); the pods'
consensus agree on a leader, each signing with its key from the Secret;
each pod's dht knows the other pods at their advertised addresses; a
release signed with the publisher key commits (the Secret's publisher key
is the ledger's trust anchor); 30 simulated devices, given one gateway
address, spread over every pod's gateway through the advertised addresses
and update to the release. Then the kubelet's view of a crashed container:
the gateway process of one pod is SIGKILLed, its container's process (the
``--service`` wrapper) exits 128+9, the container is started again with the
same command, serves again (live in every gateway's directory) and its
devices come back to it (the other gateways see its new start time, even
when the outage fell between two of their directory refreshes). Finally every container gets SIGTERM, as a
pod deletion sends it, and exits 0.

The service's pid comes from the wrapper's "started NAME as pid N" line,
checked against /proc: ``run_service`` (one service, no supervisor) writes
no DATA/node.json, which only the four-child supervisor keeps."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import tomllib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from agent.simulator import Simulator, SimulatorConfig
from fleetsuit.client import FleetClient
from fleetsuit.device_admin import DeviceAdmin, DeviceSummary
from fleetsuit.v1 import consensus_pb2 as pb
from fleetsuit.v1 import consensus_pb2_grpc as pb_grpc
from fleetsuit.v1 import dht_pb2, dht_pb2_grpc, gateway_pb2, gateway_pb2_grpc
from launcher.layout import GATEWAY_HTTP_OFFSET, NODE_PORT_SPAN, SERVICES, SUPERVISOR_COMMAND
from launcher.main import main as fleetsuit
from launcher.node.config import identity_variables
from services.consensus.ledger.certify import Anchors
from services.dht.routing import node_id_from_name
from tests.support.fleet import FleetRun, connected, enrol, running, unacked
from tests.support.k8s import K8S, documented_commands, kubelet_env
from tests.support.ports import free_base_port
from tests.support.procs import pid_alive, stop_processes
from tests.support.wait import ready, wait_for, wait_until

pytestmark = pytest.mark.slow

# The entry point of the image (deploy/Dockerfile: ENTRYPOINT ["fleetsuit"]),
# the console script of launcher.main:main: `python -m launcher`.
ENTRYPOINT = list(SUPERVISOR_COMMAND[:3])
NAMESPACE = "fleet"  # only FLEETSUIT_NODE_HOST names it, and loopback replaces that
SERVICE_NAMES = [spec.name for spec in SERVICES]
OFFSETS = {spec.name: spec.port_offset for spec in SERVICES}
DEVICES = 30
SEED = "k8s-pods-it"
PREFIX = "kp-"
COMPONENT = "firmware"
START_S = 240.0  # 12 Python processes and their 12 wrappers on a small machine
STOP_S = 90.0  # above [node] stop_grace_ms (20 s), below terminationGracePeriodSeconds


# ------------------------------------------------------------------ the recipe


def _docs(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]


def _statefulset() -> dict[str, Any]:
    (doc,) = [d for d in _docs("statefulset.yaml") if d["kind"] == "StatefulSet"]
    return doc


def _pod_spec() -> dict[str, Any]:
    spec: dict[str, Any] = _statefulset()["spec"]["template"]["spec"]
    return spec


def _mount(container: dict[str, Any], kind: str) -> str | None:
    """Where ``container`` mounts the pod's volume of ``kind`` (configMap, secret)."""
    names = {v["name"] for v in _pod_spec()["volumes"] if kind in v}
    return next((m["mountPath"] for m in container["volumeMounts"] if m["name"] in names), None)


def _node_toml() -> str:
    """The node.toml of the ConfigMap the pods mount."""
    (name,) = {v["configMap"]["name"] for v in _pod_spec()["volumes"] if "configMap" in v}
    (config,) = [d for d in _docs("configmap.yaml") if d["metadata"]["name"] == name]
    text: str = config["data"]["node.toml"]
    return text


def _patch_env(items: list[dict[str, Any]], patch: dict[str, str]) -> list[dict[str, Any]]:
    """A strategic-merge patch of a container's env list (merged by name):
    an entry of the same name has its value replaced in place, others are
    appended."""
    out = [dict(item) for item in items]
    for name, value in patch.items():
        entry = next((e for e in out if e["name"] == name), None)
        if entry is None:
            out.append({"name": name, "value": value})
        else:
            entry.pop("valueFrom", None)
            entry["value"] = value
    return out


def loopback_overlay(container: dict[str, Any], base_port: int, pods_dir: Path,
                     secret: Path) -> dict[str, str]:
    """Every change loopback forces on the recipe, as an overlay's env patch
    of ``container`` (nothing else of the recipe is changed):

    - FLEETSUIT_STATEFULSET_ADDRESS_TEMPLATE = 127.0.0.1:{ordinal_port}
      (was {pod}.{service}:{port}): no DNS serves the headless Service's pod
      names here, and every "pod" shares one host, so each pod's ports sit
      NODE_PORT_SPAN * ordinal above the base (the node shifts its own too).
    - FLEETSUIT_NODE_HOST = 127.0.0.1 (was $(POD_NAME).fleetsuit.
      $(POD_NAMESPACE).svc, set by statefulset.yaml): the pod's stable name
      does not resolve here; the pods advertise the loopback address instead.
    - FLEETSUIT_NODE_LISTEN_HOST = 127.0.0.1 (was 0.0.0.0): the pods share
      the machine's interfaces; a test binds loopback only.
    - FLEETSUIT_NODE_BASE_PORT = a free range (was 7100): 7100.. may be in
      use on a shared machine, and three pods need 3 * NODE_PORT_SPAN ports.
    - FLEETSUIT_NODE_DATA = <tmp>/pods/$(POD_NAME)/data (was
      /var/lib/fleetsuit, the pod's volume claim): one directory per pod,
      shared by its four containers as the claim is.
    - FLEETSUIT_CONSENSUS_KEY_FILE and FLEETSUIT_CONSENSUS_TRUST_ANCHORS
      (consensus only): the recipe's own values with the Secret's mount
      path (/keys) replaced by the directory the documented commands wrote.

    Not an env change, but the same kind: the ConfigMap's mount path in the
    args (--config /etc/fleetsuit/node.toml) points at node.toml written
    from the ConfigMap (``_container_args``)."""
    patch = {
        "FLEETSUIT_STATEFULSET_ADDRESS_TEMPLATE": "127.0.0.1:{ordinal_port}",
        "FLEETSUIT_NODE_HOST": "127.0.0.1",
        "FLEETSUIT_NODE_LISTEN_HOST": "127.0.0.1",
        "FLEETSUIT_NODE_BASE_PORT": str(base_port),
        "FLEETSUIT_NODE_DATA": f"{pods_dir}/$(POD_NAME)/data",
    }
    keys = _mount(container, "secret")
    if keys is not None:
        for item in container.get("env", []):
            value = str(item.get("value", ""))
            if value.startswith(f"{keys}/"):
                patch[item["name"]] = f"{secret}/{value[len(keys) + 1:]}"
    return patch


def _container_args(container: dict[str, Any], config_dir: Path) -> list[str]:
    mount = _mount(container, "configMap")
    assert mount is not None, f"{container['name']} mounts no ConfigMap"
    return [a.replace(f"{mount}/", f"{config_dir}/") if a.startswith(f"{mount}/") else a
            for a in container["args"]]


def _image_env() -> dict[str, str]:
    """What the container inherits before the pod's env: this machine's
    environment without any FLEETSUIT_* setting (the pod spec turns service
    links off, so Kubernetes injects none) nor what identifies a node, plus
    the image's own ENV (deploy/Dockerfile)."""
    hidden = identity_variables()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETSUIT_") and k not in hidden}
    env.update({"PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1"})
    return env


# ------------------------------------------------------------------ the kubelet


@dataclass
class Container:
    """One container of one pod: its command, its environment, its log."""

    pod: str
    ordinal: int
    name: str
    argv: list[str]
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    children: set[int] = field(default_factory=set)  # every service pid seen, for the cleanup

    def start(self) -> None:
        with open(self.log, "ab") as out:
            out.write(f"--- start {self.starts + 1}: {shlex.join(self.argv)}\n".encode())
            out.flush()
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT, env=self.env)
        self.starts += 1

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def child(self) -> int | None:
        """The pid of the service process the running wrapper started (its
        "started NAME as pid N" line, checked against /proc: a child of this
        wrapper). The wrapper writes no node.json (``run_service``)."""
        assert self.proc is not None
        text = self.log.read_text(errors="replace").rpartition("--- start")[2]
        found = re.findall(rf"started {self.name} as pid (\d+)", text)
        if not found:
            return None
        pid = int(found[-1])
        stat = Path(f"/proc/{pid}/stat").read_text()
        if int(stat.rsplit(")", 1)[1].split()[1]) != self.proc.pid:
            return None
        self.children.add(pid)
        return pid


@dataclass
class Pod:
    name: str
    ordinal: int
    base: int  # this pod's ports: base + offset
    containers: dict[str, Container]

    def address(self, service: str) -> str:
        return f"127.0.0.1:{self.base + OFFSETS[service]}"

    @property
    def downloads(self) -> str:
        return f"127.0.0.1:{self.base + GATEWAY_HTTP_OFFSET}"


def _health(address: str, service: str = "") -> str:
    with grpc.insecure_channel(address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service),
                                                          timeout=2)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


def _status(address: str) -> pb.StatusResponse:
    with grpc.insecure_channel(address) as channel:
        status: pb.StatusResponse = pb_grpc.LedgerStub(channel).Status(pb.StatusRequest(), timeout=2)
    return status


def _gateway_info(address: str) -> gateway_pb2.GatewayInfo:
    with grpc.insecure_channel(address) as channel:
        info: gateway_pb2.GatewayInfo = gateway_pb2_grpc.GatewayStub(channel).Info(
            gateway_pb2.GatewayInfoRequest(), timeout=2)
    return info


def _dht_contacts(pod: Pod) -> dict[bytes, str]:
    """Node id -> address of every contact in ``pod``'s dht routing table:
    FindNode named as sent by the node itself (a node never records itself,
    so the question adds nothing to its table)."""
    own = dht_pb2.DhtContact(node_id=node_id_from_name(pod.name), address=pod.address("dht"))
    with grpc.insecure_channel(pod.address("dht")) as channel:
        reply = dht_pb2_grpc.DhtPeerStub(channel).FindNode(
            dht_pb2.DhtFindNodeRequest(sender=own, target=bytes(32)), timeout=2)
    return {bytes(c.node_id): c.address for c in reply.closer}


def _not_serving(pods: list[Pod]) -> dict[str, str]:
    out = {}
    for pod in pods:
        for name in SERVICE_NAMES:
            try:
                state = _health(pod.address(name))
            except grpc.RpcError as exc:
                state = exc.code().name
            if state != "SERVING":
                out[f"{pod.name}/{name}"] = state
    return out


def _exited(pods: list[Pod]) -> str:
    gone = [f"{c.pod}/{c.name} exited {c.proc.returncode}:\n{c.tail()}" for p in pods
            for c in p.containers.values() if c.proc is not None and c.proc.poll() is not None]
    return "\n".join(gone)


def _outcome(summary: DeviceSummary, release: str) -> tuple[int, int]:
    found = next((o for o in summary.outcomes if o.release_id == release), None)
    return (0, 0) if found is None else (found.installed, found.failed)


def _on(sim: Simulator) -> Counter[str]:
    """Devices in session per gateway id."""
    return Counter(d.agent.runner.stats.gateway_id for d in sim.devices if d.agent.runner.stats.connected)


# ------------------------------------------------------------------ the test


@pytest.mark.asyncio
async def test_the_k8s_recipe_runs_as_pods_on_loopback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    began = time.monotonic()
    phases: dict[str, float] = {}

    def mark(name: str) -> None:
        phases[name] = round(time.monotonic() - began, 1)

    # ------------------------------------------------ the keys Secret, by its own commands
    secret_work = tmp_path / "operator"
    secret_work.mkdir()
    monkeypatch.chdir(secret_work)
    commands = documented_commands()
    assert [c[1:3] for c in commands] == [["cluster", "keys"], ["manifest", "keygen"]], commands
    for command in commands:
        assert fleetsuit(command[1:]) == 0, command
    keygen = commands[1]
    secret = secret_work / next(c[c.index("--out") + 1] for c in commands if "--out" in c)
    publisher_key = (secret_work / keygen[keygen.index("-o") + 1]).read_bytes()
    publisher_pub = secret / "publisher.pub.pem"
    anchors = Anchors.from_json((secret / "anchors.json").read_text())

    # ------------------------------------------------ the ConfigMap, the pods, their containers
    statefulset = _statefulset()
    replicas = statefulset["spec"]["replicas"]
    set_name = statefulset["metadata"]["name"]
    toml = tomllib.loads(_node_toml())
    assert anchors.cluster_id == toml["node"]["cluster_id"]
    config_dir = tmp_path / "configmap"
    config_dir.mkdir()
    (config_dir / "node.toml").write_text(_node_toml())
    base = free_base_port(NODE_PORT_SPAN * replicas)
    pods_dir = tmp_path / "pods"
    pods: list[Pod] = []
    for ordinal in range(replicas):
        name = f"{set_name}-{ordinal}"
        (pods_dir / name / "logs").mkdir(parents=True)
        containers = {}
        for spec in _pod_spec()["containers"]:
            items = _patch_env(spec.get("env", []), loopback_overlay(spec, base, pods_dir, secret))
            env = kubelet_env(items, name, NAMESPACE)
            for key, value in env.items():
                assert "$(" not in value, f"{spec['name']}: {key}={value} is not expanded"
            assert env["FLEETSUIT_NODE_ID"] == name
            argv = [*ENTRYPOINT, *_container_args(spec, config_dir)]
            containers[spec["name"]] = Container(name, ordinal, spec["name"], argv, {**_image_env(), **env},
                                                 pods_dir / name / "logs" / f"{spec['name']}.log")
        assert sorted(containers) == sorted(SERVICE_NAMES)
        pods.append(Pod(name, ordinal, base + NODE_PORT_SPAN * ordinal, containers))
    consensus_env = pods[0].containers["consensus"].env
    assert consensus_env["FLEETSUIT_CONSENSUS_KEY_FILE"] == f"{secret}/{pods[0].name}.key"
    assert consensus_env["FLEETSUIT_CONSENSUS_TRUST_ANCHORS"] == str(publisher_pub)
    everything = [c for p in pods for c in p.containers.values()]

    sim = Simulator(SimulatorConfig(
        # One address, as devices would be given the fleetsuit-api Service:
        # the other gateways are reached at what they advertise.
        count=DEVICES, gateways=(pods[0].address("gateway"),), trust_anchor_paths=(publisher_pub,),
        seed=SEED, id_prefix=PREFIX, components=(COMPONENT,), no_install=True, duration_s=900.0,
        start_spread_ms=2000, summary_interval_s=30.0,
    ))
    fleet = FleetRun(sim)
    stopped: dict[str, int] = {}
    reader: FleetClient | None = None
    try:
        # ------------------------------------------------ podManagementPolicy: Parallel
        for container in everything:
            container.start()

        def all_serving_or_exited() -> bool:
            return bool(_exited(pods)) or not _not_serving(pods)

        await asyncio.to_thread(wait_until, all_serving_or_exited, START_S,
                                "all four services of every pod SERVING", 0.5)
        assert not _exited(pods), _exited(pods)
        mark("serving")
        for container in everything:
            await asyncio.to_thread(wait_until, container.child, 10, f"{container.pod}/{container.name}'s pid")

        def agreed() -> tuple[str, int] | None:
            statuses = [_status(p.address("consensus")) for p in pods]
            seen = {(s.leader_id, s.term) for s in statuses}
            return seen.pop() if len(seen) == 1 and statuses[0].leader_id else None

        leader, _term = await asyncio.to_thread(wait_until, agreed, 60, "one leader agreed by every pod")
        assert leader in {p.name for p in pods}
        for pod in pods:
            status = _status(pod.address("consensus"))
            # Its own key from the Secret, the one anchors.json names.
            assert bytes(status.public_key) == anchors.keys[pod.name], pod.name
            assert status.cluster_id == anchors.cluster_id
            assert {m.node_id: m.address for m in status.members} == {
                p.name: p.address("consensus") for p in pods}
            assert dict(status.services) == {s: pod.address(s) for s in SERVICE_NAMES}, pod.name

        # ------------------------------------------------ each dht knows the others where they said
        def dht_meshed() -> bool:
            for pod in pods:
                others = {node_id_from_name(p.name): p.address("dht") for p in pods if p is not pod}
                contacts = _dht_contacts(pod)
                assert not [a for a in contacts.values() if a.startswith(("0.0.0.0", "[::]"))], contacts
                if contacts != others:
                    return False
            return True

        await asyncio.to_thread(wait_until, dht_meshed, 60, "every dht knowing the other pods at their advertised addresses")
        mark("meshed")

        # ------------------------------------------------ devices enrolled, spread over the gateways
        with FleetClient(pods[0].address("consensus")) as client:
            await asyncio.to_thread(enrol, client, DEVICES, SEED, PREFIX)
            ledger_anchors = await asyncio.to_thread(client.trust_anchors)
        assert [a.public_key_pem.strip() for a in ledger_anchors] == [publisher_pub.read_bytes().strip()]
        await fleet.start(lambda s: connected(s) == DEVICES and set(_on(s)) == {p.name for p in pods},
                          180, f"{DEVICES} sessions, on every pod's gateway")
        mark("sessions")
        for pod in pods:
            info = await asyncio.to_thread(_gateway_info, pod.address("gateway"))
            assert (info.self.gateway_id, info.self.grpc_address, info.self.http_address) == (
                pod.name, pod.address("gateway"), pod.downloads)
            live = {(g.gateway_id, g.grpc_address, g.http_address) for g in info.live_gateways}
            assert live == {(p.name, p.address("gateway"), p.downloads) for p in pods}, pod.name

        # ------------------------------------------------ a release, signed with the publisher key
        with FleetClient(pods[1].address("consensus")) as pusher:
            pushed = await asyncio.to_thread(
                pusher.push_release, f"{COMPONENT} 1 ".encode() * 8192, component=COMPONENT, sequence=1,
                key_pem=publisher_key)
        release = pushed.release_id
        mark("pushed")

        def on_release() -> set[str]:
            return {d for d, r in running(sim, COMPONENT).items() if r == release}

        await wait_for(lambda: ready(fleet.alive() and len(on_release()) == DEVICES and unacked(sim) == 0),
                       240, f"every device on {release}, every report acknowledged", interval_s=0.5)
        reader = FleetClient(pods[2].address("consensus"))
        admin = DeviceAdmin(reader)

        async def recorded() -> DeviceSummary | None:
            summary = await asyncio.to_thread(admin.summary)
            return summary if _outcome(summary, release) == (DEVICES, 0) else None

        await wait_for(recorded, 60, f"{DEVICES} installs of {release} in the ledger", interval_s=0.5)
        mark("updated")

        # ------------------------------------------------ the kubelet restarts a container
        spread = _on(sim)
        victim = next(p for p in pods if p.name == spread.most_common(1)[0][0])
        gateway = victim.containers["gateway"]
        assert gateway.proc is not None
        wrapper = gateway.proc
        service_pid = gateway.child()
        assert service_pid is not None and pid_alive(service_pid)
        served = {d.agent.device_id for d in sim.devices if d.agent.runner.stats.gateway_id == victim.name}
        os.kill(service_pid, signal.SIGKILL)
        code = await asyncio.to_thread(wrapper.wait, 30)
        assert code == 128 + signal.SIGKILL, f"{victim.name}/gateway exited {code}:\n{gateway.tail()}"
        mark("gateway killed")
        await wait_for(lambda: ready(fleet.alive() and connected(sim) == DEVICES and victim.name not in _on(sim)),
                       60, f"the devices of {victim.name} in session with another gateway", interval_s=0.2)
        mark("failed over")

        gateway.start()  # restartPolicy Always: the same command again
        await asyncio.to_thread(wait_until, lambda: _health(victim.address("gateway")) == "SERVING", START_S,
                                f"{victim.name}/gateway serving again", 0.5)
        restarted = await asyncio.to_thread(wait_until, gateway.child, 10, "the restarted gateway's pid")
        assert restarted != service_pid

        def settled() -> bool:
            """Every device served and on the release, the restarted gateway
            live again in every gateway's directory at its advertised
            addresses, and its Info counting the sessions it holds."""
            fleet.alive()
            if connected(sim) != DEVICES or len(on_release()) != DEVICES:
                return False
            for pod in pods:
                info = _gateway_info(pod.address("gateway"))
                live = {(g.gateway_id, g.grpc_address, g.http_address) for g in info.live_gateways}
                if (victim.name, victim.address("gateway"), victim.downloads) not in live:
                    return False
            info = _gateway_info(victim.address("gateway"))
            return info.sessions == _on(sim)[victim.name]

        await asyncio.to_thread(wait_until, settled, 60, "the restarted gateway live everywhere, every device served", 0.5)
        # Its devices come back to it, their primary: the other gateways see
        # its new start time (the outage may fall between two of their
        # directory refreshes, so that it never looked gone).
        def back() -> set[str]:
            return {d.agent.device_id for d in sim.devices if d.agent.runner.stats.gateway_id == victim.name}

        await wait_for(lambda: ready(fleet.alive() and connected(sim) == DEVICES and back() == served), 60,
                       f"the devices of {victim.name} back with it", interval_s=0.2)
        print(f"\n{victim.name}/gateway restarted: its {len(served)} devices back with it ({dict(_on(sim))})",
              file=sys.stderr)
        mark("restarted")
        assert not _not_serving(pods)

        # ------------------------------------------------ pod deletion: SIGTERM to every container
        for container in everything:
            assert container.proc is not None and container.proc.poll() is None, container.tail()
            container.proc.send_signal(signal.SIGTERM)
        for container in everything:
            assert container.proc is not None
            try:
                stopped[f"{container.pod}/{container.name}"] = await asyncio.to_thread(container.proc.wait, STOP_S)
            except subprocess.TimeoutExpired:
                stopped[f"{container.pod}/{container.name}"] = -1
        mark("deleted")
        failed = {k: v for k, v in stopped.items() if v != 0}
        assert not failed, "\n".join(
            f"{c.pod}/{c.name} exited {stopped[f'{c.pod}/{c.name}']}:\n{c.tail()}" for c in everything
            if f"{c.pod}/{c.name}" in failed)
        assert not [pid for c in everything for pid in c.children if pid_alive(pid)], "a service outlived its container"
    finally:
        await fleet.abort()
        if reader is not None:
            reader.close()
        for container in everything:
            with contextlib.suppress(Exception):
                if container.proc is not None and container.proc.poll() is None:
                    container.child()
        wrappers = [c.proc for c in everything if c.proc is not None]
        await asyncio.to_thread(stop_processes, wrappers, 30.0)
        await asyncio.to_thread(stop_processes, [pid for c in everything for pid in c.children], 10.0)
        print("\nphases (s since the test began): " + ", ".join(f"{k} {v}" for k, v in phases.items()),
              file=sys.stderr)
