"""The whole cluster at a glance, from a local cluster file: what
``fleetsuit status`` shows without ``--endpoint``.

The cluster file is the ``cluster.json`` that ``fleetsuit cluster up`` and
``make run`` write (``nodes[].id``, ``nodes[].endpoints.consensus`` and
``.gateway``). Every node is asked at once: its consensus ``Status`` (role,
term, commit and applied index, block height) and its gateway's ``Info``
(sessions, devices in session by version); members a node names that the
file does not (added later with ``cluster add``) are asked too. The ledger's
device table (``Devices.DeviceSummary``) and the releases (``ListReleases``)
are read once, linearizably, from the leader (or another node that can
serve a linearizable read), else from any node's applied state (marked
stale). A node or gateway that does not answer is shown unreachable, with
why.

Rollout progress per live release (active, paused or halted): its state,
the stage open now (stage k opens at start + k * stage interval,
consensus.proto ``RolloutPolicy``), and the devices it targets (accepted,
of its device classes and groups) that installed it, failed it (the
ledger's outcomes) or have not reported an outcome yet (pending).

The document and its text are pure functions of the answers and ``now``
(``build_status``, ``status_text``); ``gather`` does the calls. This module
is in the common package: it imports no service and not the launcher.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import grpc

from fleetsuit.grpcutil import insecure_channel
from fleetsuit.release_model import stages_open
from fleetsuit.v1 import consensus_pb2 as pb
from fleetsuit.v1 import consensus_pb2_grpc as pb_grpc
from fleetsuit.v1 import gateway_pb2 as gw_pb
from fleetsuit.v1 import gateway_pb2_grpc as gw_grpc

ENV_CLUSTER_FILE = "FLEETSUIT_CLUSTER_FILE"
CLUSTER_FILE_NAME = "cluster.json"
DEFAULT_CLUSTER_FILE = Path("data") / "run" / CLUSTER_FILE_NAME  # the `make run` cluster
DEFAULT_TIMEOUT_S = 3.0
LIVE_STATES = ("active", "paused", "halted")  # releases whose rollout is shown
PAGE_SIZE = 1000  # devices per ListDevices call
MAX_PAGES = 1000  # at most this many pages of devices (a million devices)


class ClusterFileError(ValueError):
    """A cluster file that is missing or does not describe a cluster; the
    message names the file and what is wrong."""


@dataclass(frozen=True, slots=True)
class NodeAddress:
    node_id: str
    consensus: str  # HOST:PORT of its consensus service
    gateway: str = ""  # HOST:PORT of its gateway ("" unknown)


@dataclass(frozen=True, slots=True)
class ClusterFile:
    path: Path
    cluster_id: str
    nodes: tuple[NodeAddress, ...]


# ---------------------------------------------------------------- the cluster file


def resolve_cluster_file(given: str | None, env: Mapping[str, str] | None = None) -> Path:
    """The cluster file to read: ``given`` (a file, or a directory holding
    cluster.json), else $FLEETSUIT_CLUSTER_FILE, else ./data/run/cluster.json."""
    env = os.environ if env is None else env
    text = given or env.get(ENV_CLUSTER_FILE) or str(DEFAULT_CLUSTER_FILE)
    path = Path(text)
    return path / CLUSTER_FILE_NAME if path.is_dir() else path


def _text(value: Any, where: str, path: Path) -> str:
    if not isinstance(value, str) or not value:
        raise ClusterFileError(f"{path}: {where} must be a non-empty string, not {value!r}")
    return value


def parse_cluster_file(path: Path, raw: str) -> ClusterFile:
    """The cluster ``raw`` (the text of ``path``) describes."""
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise ClusterFileError(f"{path}: not JSON ({exc})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("nodes"), list) or not doc["nodes"]:
        raise ClusterFileError(f"{path}: not a cluster file (no \"nodes\" list)")
    nodes: list[NodeAddress] = []
    for i, node in enumerate(doc["nodes"]):
        if not isinstance(node, dict) or not isinstance(node.get("endpoints"), dict):
            raise ClusterFileError(f"{path}: nodes[{i}] has no \"endpoints\" object")
        endpoints = node["endpoints"]
        gateway = endpoints.get("gateway", "")
        nodes.append(NodeAddress(
            _text(node.get("id"), f"nodes[{i}].id", path),
            _text(endpoints.get("consensus"), f"nodes[{i}].endpoints.consensus", path),
            _text(gateway, f"nodes[{i}].endpoints.gateway", path) if gateway else "",
        ))
    ids = [n.node_id for n in nodes]
    if len(set(ids)) != len(ids):
        raise ClusterFileError(f"{path}: a node id appears twice in {ids}")
    cluster_id = doc.get("cluster_id", "")
    return ClusterFile(path, cluster_id if isinstance(cluster_id, str) else "", tuple(nodes))


def read_cluster_file(path: Path) -> ClusterFile:
    try:
        raw = path.read_text()
    except FileNotFoundError:
        raise ClusterFileError(
            f"no cluster file at {path}: start a cluster (`make run`, `fleetsuit cluster up`), "
            f"name its file or directory with --cluster or ${ENV_CLUSTER_FILE}, or ask one node "
            f"with --endpoint") from None
    except OSError as exc:
        raise ClusterFileError(f"cannot read {path}: {exc.strerror}") from None
    return parse_cluster_file(path, raw)


# ---------------------------------------------------------------- the answers


@dataclass(frozen=True, slots=True)
class NodeAnswer:
    address: NodeAddress
    status: pb.StatusResponse | None = None
    error: str = ""


@dataclass(frozen=True, slots=True)
class GatewayAnswer:
    node_id: str
    address: str
    info: gw_pb.GatewayInfo | None = None
    error: str = ""


@dataclass(frozen=True, slots=True)
class LedgerAnswer:
    """The ledger's device table and releases, as one node answered them."""

    node_id: str = ""
    consistent: bool = False  # a linearizable read (else the node's applied state)
    summary: pb.DeviceSummaryResponse | None = None
    releases: tuple[pb.Release, ...] = ()
    devices: tuple[pb.Device, ...] = ()  # the accepted devices
    error: str = ""


@dataclass(frozen=True, slots=True)
class Answers:
    nodes: tuple[NodeAnswer, ...]
    gateways: tuple[GatewayAnswer, ...]
    ledger: LedgerAnswer = field(default_factory=LedgerAnswer)


def _why(exc: grpc.RpcError, endpoint: str) -> str:
    code = exc.code() if hasattr(exc, "code") else None
    if code == grpc.StatusCode.UNAVAILABLE:
        return f"cannot reach {endpoint}"
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"{endpoint} did not answer in time"
    if code == grpc.StatusCode.UNIMPLEMENTED:
        return f"{endpoint} is not the expected service"
    details = (exc.details() if hasattr(exc, "details") else "") or str(exc)
    return f"{endpoint}: {code.name if code is not None else 'ERROR'}: {details}"


class _Channels:
    def __init__(self) -> None:
        self._open: dict[str, grpc.aio.Channel] = {}

    def __call__(self, endpoint: str) -> grpc.aio.Channel:
        if endpoint not in self._open:
            self._open[endpoint] = insecure_channel(endpoint)
        return self._open[endpoint]

    async def close(self) -> None:
        for channel in self._open.values():
            await channel.close()


async def _node(channels: _Channels, address: NodeAddress, timeout_s: float) -> NodeAnswer:
    try:
        status = await pb_grpc.LedgerStub(channels(address.consensus)).Status(pb.StatusRequest(), timeout=timeout_s)
    except grpc.RpcError as exc:
        return NodeAnswer(address, error=_why(exc, address.consensus))
    return NodeAnswer(address, cast(pb.StatusResponse, status))


async def _gateway(channels: _Channels, node_id: str, address: str, timeout_s: float) -> GatewayAnswer:
    if not address:
        return GatewayAnswer(node_id, "", error="no gateway address known")
    try:
        info = await gw_grpc.GatewayStub(channels(address)).Info(gw_pb.GatewayInfoRequest(), timeout=timeout_s)
    except grpc.RpcError as exc:
        return GatewayAnswer(node_id, address, error=_why(exc, address))
    return GatewayAnswer(node_id, address, cast(gw_pb.GatewayInfo, info))


async def _ledger(channels: _Channels, node: NodeAnswer, consistent: bool, timeout_s: float) -> LedgerAnswer:
    channel = channels(node.address.consensus)
    stale = not consistent
    summary = cast(pb.DeviceSummaryResponse, await pb_grpc.DevicesStub(channel).DeviceSummary(
        pb.DeviceSummaryRequest(stale_ok=stale), timeout=timeout_s))
    releases = cast(pb.ListReleasesResponse, await pb_grpc.ReleasesStub(channel).ListReleases(
        pb.ListReleasesRequest(stale_ok=stale), timeout=timeout_s))
    devices: list[pb.Device] = []
    if any(r.state in LIVE_STATES for r in releases.releases):
        after = ""
        for _ in range(MAX_PAGES):
            page = cast(pb.ListDevicesResponse, await pb_grpc.DevicesStub(channel).ListDevices(
                pb.ListDevicesRequest(state="accepted", stale_ok=stale, limit=PAGE_SIZE, after=after),
                timeout=timeout_s))
            devices.extend(page.devices)
            if len(page.devices) < PAGE_SIZE:
                break
            after = page.devices[-1].device_id
    return LedgerAnswer(node.address.node_id, consistent, summary, tuple(releases.releases), tuple(devices))


async def _read_ledger(channels: _Channels, nodes: Sequence[NodeAnswer], timeout_s: float) -> LedgerAnswer:
    """From the leader first, linearizably; then from any node that can;
    else any node's applied state."""
    up = [n for n in nodes if n.status is not None]
    up.sort(key=lambda n: n.status is None or n.status.role != "leader")
    errors: list[str] = []
    for consistent in (True, False):
        for node in up:
            try:
                return await _ledger(channels, node, consistent, timeout_s)
            except grpc.RpcError as exc:
                errors.append(_why(exc, node.address.consensus))
    return LedgerAnswer(error="; ".join(errors[-2:]) if errors else "no node answered")


async def gather(cluster: ClusterFile, timeout_s: float = DEFAULT_TIMEOUT_S) -> Answers:
    """Ask every node, its gateway and the ledger (each call bounded by
    ``timeout_s``)."""
    channels = _Channels()
    try:
        nodes = list(await asyncio.gather(*(_node(channels, a, timeout_s) for a in cluster.nodes)))
        known = {n.address.node_id for n in nodes}
        extra = {m.node_id: m.address for n in nodes if n.status is not None
                 for m in n.status.members if m.node_id not in known and m.address}
        nodes += await asyncio.gather(*(_node(channels, NodeAddress(nid, address), timeout_s)
                                        for nid, address in sorted(extra.items())))
        gateways = await asyncio.gather(*(
            _gateway(channels, n.address.node_id, n.address.gateway or _named_gateway(n), timeout_s)
            for n in nodes))
        ledger = await _read_ledger(channels, nodes, timeout_s)
        return Answers(tuple(nodes), tuple(gateways), ledger)
    finally:
        await channels.close()


def _named_gateway(node: NodeAnswer) -> str:
    """The gateway a node's Status names (its host made the consensus one's
    when it names an unspecified host)."""
    if node.status is None:
        return ""
    address: str = node.status.services.get("gateway", "")
    host, sep, port = address.rpartition(":")
    if sep and host in ("", "0.0.0.0", "::", "[::]"):
        return f"{node.address.consensus.rpartition(':')[0]}:{port}"
    return address


# ---------------------------------------------------------------- the document


def _iso(unix_ms: int) -> str:
    return datetime.fromtimestamp(unix_ms / 1000, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def rollout_stage(policy: pb.RolloutPolicy, now_ms: int) -> tuple[int, int, int]:
    """(stages open now, stages in all, percentage of the fleet admitted):
    stage k (from 0) opens at start + k * stage interval; no stages is one
    stage of 100%."""
    stages = list(policy.stages) or [100]
    opened = stages_open(len(stages), policy.start_at_unix_ms, policy.stage_interval_ms, now_ms)
    return opened, len(stages), stages[opened - 1] if opened else 0


def _targets(release: pb.Release, device: pb.Device) -> bool:
    groups = release.rollout.groups
    return device.device_class in release.device_classes and (not groups or device.group in groups)


def _rollouts(ledger: LedgerAnswer, now_ms: int) -> list[dict[str, Any]]:
    if ledger.summary is None:
        return []
    outcomes = {o.release_id: o for o in ledger.summary.outcomes}
    out = []
    for release in ledger.releases:
        if release.state not in LIVE_STATES:
            continue
        opened, stages, percent = rollout_stage(release.rollout, now_ms)
        outcome = outcomes.get(release.release_id)
        installed = outcome.installed if outcome is not None else 0
        failed = outcome.failed if outcome is not None else 0
        targeted = sum(1 for d in ledger.devices if _targets(release, d))
        start = release.rollout.start_at_unix_ms
        out.append({
            "release_id": release.release_id, "component": release.component, "state": release.state,
            "state_reason": release.state_reason, "device_classes": list(release.device_classes),
            "starts_at": _iso(start) if start else None, "stage": opened, "stages": stages,
            "open_percent": percent, "targeted": targeted, "installed": installed, "failed": failed,
            "pending": max(0, targeted - installed - failed),
        })
    return out


def _node_doc(answer: NodeAnswer) -> dict[str, Any]:
    doc: dict[str, Any] = {"id": answer.address.node_id, "endpoint": answer.address.consensus,
                           "reachable": answer.status is not None}
    if answer.status is None:
        return doc | {"error": answer.error}
    s = answer.status
    return doc | {"role": s.role, "term": s.term, "leader_id": s.leader_id, "commit_index": s.commit_index,
                  "applied_index": s.applied_index, "block_height": s.block_height,
                  "certified_height": s.certified_height, "voter": _voter(s, s.node_id)}


def _voter(status: pb.StatusResponse, node_id: str) -> bool:
    return any(m.voter for m in status.members if m.node_id == node_id)


def _gateway_doc(answer: GatewayAnswer) -> dict[str, Any]:
    doc: dict[str, Any] = {"node_id": answer.node_id, "address": answer.address,
                           "reachable": answer.info is not None}
    if answer.info is None:
        return doc | {"error": answer.error}
    info = answer.info
    return doc | {"gateway_id": info.self.gateway_id, "downloads": info.self.http_address,
                  "sessions": info.sessions, "devices_by_version": dict(sorted(info.devices_by_version.items())),
                  "ledger_height": info.ledger_height}


def build_status(cluster: ClusterFile, answers: Answers, now_ms: int) -> dict[str, Any]:
    """The status document (``--json``) of ``answers``, at ``now_ms``."""
    nodes = [_node_doc(n) for n in answers.nodes]
    up = [n for n in answers.nodes if n.status is not None]
    # The voters, as the best-informed answer knows them (the file's nodes when none answered).
    newest = max(up, key=lambda n: (n.status.term, n.status.commit_index) if n.status else (0, 0), default=None)
    voters = ([m.node_id for m in newest.status.members if m.voter] if newest and newest.status
              else [a.node_id for a in cluster.nodes])
    answering_voters = sum(1 for n in up if n.address.node_id in voters)
    leaders = [n.status for n in up if n.status is not None and n.status.role == "leader"]
    leader = max(leaders, key=lambda s: s.term) if leaders else None
    ledger = answers.ledger
    devices: dict[str, Any] | None = None
    if ledger.summary is not None:
        devices = {"by_state": dict(sorted(ledger.summary.devices_by_state.items())),
                   "by_version": dict(sorted(ledger.summary.devices_by_version.items()))}
    return {
        "cluster_file": str(cluster.path),
        "cluster_id": newest.status.cluster_id if newest and newest.status else cluster.cluster_id,
        "at": _iso(now_ms),
        "leader": leader.node_id if leader else None,
        "term": leader.term if leader else None,
        "voters": len(voters),
        "answering": len(up),
        "majority": answering_voters > len(voters) // 2,
        "nodes": nodes,
        "gateways": [_gateway_doc(g) for g in answers.gateways],
        "ledger": {"read_from": ledger.node_id or None, "consistent": ledger.consistent,
                   **({"error": ledger.error} if ledger.error else {})},
        "devices": devices,
        "rollouts": _rollouts(ledger, now_ms),
    }


# ---------------------------------------------------------------- the text


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], right: Sequence[bool]) -> list[str]:
    cells = [list(header), *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = []
    for row in cells:
        parts = [c.rjust(w) if r else c.ljust(w) for c, w, r in zip(row, widths, right, strict=True)]
        lines.append("  ".join(parts).rstrip())
    return lines


def _versions(by_version: Mapping[str, int]) -> str:
    """Release ids (``firmware@2``) as they are; the factory image
    (``firmware@factory``) as ``firmware factory``."""
    parts = []
    for key, count in sorted(by_version.items()):
        component, _, release = key.partition("@")
        parts.append(f"{key if release != 'factory' else component + ' factory'}={count}")
    return " ".join(parts) or "-"


def status_text(doc: dict[str, Any]) -> str:
    leader = f"leader {doc['leader']}, term {doc['term']}" if doc["leader"] else "no leader"
    quorum = "" if doc["majority"] else " (no majority)"
    lines = [f"cluster {doc['cluster_id'] or '?'} ({doc['cluster_file']}) at {doc['at']}: {doc['answering']} of "
             f"{len(doc['nodes'])} nodes answer{quorum}; {leader}", ""]
    dash = "-"
    lines += _table(
        ("NODE", "ROLE", "TERM", "COMMIT", "APPLIED", "BLOCKS", "REACHABLE"),
        [(n["id"], n["role"], n["term"], n["commit_index"], n["applied_index"], n["block_height"], "yes")
         if n["reachable"] else (n["id"], dash, dash, dash, dash, dash, f"no ({n['error']})")
         for n in doc["nodes"]],
        (False, False, True, True, True, True, False))
    lines.append("")
    lines += _table(
        ("GATEWAY", "ADDRESS", "SESSIONS", "DEVICES IN SESSION"),
        [(g["node_id"], g["address"] or dash, g["sessions"], _versions(g["devices_by_version"]))
         if g["reachable"] else (g["node_id"], g["address"] or dash, dash, f"unreachable ({g['error']})")
         for g in doc["gateways"]],
        (False, False, True, False))
    lines.append("")
    ledger = doc["ledger"]
    if doc["devices"] is None:
        lines.append(f"devices: the ledger cannot be read ({ledger.get('error', 'no node answered')})")
    else:
        read = f"read from {ledger['read_from']}" + ("" if ledger["consistent"] else ", stale")
        states = " ".join(f"{s}={n}" for s, n in doc["devices"]["by_state"].items()) or "none"
        lines.append(f"devices ({read}): {states}")
        lines.append(f"  by version: {_versions(doc['devices']['by_version'])}")
    lines.append("")
    if not doc["rollouts"]:
        lines.append("rollouts: none active")
    else:
        lines += _table(
            ("RELEASE", "STATE", "STAGE", "STARTS", "INSTALLED", "FAILED", "PENDING"),
            [(r["release_id"], r["state"], f"{r['stage']}/{r['stages']} ({r['open_percent']}%)",
              r["starts_at"] or "at once", r["installed"], r["failed"], r["pending"]) for r in doc["rollouts"]],
            (False, False, False, False, True, True, True))
    return "\n".join(lines)
