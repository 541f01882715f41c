"""Sub-commands of the consensus service: ``status``, ``ledger append |
export | verify | prove | verify-proof`` and the membership changes
``cluster add | remove | transfer-leader`` (``cluster up``, which starts a
local cluster, belongs to the launcher above the services).

``status`` asks one node with ``--endpoint``; without it, it shows the whole
cluster a local cluster file describes (``fleetsuit.cluster_status``: it
reads the file; it starts nothing).

One shape for every command (``fleetsuit.cli``): a command that prints a
result prints text, or one JSON document with ``--json``, to stdout or to
``-o FILE``; a gRPC failure is one line naming the endpoint (and saying so
when it is another service's).
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
import time
import uuid
from pathlib import Path
from typing import Any, cast

import grpc

from fleetsuit import cluster_status
from fleetsuit.cli import (
    EXIT_FAILED,
    EXIT_USAGE,
    CliError,
    add_endpoint,
    add_output_options,
    calling,
    command_group,
    emit,
    rpc_error,
)
from fleetsuit.grpcutil import insecure_channel
from fleetsuit.v1 import consensus_pb2 as pb
from fleetsuit.v1 import consensus_pb2_grpc as pb_grpc

from .convert import block_from_pb
from .ledger.block import ChainError, verify_chain
from .ledger.certify import Anchors, verify_certified_chain
from .ledger.export import ExportFormatError, read_blocks, write_blocks
from .ledger.proof import ProofError, verify_entry_proof

SERVICE = "consensus"
RPC_TIMEOUT_S = 10.0
MEMBERSHIP_DEADLINE_S = 60.0
CLUSTER_HELP = "membership of a running cluster (add, remove, transfer-leader)"


def _stub(channel: grpc.aio.Channel) -> pb_grpc.LedgerStub:
    return pb_grpc.LedgerStub(channel)


def _members(members: Any) -> list[dict[str, Any]]:
    return [{"id": m.node_id, "address": m.address, "voter": m.voter} for m in members]


def _members_line(members: list[dict[str, Any]]) -> str:
    return ", ".join(f"{m['id']}{'' if m['voter'] else ' (learner)'}@{m['address']}" for m in members)


# ---------------------------------------------------------------- status


def status_dict(resp: pb.StatusResponse) -> dict[str, Any]:
    return {
        "node_id": resp.node_id,
        "role": resp.role,
        "term": resp.term,
        "leader_id": resp.leader_id,
        "commit_index": resp.commit_index,
        "applied_index": resp.applied_index,
        "last_log_index": resp.last_log_index,
        "block_height": resp.block_height,
        "certified_height": resp.certified_height,
        "public_key": resp.public_key.hex(),
        "cluster_id": resp.cluster_id,
        "members": _members(resp.members),
    }


def _status_text(doc: dict[str, Any]) -> str:
    keys = ("node_id", "role", "term", "leader_id", "commit_index", "applied_index", "block_height",
            "certified_height", "cluster_id")
    lines = [f"{key:16} {doc[key]}" for key in keys]
    lines.append(f"{'members':16} {_members_line(doc['members'])}")
    return "\n".join(lines)


async def _status(endpoint: str) -> pb.StatusResponse:
    async with insecure_channel(endpoint) as channel:
        return cast(pb.StatusResponse, await _stub(channel).Status(pb.StatusRequest(), timeout=RPC_TIMEOUT_S))


def cmd_status(args: argparse.Namespace) -> int:
    if args.endpoint is None:
        return _cluster_status(args)
    if args.cluster is not None:
        raise CliError("give --endpoint (one node) or --cluster (the whole cluster), not both", EXIT_USAGE)
    with calling(args.endpoint, SERVICE):
        resp = asyncio.run(_status(args.endpoint))
    emit(args, status_dict(resp), _status_text)
    return 0


def _cluster_status(args: argparse.Namespace) -> int:
    """Every node of the cluster file: exit 0 when a majority of the voters
    answer, 1 (after printing what answered) when fewer do."""
    if args.timeout <= 0:
        raise CliError(f"--timeout must be positive, not {args.timeout:g}", EXIT_USAGE)
    try:
        cluster = cluster_status.read_cluster_file(cluster_status.resolve_cluster_file(args.cluster))
    except cluster_status.ClusterFileError as exc:
        raise CliError(str(exc)) from None
    answers = asyncio.run(cluster_status.gather(cluster, args.timeout))
    doc = cluster_status.build_status(cluster, answers, int(time.time() * 1000))
    emit(args, doc, cluster_status.status_text)
    if doc["answering"] == 0:
        raise CliError(f"no node of {cluster.path} answered", EXIT_FAILED)
    if not doc["majority"]:
        raise CliError(f"only {doc['answering']} of {doc['voters']} voters answered: the cluster has no "
                       "majority", EXIT_FAILED)
    return 0


# ---------------------------------------------------------------- ledger


def _append_payload(args: argparse.Namespace) -> bytes:
    """The entry's bytes: TEXT, or FILE's content, or stdin for ``-``."""
    if (args.text is None) == (args.file is None):
        raise CliError("give the entry as TEXT, as --file FILE, or on stdin with -", EXIT_USAGE)
    if args.text is not None and args.text != "-":
        return cast(str, args.text).encode()
    source = args.file if args.file is not None else "-"
    if source == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(source).read_bytes()
    except OSError as exc:
        raise CliError(f"cannot read {source}: {exc.strerror}") from None


async def _append(endpoint: str, payload: bytes, client_id: str, request_id: int) -> pb.SubmitResponse:
    entry = pb.LedgerEntry(client_id=client_id, request_id=request_id, app=pb.AppEntry(payload=payload))
    async with insecure_channel(endpoint) as channel:
        return cast(
            pb.SubmitResponse,
            await _stub(channel).Submit(pb.SubmitRequest(entry=entry), timeout=RPC_TIMEOUT_S),
        )


MAX_REQUEST_ID = 2**63 - 1


def new_request_id() -> int:
    """A fresh request id (1..2^63-1): a constant default would make a second
    append with the same client id a "retry" of the first, and answer it
    with the first one's entry."""
    return secrets.randbelow(MAX_REQUEST_ID) + 1


def cmd_append(args: argparse.Namespace) -> int:
    payload = _append_payload(args)
    client_id = args.client_id or f"cli-{uuid.uuid4().hex[:12]}"
    request_id = args.request_id if args.request_id is not None else new_request_id()
    if not 1 <= request_id <= MAX_REQUEST_ID:
        raise CliError(f"--request-id must be between 1 and {MAX_REQUEST_ID}", EXIT_USAGE)
    try:
        resp = asyncio.run(_append(args.endpoint, payload, client_id, request_id))
    except grpc.RpcError as exc:
        error = rpc_error(exc, args.endpoint, SERVICE)
        if exc.code() is grpc.StatusCode.UNIMPLEMENTED:
            raise error from None  # not a ledger: nothing was submitted
        # The entry may have been applied (an unknown outcome, a lost answer):
        # a retry with the same ids tells, and applies it at most once.
        raise CliError(
            f"{error} (retry with --client-id {client_id} --request-id {request_id})", error.code
        ) from None
    doc = {"index": resp.index, "block_height": resp.block_height, "duplicate": resp.duplicate,
           "position": resp.position, "client_id": client_id, "request_id": request_id}
    emit(args, doc, lambda d: f"committed at index {d['index']}, block {d['block_height']}, "
         f"position {d['position']}" + (" (duplicate)" if d["duplicate"] else "")
         + f"; client id {d['client_id']}, request id {d['request_id']}")
    return 0


async def _export(endpoint: str, out: Path, certified_only: bool) -> tuple[int, int]:
    async with insecure_channel(endpoint) as channel:
        request = pb.ExportRequest(from_height=1, certified_only=certified_only)
        blocks = [block_from_pb(b) async for b in _stub(channel).ExportBlocks(request)]
    tmp = out.with_name(out.name + ".part")
    try:
        with open(tmp, "wb") as f:
            count = write_blocks(f, blocks)
        tmp.replace(out)
    except OSError as exc:
        raise CliError(f"cannot write {out}: {exc.strerror}") from None
    return count, blocks[-1].height if blocks else 0


def cmd_export(args: argparse.Namespace) -> int:
    with calling(args.endpoint, SERVICE):
        count, head = asyncio.run(_export(args.endpoint, Path(args.ledger_file), not args.all))
    doc = {"blocks": count, "head_height": head, "certified_only": not args.all, "file": args.ledger_file}
    emit(args, doc, lambda d: f"exported {d['blocks']} blocks to {d['file']}")
    return 0


def _load_anchors(path: str) -> Anchors:
    try:
        return Anchors.from_json(Path(path).read_text())
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise CliError(f"{path}: {exc}") from None


def cmd_verify(args: argparse.Namespace) -> int:
    anchors = _load_anchors(args.anchors) if args.anchors else None
    try:
        with open(args.file, "rb") as f:
            blocks = list(read_blocks(f))
        head = verify_chain(blocks)
        if anchors is not None:
            verify_certified_chain(blocks, anchors)
    except OSError as exc:
        raise CliError(f"cannot read {args.file}: {exc.strerror}") from None
    except ExportFormatError as exc:
        raise CliError(f"{args.file}: {exc}") from None
    except ChainError as exc:
        raise CliError(f"{args.file}: bad block at height {exc.height}: {exc.reason}") from None
    doc = {"ok": True, "blocks": len(blocks), "head": head.hex(), "certificates_checked": anchors is not None}

    def text(d: dict[str, Any]) -> str:
        note = ("every certificate has a majority" if d["certificates_checked"]
                else "certificates not checked (no --anchors)")
        return f"ok: {d['blocks']} blocks, head {d['head']}; {note}"

    emit(args, doc, text)
    return 0


async def _prove(endpoint: str, height: int, position: int) -> pb.EntryProof:
    async with insecure_channel(endpoint) as channel:
        return cast(pb.EntryProof, await _stub(channel).GetProof(
            pb.ProofRequest(height=height, position=position), timeout=RPC_TIMEOUT_S
        ))


def cmd_prove(args: argparse.Namespace) -> int:
    with calling(args.endpoint, SERVICE):
        proof = asyncio.run(_prove(args.endpoint, args.height, args.position))
    try:
        Path(args.proof_file).write_bytes(proof.SerializeToString())
    except OSError as exc:
        raise CliError(f"cannot write {args.proof_file}: {exc.strerror}") from None
    doc = {"height": proof.height, "position": args.position, "bytes": proof.ByteSize(),
           "path_hashes": len(proof.path), "signatures": len(proof.certificate), "file": args.proof_file}
    emit(args, doc, lambda d: f"proof of entry {d['position']} in block {d['height']}: {d['bytes']} bytes "
         f"({d['path_hashes']} path hashes, {d['signatures']} signatures) written to {d['file']}")
    return 0


def cmd_verify_proof(args: argparse.Namespace) -> int:
    anchors = _load_anchors(args.anchors)
    try:
        raw = Path(args.file).read_bytes()
    except OSError as exc:
        raise CliError(f"cannot read {args.file}: {exc.strerror}") from None
    try:
        entry = verify_entry_proof(raw, anchors)
    except ProofError as exc:
        raise CliError(f"{args.file}: {exc}") from None
    height = pb.EntryProof.FromString(raw).height  # parsed and checked above
    doc = {"ok": True, "height": height, "kind": entry.WhichOneof("kind"),
           "client_id": entry.client_id, "request_id": entry.request_id}
    emit(args, doc, lambda d: f"ok: the {d['kind']} entry of client {d['client_id'] or '-'}, request "
         f"{d['request_id']}, is in certified block {d['height']}")
    return 0


# ---------------------------------------------------------------- membership


async def change_membership(
    endpoint: str, call: str, request: Any, deadline_s: float = MEMBERSHIP_DEADLINE_S
) -> pb.MembershipResponse:
    """Send a membership RPC to the leader (found through ``endpoint``'s
    status), retrying while there is no leader or another change is pending."""
    deadline = time.monotonic() + deadline_s
    last: grpc.RpcError | None = None
    while time.monotonic() < deadline:
        try:
            target = await _leader_address(endpoint)
            if target:
                async with insecure_channel(target) as channel:
                    rpc = getattr(_stub(channel), call)
                    return cast(pb.MembershipResponse, await rpc(request, timeout=RPC_TIMEOUT_S * 3))
        except grpc.RpcError as exc:
            last = exc
            code = exc.code() if hasattr(exc, "code") else None
            details = (exc.details() if hasattr(exc, "details") else "") or ""
            if code != grpc.StatusCode.UNAVAILABLE and "NOT_LEADER" not in details:
                raise
        await asyncio.sleep(0.2)
    if last is not None:
        raise last
    raise CliError(f"{endpoint}: no leader within {deadline_s:.0f}s")


async def _leader_address(endpoint: str) -> str:
    status = await _status(endpoint)
    if status.role == "leader":
        return endpoint
    return next((m.address for m in status.members if m.node_id == status.leader_id and m.address), "")


def _run_membership(args: argparse.Namespace, call: str, request: Any) -> int:
    with calling(args.endpoint, SERVICE):
        resp = asyncio.run(change_membership(args.endpoint, call, request))
    doc = {"index": resp.index, "leader_id": resp.leader_id, "members": _members(resp.members)}
    emit(args, doc, lambda d: f"ok (index {d['index']}, leader {d['leader_id']}); "
         f"members: {_members_line(d['members'])}")
    return 0


def cmd_cluster_add(args: argparse.Namespace) -> int:
    return _run_membership(args, "AddMember", pb.AddMemberRequest(node_id=args.node_id, address=args.address))


def cmd_cluster_remove(args: argparse.Namespace) -> int:
    return _run_membership(args, "RemoveMember", pb.RemoveMemberRequest(node_id=args.node_id))


def cmd_cluster_transfer(args: argparse.Namespace) -> int:
    return _run_membership(args, "TransferLeader", pb.TransferLeaderRequest(target=args.target))


# ---------------------------------------------------------------- registration


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "status", help="the whole cluster from its cluster file, or one node's status (--endpoint)",
        description=(
            "Without --endpoint: every node of the local cluster file (role, term, commit and applied "
            "index, block height, reachable or not), every gateway (sessions, devices in session by "
            "version), the ledger's devices by version and the rollout of every live release (state, "
            "stage, installed, failed and pending devices). Exit 0 when a majority of the voters "
            "answer, else 1. With --endpoint: that node's Raft and ledger status."),
    )
    p.add_argument("--endpoint", default=None, metavar="HOST:PORT",
                   help=f"ask only this node's {SERVICE} service (its Raft and ledger status)")
    p.add_argument("--cluster", metavar="FILE_OR_DIR", default=None,
                   help=f"the cluster file, or the directory holding {cluster_status.CLUSTER_FILE_NAME} "
                        f"(default: ${cluster_status.ENV_CLUSTER_FILE}, else "
                        f"./{cluster_status.DEFAULT_CLUSTER_FILE}, the `make run` cluster)")
    p.add_argument("--timeout", type=float, default=cluster_status.DEFAULT_TIMEOUT_S, metavar="SECONDS",
                   help=f"how long each node may take to answer, without --endpoint "
                        f"(default: {cluster_status.DEFAULT_TIMEOUT_S:g})")
    add_output_options(p)
    p.set_defaults(func=cmd_status)

    ledger = command_group(sub, "ledger", help="append to, export, verify and prove the ledger")

    p = ledger.add_parser("append", help="submit a plain application entry")
    add_endpoint(p, SERVICE)
    p.add_argument("text", nargs="?", metavar="TEXT", help="the entry's text; - reads it from stdin")
    p.add_argument("--file", metavar="FILE", help="read the entry's bytes from FILE instead (- for stdin)")
    p.add_argument("--client-id", default="", help="idempotency: client id (default: a new one)")
    p.add_argument("--request-id", type=int, default=None,
                   help="idempotency: request id, 1..2^63-1; a retry with the same client and request id "
                        "and the same entry is applied once (default: a new random one; both ids are "
                        "printed, also on failure, to retry with)")
    add_output_options(p)
    p.set_defaults(func=cmd_append)

    p = ledger.add_parser("export", help="write the certified chain, with its certificates, to a file")
    add_endpoint(p, SERVICE)
    p.add_argument("--all", action="store_true", help="include blocks not yet certified")
    # -o is the ledger file here; the summary goes to stdout.
    p.add_argument("-o", "--output", dest="ledger_file", required=True, metavar="FILE",
                   help="the exported ledger (written whole, then renamed into place)")
    add_output_options(p, output=False)
    p.set_defaults(func=cmd_export)

    p = ledger.add_parser("verify", help="check an exported chain offline")
    p.add_argument("file", metavar="FILE", help="a ledger written by `ledger export`")
    p.add_argument("--anchors", metavar="FILE",
                   help="anchors.json: also check every block's quorum certificate")
    add_output_options(p)
    p.set_defaults(func=cmd_verify)

    p = ledger.add_parser("prove", help="write a compact proof that one entry is in a certified block")
    add_endpoint(p, SERVICE)
    p.add_argument("--height", type=int, required=True, help="the block's height")
    p.add_argument("--position", type=int, default=0, help="which entry of the block (from 0; default: 0)")
    # -o is the proof file here; the summary goes to stdout.
    p.add_argument("-o", "--output", dest="proof_file", required=True, metavar="FILE",
                   help="where to write the proof")
    add_output_options(p, output=False)
    p.set_defaults(func=cmd_prove)

    p = ledger.add_parser("verify-proof", help="check an entry proof offline against the anchors")
    p.add_argument("file", metavar="FILE", help="a proof written by `ledger prove`")
    p.add_argument("--anchors", required=True, metavar="FILE", help="the cluster's anchors.json")
    add_output_options(p)
    p.set_defaults(func=cmd_verify_proof)

    cluster = command_group(sub, "cluster", help=CLUSTER_HELP)
    p = cluster.add_parser("add", help="add a node as a learner (promoted to voter once caught up)")
    add_endpoint(p, SERVICE)
    p.add_argument("--node-id", required=True, help="the new node's id")
    p.add_argument("--address", required=True, metavar="HOST:PORT",
                   help="the new node's consensus service")
    add_output_options(p)
    p.set_defaults(func=cmd_cluster_add)

    p = cluster.add_parser("remove", help="remove a voter or a learner")
    add_endpoint(p, SERVICE)
    p.add_argument("--node-id", required=True, help="the node to remove")
    add_output_options(p)
    p.set_defaults(func=cmd_cluster_remove)

    p = cluster.add_parser("transfer-leader", help="hand leadership to another voter")
    add_endpoint(p, SERVICE)
    p.add_argument("--node-id", "--target", dest="target", required=True, metavar="NODE_ID",
                   help="the voter to hand leadership to")
    add_output_options(p)
    p.set_defaults(func=cmd_cluster_transfer)
