"""``fleetsuit blob``: put, get and stat payloads on a dht node.

One shape for every command (``fleetsuit.cli``): ``--json`` for a
machine-readable result, ``--quiet``, progress on stderr only when it is a
terminal, and one line naming the endpoint when a call fails.

``put`` prints the content id (with ``--json``, a JSON document). ``get``
downloads to ``-o FILE`` through a partial download kept beside it
(``download.py``): it resumes only its own partial download of the same
content id, renames onto FILE once the whole digest checks, and never
touches an existing FILE that does not hold that content unless ``--force``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from typing import Any

import grpc

from fleetsuit.cli import (
    CliError,
    Progress,
    add_endpoint,
    add_output_options,
    add_quiet,
    calling,
    emit,
)
from fleetsuit.grpcutil import CHANNEL_OPTIONS
from fleetsuit.v1 import dht_pb2, dht_pb2_grpc
from services.dht import wire
from services.dht.content import Digest, parse_id
from services.dht.download import PARTIAL_SUFFIX, PartialDownload
from services.dht.errors import InvalidContentId

SERVICE = "dht"
PIECE_BYTES = 1024 * 1024


def register(subparsers: Any) -> None:
    blob = subparsers.add_parser("blob", help="content-addressed payloads (dht)")
    sub = blob.add_subparsers(dest="blob_command", metavar="ACTION")
    sub.required = True

    put = sub.add_parser("put", help="store a file; prints its content id")
    add_endpoint(put, SERVICE)
    put.add_argument("--pin", action="store_true", help="pin it on that node (never evicted)")
    add_output_options(put, output=False)
    add_quiet(put)
    put.add_argument("file", help="the file to store")
    put.set_defaults(func=cmd_put)

    get = sub.add_parser(
        "get",
        help="download a blob to a file, resuming an interrupted download",
        description=(
            f"Download a blob to FILE. The bytes go to FILE{PARTIAL_SUFFIX} first, which a "
            "later run for the same content id resumes; FILE appears only once the whole "
            "content has matched the id."
        ),
    )
    add_endpoint(get, SERVICE)
    get.add_argument(
        "-o", "--output", dest="target", required=True, metavar="FILE",
        help="where to write the blob",
    )  # fmt: skip
    get.add_argument(
        "--force",
        action="store_true",
        help="replace FILE even if it holds something else, and discard a partial "
        "download that this command did not make",
    )
    add_output_options(get, output=False)
    add_quiet(get)
    get.add_argument("content_id", metavar="ID", help="the blob's content id, sha256:<hex>")
    get.set_defaults(func=cmd_get)

    stat = sub.add_parser("stat", help="size, presence and holders of a blob")
    add_endpoint(stat, SERVICE)
    stat.add_argument(
        "--no-lookup", action="store_true", help="only what this node knows (no network lookup)"
    )
    add_output_options(stat, output=False)
    stat.add_argument("content_id", metavar="ID", help="the blob's content id, sha256:<hex>")
    stat.set_defaults(func=cmd_stat)


def _channel(endpoint: str) -> grpc.Channel:
    return grpc.insecure_channel(endpoint, options=CHANNEL_OPTIONS)


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


def _digest(content_id: str) -> Digest:
    try:
        return parse_id(content_id)
    except InvalidContentId as exc:
        raise CliError(str(exc)) from None


def _note(args: argparse.Namespace, message: str) -> None:
    """A line for the person at the terminal (stderr; not with --quiet)."""
    if not args.quiet:
        print(message, file=sys.stderr)


def cmd_put(args: argparse.Namespace) -> int:
    try:
        total = os.path.getsize(args.file)
        handle = open(args.file, "rb")  # noqa: SIM115 - closed in finally
    except OSError as exc:
        raise CliError(f"cannot read {args.file}: {exc.strerror}") from None
    progress = Progress(total, "put", quiet=args.quiet)
    sent = 0

    def pieces() -> Iterator[bytes]:
        nonlocal sent
        yield wire.encode_put_request(b"", pin=args.pin)
        while piece := handle.read(PIECE_BYTES):
            sent += len(piece)
            progress.update(sent)
            yield wire.encode_put_request(piece)

    channel = _channel(args.endpoint)
    try:
        with calling(args.endpoint, SERVICE):
            reply = put_call(channel)(pieces())
    finally:
        handle.close()
        channel.close()
        progress.close()
    _note(args, f"stored {reply.size} bytes in {reply.chunk_count} chunks")
    doc = {
        "content_id": reply.content_id,
        "size": reply.size,
        "chunk_count": reply.chunk_count,
        "replicas_requested": reply.replicas_requested,
        "pinned": bool(args.pin),
    }
    emit(args, doc, str(reply.content_id))
    return 0


def cmd_get(args: argparse.Namespace) -> int:
    digest = _digest(args.content_id)
    download = PartialDownload(args.target, args.content_id, digest, force=args.force)
    offset = download.prepare()
    for note in download.notes:
        _note(args, note)
    if not download.already_there:
        _fetch(args, download, offset)
    size = download.finish()
    doc = {
        "content_id": args.content_id,
        "path": args.target,
        "size": size,
        "resumed_from": download.resumed_from,
        "already_there": download.already_there,
    }
    emit(args, doc, f"{args.target}: {size} bytes, {args.content_id}")
    return 0


def _fetch(args: argparse.Namespace, download: PartialDownload, offset: int) -> None:
    channel = _channel(args.endpoint)
    progress: Progress | None = None
    request = dht_pb2.BlobGetRequest(content_id=args.content_id, offset=offset)
    try:
        with calling(args.endpoint, SERVICE), download:
            for at, data, total_size in get_call(channel)(request):
                if progress is None:
                    progress = Progress(total_size, "get", quiet=args.quiet)
                download.write(at, data, total_size)
                progress.update(download.offset)
    finally:
        channel.close()
        if progress is not None:
            progress.close()


def cmd_stat(args: argparse.Namespace) -> int:
    _digest(args.content_id)
    channel = _channel(args.endpoint)
    try:
        with calling(args.endpoint, SERVICE):
            reply = dht_pb2_grpc.DhtStub(channel).Stat(
                dht_pb2.BlobStatRequest(content_id=args.content_id, lookup=not args.no_lookup)
            )
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

    def text(doc: dict[str, Any]) -> str:
        return "\n".join(
            f"{key:12s} {', '.join(value) if isinstance(value, list) else value}"
            for key, value in doc.items()
        )

    emit(args, info, text)
    return 0
