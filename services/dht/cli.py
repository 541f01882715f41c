"""``fleetsuit blob``: put, get and stat payloads on a dht node.

``put`` prints progress on stderr and the content id alone on the last line
of stdout. ``get`` resumes a partial output file from its length and checks
the whole file against the content id at the end.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from collections.abc import Iterator
from typing import Any

import grpc

from fleetsuit.cli import CliError
from fleetsuit.grpcutil import CHANNEL_OPTIONS
from fleetsuit.v1 import dht_pb2, dht_pb2_grpc
from services.dht import wire
from services.dht.content import format_id, parse_id
from services.dht.errors import InvalidContentId

PIECE_BYTES = 1024 * 1024


def register(subparsers: Any) -> None:
    blob = subparsers.add_parser("blob", help="content-addressed payloads (dht)")
    sub = blob.add_subparsers(dest="blob_command", metavar="ACTION")
    sub.required = True

    put = sub.add_parser("put", help="store a file; prints its content id")
    put.add_argument("--endpoint", required=True, metavar="HOST:PORT")
    put.add_argument("--pin", action="store_true", help="pin it on that node")
    put.add_argument("file")
    put.set_defaults(func=cmd_put)

    get = sub.add_parser("get", help="download a blob (resumes a partial FILE)")
    get.add_argument("--endpoint", required=True, metavar="HOST:PORT")
    get.add_argument("-o", "--output", required=True, metavar="FILE")
    get.add_argument("content_id", metavar="ID")
    get.set_defaults(func=cmd_get)

    stat = sub.add_parser("stat", help="size, presence and holders of a blob")
    stat.add_argument("--endpoint", required=True, metavar="HOST:PORT")
    stat.add_argument("--no-lookup", action="store_true", help="only what this node knows")
    stat.add_argument("--json", action="store_true")
    stat.add_argument("content_id", metavar="ID")
    stat.set_defaults(func=cmd_stat)


def _stub(endpoint: str) -> tuple[grpc.Channel, dht_pb2_grpc.DhtStub]:
    channel = grpc.insecure_channel(endpoint, options=CHANNEL_OPTIONS)
    return channel, dht_pb2_grpc.DhtStub(channel)  # type: ignore[no-untyped-call]


def get_call(channel: grpc.Channel) -> grpc.UnaryStreamMultiCallable:
    """``Dht.Get`` whose replies are (offset, data, total_size), decoded by
    ``wire.py`` without copying the payload through upb."""
    return channel.unary_stream(
        "/fleetsuit.v1.Dht/Get",
        request_serializer=dht_pb2.BlobGetRequest.SerializeToString,
        response_deserializer=wire.decode_get_response,
    )


def put_call(channel: grpc.Channel) -> grpc.StreamUnaryMultiCallable:
    """``Dht.Put`` taking requests already encoded by ``wire.encode_put_request``."""
    return channel.stream_unary(
        "/fleetsuit.v1.Dht/Put",
        request_serializer=_encoded,
        response_deserializer=dht_pb2.BlobPutResponse.FromString,
    )


def _encoded(request: bytes) -> bytes:
    return request


def _rpc_error(exc: grpc.RpcError, endpoint: str) -> CliError:
    code = exc.code() if isinstance(exc, grpc.Call) else None
    details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
    if code == grpc.StatusCode.UNAVAILABLE:
        return CliError(f"cannot reach {endpoint}: {details}")
    name = code.name if code is not None else "ERROR"
    return CliError(f"{name}: {details}")


def _progress(done: int, total: int) -> None:
    if total:
        pct = 100 * done // total
        bar = "#" * (pct // 4)
        print(f"\r[{bar:<25}] {pct:3d}% {done}/{total} bytes", end="", file=sys.stderr)
    else:
        print(f"\r{done} bytes", end="", file=sys.stderr)


def cmd_put(args: argparse.Namespace) -> int:
    try:
        total = os.path.getsize(args.file)
        handle = open(args.file, "rb")  # noqa: SIM115 - closed in finally
    except OSError as exc:
        raise CliError(f"cannot read {args.file}: {exc.strerror}") from None
    sent = 0

    def pieces() -> Iterator[bytes]:
        nonlocal sent
        yield wire.encode_put_request(b"", pin=args.pin)
        while piece := handle.read(PIECE_BYTES):
            sent += len(piece)
            _progress(sent, total)
            yield wire.encode_put_request(piece)

    channel, _stub_unused = _stub(args.endpoint)
    try:
        reply = put_call(channel)(pieces())
    except grpc.RpcError as exc:
        raise _rpc_error(exc, args.endpoint) from None
    finally:
        handle.close()
        channel.close()
        print(file=sys.stderr)
    print(f"stored {reply.size} bytes in {reply.chunk_count} chunks", file=sys.stderr)
    print(reply.content_id)
    return 0


def cmd_get(args: argparse.Namespace) -> int:
    try:
        digest = parse_id(args.content_id)
    except InvalidContentId as exc:
        raise CliError(str(exc)) from None
    offset = os.path.getsize(args.output) if os.path.exists(args.output) else 0
    if offset:
        print(f"resuming at byte {offset}", file=sys.stderr)
    channel, _stub_unused = _stub(args.endpoint)
    request = dht_pb2.BlobGetRequest(content_id=args.content_id, offset=offset)
    try:
        with open(args.output, "ab") as out:
            for at, data, total_size in get_call(channel)(request):
                if at != offset:
                    raise CliError(f"server sent offset {at}, expected {offset}")
                out.write(data)
                offset += len(data)
                _progress(offset, total_size)
    except grpc.RpcError as exc:
        raise _rpc_error(exc, args.endpoint) from None
    except OSError as exc:
        raise CliError(f"cannot write {args.output}: {exc.strerror}") from None
    finally:
        channel.close()
        print(file=sys.stderr)
    whole = hashlib.sha256()
    with open(args.output, "rb") as handle:
        while piece := handle.read(PIECE_BYTES):
            whole.update(piece)
    if whole.digest() != digest:
        raise CliError(
            f"{args.output} does not match {args.content_id} (was the partial file from "
            "another blob?); remove it and download again"
        )
    print(f"{args.output}: {offset} bytes, {format_id(digest)}", file=sys.stderr)
    return 0


def cmd_stat(args: argparse.Namespace) -> int:
    try:
        parse_id(args.content_id)
    except InvalidContentId as exc:
        raise CliError(str(exc)) from None
    channel, stub = _stub(args.endpoint)
    try:
        reply = stub.Stat(
            dht_pb2.BlobStatRequest(content_id=args.content_id, lookup=not args.no_lookup)
        )
    except grpc.RpcError as exc:
        raise _rpc_error(exc, args.endpoint) from None
    finally:
        channel.close()
    info = {
        "content_id": reply.content_id,
        "size": reply.size,
        "local": reply.local,
        "pinned": reply.pinned,
        "chunk_count": reply.chunk_count,
        "chunk_bytes": reply.chunk_bytes,
        "holders": [h.address for h in reply.holders],
    }
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for key, value in info.items():
            shown = ", ".join(value) if isinstance(value, list) else value
            print(f"{key:12s} {shown}")
    return 0
