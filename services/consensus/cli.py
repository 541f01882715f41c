"""Sub-commands of the consensus service: ``status``, ``ledger append |
export | verify``, ``cluster up`` and the membership changes ``cluster add |
remove | transfer-leader``."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import grpc

from fleetsuit.cli import CliError
from fleetsuit.grpcutil import insecure_channel
from fleetsuit.v1 import consensus_pb2 as pb
from fleetsuit.v1 import consensus_pb2_grpc as pb_grpc

from .convert import block_from_pb
from .ledger.block import ChainError, verify_chain
from .ledger.certify import Anchors, verify_certified_chain
from .ledger.export import ExportFormatError, read_blocks, write_blocks
from .ledger.proof import ProofError, verify_entry_proof

RPC_TIMEOUT_S = 10.0


def _rpc_error(endpoint: str, exc: grpc.RpcError) -> CliError:
    details = exc.details() if hasattr(exc, "details") else str(exc)
    return CliError(f"{endpoint}: {exc.code().name}: {details}")  # type: ignore[attr-defined]


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
        "members": [{"id": m.node_id, "address": m.address, "voter": m.voter} for m in resp.members],
    }


async def _status(endpoint: str) -> pb.StatusResponse:
    async with insecure_channel(endpoint) as channel:
        return await pb_grpc.LedgerStub(channel).Status(pb.StatusRequest(), timeout=RPC_TIMEOUT_S)


def cmd_status(args: argparse.Namespace) -> int:
    try:
        resp = asyncio.run(_status(args.endpoint))
    except grpc.RpcError as exc:
        raise _rpc_error(args.endpoint, exc) from None
    doc = status_dict(resp)
    if args.json:
        print(json.dumps(doc))
    else:
        for key in ("node_id", "role", "term", "leader_id", "commit_index", "applied_index", "block_height",
                    "certified_height"):
            print(f"{key:14} {doc[key]}")
        print(f"{'members':14} {', '.join(m['id'] + '@' + m['address'] for m in doc['members'])}")
    return 0


async def _append(endpoint: str, text: str, client_id: str, request_id: int) -> pb.SubmitResponse:
    entry = pb.LedgerEntry(client_id=client_id, request_id=request_id, app=pb.AppEntry(payload=text.encode()))
    async with insecure_channel(endpoint) as channel:
        return await pb_grpc.LedgerStub(channel).Submit(pb.SubmitRequest(entry=entry), timeout=RPC_TIMEOUT_S)


def cmd_append(args: argparse.Namespace) -> int:
    client_id = args.client_id or f"cli-{uuid.uuid4().hex[:12]}"
    try:
        resp = asyncio.run(_append(args.endpoint, args.text, client_id, args.request_id))
    except grpc.RpcError as exc:
        raise _rpc_error(args.endpoint, exc) from None
    if args.json:
        print(json.dumps({"index": resp.index, "block_height": resp.block_height, "duplicate": resp.duplicate}))
    else:
        print(f"committed at index {resp.index}, block {resp.block_height}"
              + (" (duplicate)" if resp.duplicate else ""))
    return 0


async def _export(endpoint: str, out: Path, certified_only: bool) -> int:
    async with insecure_channel(endpoint) as channel:
        stub = pb_grpc.LedgerStub(channel)
        request = pb.ExportRequest(from_height=1, certified_only=certified_only)
        blocks = [block_from_pb(b) async for b in stub.ExportBlocks(request)]
    tmp = out.with_name(out.name + ".part")
    with open(tmp, "wb") as f:
        count = write_blocks(f, blocks)
    tmp.replace(out)
    return count


def cmd_export(args: argparse.Namespace) -> int:
    try:
        count = asyncio.run(_export(args.endpoint, Path(args.output), not args.all))
    except grpc.RpcError as exc:
        raise _rpc_error(args.endpoint, exc) from None
    print(f"exported {count} blocks to {args.output}", file=sys.stderr)
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
    certified = anchors is not None
    if args.json:
        print(json.dumps({"ok": True, "blocks": len(blocks), "head": head.hex(), "certificates_checked": certified}))
    else:
        note = "every certificate has a majority" if certified else "certificates not checked (no --anchors)"
        print(f"ok: {len(blocks)} blocks, head {head.hex()}; {note}")
    return 0


async def _prove(endpoint: str, height: int, position: int) -> pb.EntryProof:
    async with insecure_channel(endpoint) as channel:
        return await pb_grpc.LedgerStub(channel).GetProof(
            pb.ProofRequest(height=height, position=position), timeout=RPC_TIMEOUT_S
        )


def cmd_prove(args: argparse.Namespace) -> int:
    try:
        proof = asyncio.run(_prove(args.endpoint, args.height, args.position))
    except grpc.RpcError as exc:
        raise _rpc_error(args.endpoint, exc) from None
    Path(args.output).write_bytes(proof.SerializeToString())
    print(f"proof of entry {args.position} in block {args.height}: {proof.ByteSize()} bytes "
          f"({len(proof.path)} path hashes, {len(proof.certificate)} signatures)", file=sys.stderr)
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
    kind = entry.WhichOneof("kind")
    print(json.dumps({"ok": True, "kind": kind, "client_id": entry.client_id, "request_id": entry.request_id}))
    return 0


def cmd_cluster_up(args: argparse.Namespace) -> int:
    from fleetsuit.cluster import run_cluster

    return run_cluster(args.nodes, Path(args.data), args.base_port, args.cluster_id)


MEMBERSHIP_DEADLINE_S = 60.0


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
                    rpc = getattr(pb_grpc.LedgerStub(channel), call)
                    return await rpc(request, timeout=RPC_TIMEOUT_S * 3)  # type: ignore[no-any-return]
        except grpc.RpcError as exc:
            last = exc
            retry = exc.code() == grpc.StatusCode.UNAVAILABLE or "NOT_LEADER" in (exc.details() or "")
            if not retry:
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


def _members_line(resp: pb.MembershipResponse) -> str:
    return ", ".join(f"{m.node_id}{'' if m.voter else ' (learner)'}@{m.address}" for m in resp.members)


def _run_membership(args: argparse.Namespace, call: str, request: Any) -> int:
    try:
        resp = asyncio.run(change_membership(args.endpoint, call, request))
    except grpc.RpcError as exc:
        raise _rpc_error(args.endpoint, exc) from None
    if args.json:
        print(json.dumps({"index": resp.index, "leader_id": resp.leader_id,
                          "members": [{"id": m.node_id, "address": m.address, "voter": m.voter}
                                      for m in resp.members]}))
    else:
        print(f"ok (index {resp.index}, leader {resp.leader_id}); members: {_members_line(resp)}")
    return 0


def cmd_cluster_add(args: argparse.Namespace) -> int:
    return _run_membership(args, "AddMember", pb.AddMemberRequest(node_id=args.node_id, address=args.address))


def cmd_cluster_remove(args: argparse.Namespace) -> int:
    return _run_membership(args, "RemoveMember", pb.RemoveMemberRequest(node_id=args.node_id))


def cmd_cluster_transfer(args: argparse.Namespace) -> int:
    return _run_membership(args, "TransferLeader", pb.TransferLeaderRequest(target=args.target))


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("status", help="a node's Raft and ledger status")
    p.add_argument("--endpoint", required=True, help="HOST:PORT of a consensus service")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)

    ledger = sub.add_parser("ledger", help="append to, export and verify the ledger")
    lsub = ledger.add_subparsers(dest="ledger_command", metavar="COMMAND")
    lsub.required = True
    p = lsub.add_parser("append", help="submit a plain application entry")
    p.add_argument("--endpoint", required=True)
    p.add_argument("--json", action="store_true")
    p.add_argument("--client-id", default="", help="idempotency: client id (default: a new one)")
    p.add_argument("--request-id", type=int, default=1, help="idempotency: request id")
    p.add_argument("text")
    p.set_defaults(func=cmd_append)
    p = lsub.add_parser("export", help="write the certified chain, with its certificates, to a file")
    p.add_argument("--endpoint", required=True)
    p.add_argument("--all", action="store_true", help="include blocks not yet certified")
    p.add_argument("-o", "--output", required=True)
    p.set_defaults(func=cmd_export)
    p = lsub.add_parser("verify", help="check an exported chain offline")
    p.add_argument("file")
    p.add_argument("--anchors", help="anchors.json: also check every block's quorum certificate")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_verify)
    p = lsub.add_parser("prove", help="write a compact proof that one entry is in a certified block")
    p.add_argument("--endpoint", required=True)
    p.add_argument("--height", type=int, required=True)
    p.add_argument("--position", type=int, default=0, help="which entry of the block (from 0)")
    p.add_argument("-o", "--output", required=True)
    p.set_defaults(func=cmd_prove)
    p = lsub.add_parser("verify-proof", help="check an entry proof offline against the anchors")
    p.add_argument("file")
    p.add_argument("--anchors", required=True)
    p.set_defaults(func=cmd_verify_proof)

    cluster = sub.add_parser("cluster", help="local clusters")
    csub = cluster.add_subparsers(dest="cluster_command", metavar="COMMAND")
    csub.required = True
    p = csub.add_parser("up", help="start N nodes on loopback in the foreground")
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--data", required=True)
    p.add_argument("--base-port", type=int, default=7100)
    p.add_argument("--cluster-id", default="local")
    p.set_defaults(func=cmd_cluster_up)
    p = csub.add_parser("add", help="add a node as a learner (promoted to voter once caught up)")
    p.add_argument("--endpoint", required=True, help="HOST:PORT of any consensus service of the cluster")
    p.add_argument("--node-id", required=True)
    p.add_argument("--address", required=True, help="HOST:PORT of the new node's consensus service")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_cluster_add)
    p = csub.add_parser("remove", help="remove a voter or a learner")
    p.add_argument("--endpoint", required=True)
    p.add_argument("--node-id", required=True)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_cluster_remove)
    p = csub.add_parser("transfer-leader", help="hand leadership to another voter")
    p.add_argument("--endpoint", required=True)
    p.add_argument("--target", required=True)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_cluster_transfer)
