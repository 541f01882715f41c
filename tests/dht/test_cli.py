"""``fleetsuit blob`` run as a person runs it (``python -m launcher blob ...``
in a child process) against real nodes on 127.0.0.1: one output shape for
every command, and a ``get`` that is never destructive by surprise."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import pathlib
import random
import re
import signal
import sys

import grpc
import pytest
from prometheus_client import CollectorRegistry

from fleetsuit import rpc
from fleetsuit.v1 import dht_pb2_grpc
from services.dht.config import MIB, DhtConfig
from services.dht.content import content_id_of
from services.dht.download import PARTIAL_SUFFIX, SIDECAR_SUFFIX, Sidecar
from services.dht.kv import MemoryKeyValue
from services.dht.metrics import DhtMetrics
from services.dht.server import DhtDeps, build_server
from services.dht.store import BlobStore
from tests.dht.test_service import CHUNK, Cluster, payload, put
from tests.support.wait import wait_for

REPO = pathlib.Path(__file__).resolve().parents[2]
CLI_TIMEOUT_S = 60.0


async def start_cli(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "launcher", "blob", *args, cwd=REPO,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


async def finish(proc: asyncio.subprocess.Process) -> tuple[int, str, str]:
    """Wait for a CLI process; one that overruns is killed by its pid."""
    try:
        out, err = await asyncio.wait_for(proc.communicate(), CLI_TIMEOUT_S)
    finally:
        if proc.returncode is None:
            os.kill(proc.pid, signal.SIGKILL)
            await proc.wait()
    return proc.returncode or 0, out.decode(), err.decode()


async def cli(*args: str) -> tuple[int, str, str]:
    return await finish(await start_cli(*args))


def sha256_id(path: pathlib.Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def partial_of(target: pathlib.Path) -> pathlib.Path:
    return target.with_name(target.name + PARTIAL_SUFFIX)


def sidecar_of(target: pathlib.Path) -> pathlib.Path:
    return target.with_name(target.name + SIDECAR_SUFFIX)


def write_partial(target: pathlib.Path, content_id: str, data: bytes) -> None:
    """A partial download of ``content_id`` as ``blob get`` leaves one."""
    sidecar_of(target).write_bytes(Sidecar(content_id, len(data)).encode())
    partial_of(target).write_bytes(data)


# gRPC's C core logs some events itself (``I1202 00:50:17.762422 24884
# chttp2_transport.cc:1403] ... Got goaway``) unless GRPC_VERBOSITY is set
# when the process starts; those lines are not the command's.
_GRPC_CORE_LOG = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ \S+:\d+\] ")


def one_line_error(rc: int, err: str) -> str:
    assert rc == 1, err
    ours = "".join(line for line in err.splitlines(True) if not _GRPC_CORE_LOG.match(line))
    assert ours.startswith("fleetsuit: ") and ours.count("\n") == 1, err
    return ours


async def cli_error(*args: str) -> str:
    """Run a command that must fail: exit code 1 and one line on stderr."""
    rc, _out, err = await cli(*args)
    return one_line_error(rc, err)


# ------------------------------------------------------------ one shape


@pytest.mark.asyncio
async def test_cli_put_get_resume_and_stat(cluster: Cluster, tmp_path: pathlib.Path) -> None:
    node = await cluster.add()
    data = payload(3 * CHUNK + 17, seed=11)
    src = tmp_path / "payload.bin"
    src.write_bytes(data)

    rc, out, err = await cli("put", "--endpoint", node.contact.address, str(src))
    assert rc == 0, err
    cid = out.strip().splitlines()[-1]
    assert cid == content_id_of(data)
    dst = tmp_path / "out.bin"
    write_partial(dst, cid, data[:1000])  # a partial download of this very blob
    rc, _out, err = await cli("get", "--endpoint", node.contact.address, cid, "-o", str(dst))
    assert rc == 0, err
    assert "resuming at byte 1000" in err
    assert hashlib.sha256(dst.read_bytes()).hexdigest() == cid.split(":")[1]
    assert sorted(os.listdir(tmp_path)) == ["out.bin", "payload.bin"]  # no partial state left
    rc, out, err = await cli("stat", "--endpoint", node.contact.address, "--json", cid)
    assert rc == 0 and f'"size": {len(data)}' in out, err
    rc, _out, err = await cli("stat", "--endpoint", node.contact.address, "sha256:zz")
    assert rc == 1 and err.startswith("fleetsuit: ")


@pytest.mark.asyncio
async def test_every_command_prints_its_result_as_json_with_json(
    cluster: Cluster, tmp_path: pathlib.Path
) -> None:
    node = await cluster.add()
    data = payload(2 * CHUNK + 5, seed=12)
    src = tmp_path / "payload.bin"
    src.write_bytes(data)
    endpoint = ("--endpoint", node.contact.address)

    rc, out, err = await cli("put", *endpoint, "--json", "--pin", str(src))
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["content_id"] == content_id_of(data)
    assert (doc["size"], doc["chunk_count"], doc["pinned"]) == (len(data), 3, True)
    cid = doc["content_id"]

    dst = tmp_path / "out.bin"
    rc, out, err = await cli("get", *endpoint, "--json", cid, "-o", str(dst))
    assert rc == 0, err
    doc = json.loads(out)
    assert (doc["content_id"], doc["path"], doc["size"]) == (cid, str(dst), len(data))
    assert doc["resumed_from"] == 0
    assert dst.read_bytes() == data

    rc, out, err = await cli("stat", *endpoint, "--no-lookup", "--json", cid)
    assert rc == 0, err
    doc = json.loads(out)
    assert (doc["size"], doc["local"], doc["pinned"]) == (len(data), True, True)
    rc, out, err = await cli("stat", *endpoint, "--no-lookup", cid)
    assert rc == 0, err
    assert out.splitlines()[0].split() == ["content_id", cid]


@pytest.mark.asyncio
async def test_progress_only_on_a_terminal_and_quiet_says_nothing(
    cluster: Cluster, tmp_path: pathlib.Path
) -> None:
    node = await cluster.add()
    data = payload(4 * CHUNK, seed=13)
    src = tmp_path / "payload.bin"
    src.write_bytes(data)
    endpoint = ("--endpoint", node.contact.address)

    rc, out, err = await cli("put", *endpoint, str(src))
    assert rc == 0 and "\r" not in err, err  # stderr is a pipe here: no progress bar
    assert out == content_id_of(data) + "\n"
    rc, out, err = await cli("put", *endpoint, "--quiet", str(src))
    assert (rc, err) == (0, "")
    dst = tmp_path / "out.bin"
    write_partial(dst, content_id_of(data), data[:100])
    rc, out, err = await cli("get", *endpoint, "--quiet", content_id_of(data), "-o", str(dst))
    assert (rc, err) == (0, ""), err
    assert dst.read_bytes() == data


@pytest.mark.asyncio
async def test_a_wrong_or_unreachable_endpoint_is_one_line_naming_it(
    tmp_path: pathlib.Path,
) -> None:
    server, health = rpc.new_server("other", {}, None)  # a gRPC server without the dht
    rpc.add_health_and_reflection(server, health, [])
    port = rpc.bind(server, "127.0.0.1:0")
    await server.start()
    try:
        cid = content_id_of(b"x")
        err = await cli_error("stat", "--endpoint", f"127.0.0.1:{port}", cid)
        assert f"127.0.0.1:{port} is not a dht endpoint" in err
    finally:
        await server.stop(None)
    err = await cli_error("stat", "--endpoint", f"127.0.0.1:{port}", cid)
    assert f"cannot reach 127.0.0.1:{port}" in err
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------ get is never destructive


@pytest.mark.asyncio
@pytest.mark.parametrize("foreign", ["other", "prefix"])
async def test_a_foreign_file_at_the_target_is_left_byte_for_byte(
    cluster: Cluster, tmp_path: pathlib.Path, foreign: str
) -> None:
    node = await cluster.add()
    data = payload(3 * CHUNK, seed=14)
    cid = await put(cluster.stub(node), data)
    dst = tmp_path / "firmware.bin"
    # A prefix of the blob is what an older ``get`` would have appended to.
    before = b"someone's notes\n" * 500 if foreign == "other" else data[:1000]
    dst.write_bytes(before)
    stat = dst.stat()

    err = await cli_error("get", "--endpoint", node.contact.address, cid, "-o", str(dst))
    assert "--force" in err and str(dst) in err
    assert dst.read_bytes() == before
    assert (dst.stat().st_mtime_ns, dst.stat().st_ino) == (stat.st_mtime_ns, stat.st_ino)
    assert sorted(os.listdir(tmp_path)) == ["firmware.bin"]

    rc, _out, err = await cli(
        "get", "--endpoint", node.contact.address, "--force", cid, "-o", str(dst)
    )
    assert rc == 0, err
    assert dst.read_bytes() == data
    assert sorted(os.listdir(tmp_path)) == ["firmware.bin"]


@pytest.mark.asyncio
async def test_an_identical_file_at_the_target_is_left_alone(tmp_path: pathlib.Path) -> None:
    data = payload(CHUNK + 1, seed=15)
    dst = tmp_path / "firmware.bin"
    dst.write_bytes(data)
    stat = dst.stat()
    # Nothing to fetch, so not even the (unreachable) endpoint is called.
    rc, out, err = await cli(
        "get", "--endpoint", "127.0.0.1:1", "--json", content_id_of(data), "-o", str(dst)
    )
    assert rc == 0, err
    assert json.loads(out)["already_there"] is True
    assert dst.read_bytes() == data and dst.stat().st_mtime_ns == stat.st_mtime_ns


@pytest.mark.asyncio
async def test_not_found_leaves_no_file(cluster: Cluster, tmp_path: pathlib.Path) -> None:
    node = await cluster.add()
    dst = tmp_path / "missing.bin"
    cid = content_id_of(b"nobody has this")
    err = await cli_error("get", "--endpoint", node.contact.address, cid, "-o", str(dst))
    assert "NOT_FOUND" in err and node.contact.address in err
    assert not list(tmp_path.iterdir())


@pytest.mark.asyncio
async def test_a_partial_of_another_content_id_is_not_reused(
    cluster: Cluster, tmp_path: pathlib.Path
) -> None:
    node = await cluster.add()
    first, second = payload(2 * CHUNK, seed=16), payload(2 * CHUNK, seed=17)
    first_id = await put(cluster.stub(node), first)
    second_id = await put(cluster.stub(node), second)
    dst = tmp_path / "firmware.bin"
    write_partial(dst, first_id, first[:5000])
    rc, _out, err = await cli("get", "--endpoint", node.contact.address, second_id, "-o", str(dst))
    assert rc == 0, err
    assert "resuming" not in err
    assert f"discarding the partial download of {first_id}" in err
    assert sha256_id(dst) == second_id
    assert sorted(os.listdir(tmp_path)) == ["firmware.bin"]


@pytest.mark.asyncio
async def test_a_partial_file_this_command_did_not_make_is_refused(
    cluster: Cluster, tmp_path: pathlib.Path
) -> None:
    node = await cluster.add()
    data = payload(2 * CHUNK, seed=18)
    cid = await put(cluster.stub(node), data)
    dst = tmp_path / "firmware.bin"
    partial_of(dst).write_bytes(b"not from fleetsuit")  # no sidecar: not ours
    err = await cli_error("get", "--endpoint", node.contact.address, cid, "-o", str(dst))
    assert "--force" in err
    assert partial_of(dst).read_bytes() == b"not from fleetsuit" and not dst.exists()
    rc, _out, err = await cli(
        "get", "--endpoint", node.contact.address, "--force", cid, "-o", str(dst)
    )
    assert rc == 0, err
    assert dst.read_bytes() == data
    assert sorted(os.listdir(tmp_path)) == ["firmware.bin"]


# ------------------------------------------------------------ interrupted downloads


class PacedNode:
    """A node on ``store`` whose uploads go at ``bytes_per_s`` (0: no limit),
    so that a download can be interrupted halfway."""

    def __init__(self, store: BlobStore, bytes_per_s: int) -> None:
        self.config = DhtConfig(
            node_id="paced", listen="127.0.0.1:0", chunk_bytes=CHUNK,
            upload_bytes_per_s=bytes_per_s, upload_burst_bytes=CHUNK,
        ).validate()  # fmt: skip
        self.deps = DhtDeps(
            store=store, metrics=DhtMetrics(CollectorRegistry()), rng=random.Random(0)
        )
        self.server, port = build_server(self.config, self.deps)
        self.address = f"127.0.0.1:{port}"

    async def __aenter__(self) -> PacedNode:
        await self.server.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def stop(self) -> None:
        await self.server.stop(0)
        if self.deps.node is not None:
            await self.deps.node.close()
            self.deps.node = None

    async def put(self, data: bytes) -> str:
        async with grpc.aio.insecure_channel(self.address) as channel:
            return await put(dht_pb2_grpc.DhtStub(channel), data)


async def interrupted_download(
    tmp_path: pathlib.Path, data: bytes, how: str
) -> tuple[BlobStore, str, pathlib.Path]:
    """Start ``blob get`` on a slow node and interrupt it once a few chunks
    have landed: ``how`` = "server" stops the node, "client" kills the CLI."""
    store = BlobStore(MemoryKeyValue(), 64 * MIB)
    dst = tmp_path / "firmware.bin"
    async with PacedNode(store, bytes_per_s=MIB // 2) as node:
        cid = await node.put(data)
        proc = await start_cli("get", "--endpoint", node.address, cid, "-o", str(dst))
        try:

            async def some_chunks_landed() -> bool | None:
                partial = partial_of(dst)
                return True if partial.exists() and partial.stat().st_size >= 2 * CHUNK else None

            await wait_for(some_chunks_landed, 30, "a few chunks of the download")
            if how == "server":
                await node.stop()
            else:
                os.kill(proc.pid, signal.SIGKILL)
            rc, _out, err = await finish(proc)
        finally:
            if proc.returncode is None:
                os.kill(proc.pid, signal.SIGKILL)
                await proc.wait()
    if how == "server":
        one_line_error(rc, err)
    assert not dst.exists()  # nothing at the target before the digest has checked
    return store, cid, dst


@pytest.mark.asyncio
@pytest.mark.parametrize("how", ["server", "client"])
async def test_an_interrupted_download_resumes_and_ends_with_the_right_digest(
    tmp_path: pathlib.Path, how: str
) -> None:
    data = payload(32 * CHUNK + 99, seed=19)  # 2 MiB: about 4 s at the paced rate
    store, cid, dst = await interrupted_download(tmp_path, data, how)
    sidecar = Sidecar.decode(sidecar_of(dst).read_bytes())
    assert sidecar is not None and sidecar.content_id == cid
    assert 2 * CHUNK <= sidecar.offset < len(data)
    assert partial_of(dst).stat().st_size >= sidecar.offset
    assert partial_of(dst).read_bytes()[: sidecar.offset] == data[: sidecar.offset]

    async with PacedNode(store, bytes_per_s=0) as node:  # back, at full speed
        rc, _out, err = await cli("get", "--endpoint", node.address, cid, "-o", str(dst))
    assert rc == 0, err
    assert f"resuming at byte {sidecar.offset}" in err
    assert sha256_id(dst) == cid
    assert sorted(os.listdir(tmp_path)) == ["firmware.bin"]


@pytest.mark.asyncio
async def test_a_damaged_partial_download_is_discarded_not_installed(
    cluster: Cluster, tmp_path: pathlib.Path
) -> None:
    node = await cluster.add()
    data = payload(2 * CHUNK, seed=20)
    cid = await put(cluster.stub(node), data)
    dst = tmp_path / "firmware.bin"
    write_partial(dst, cid, b"\x00" * 1000)  # ours, but its bytes went bad on disk
    err = await cli_error("get", "--endpoint", node.contact.address, "--quiet", cid, "-o", str(dst))
    assert "do not match" in err
    assert not list(tmp_path.iterdir())
    rc, _out, err = await cli("get", "--endpoint", node.contact.address, cid, "-o", str(dst))
    assert rc == 0, err
    assert dst.read_bytes() == data


def test_the_sidecar_is_read_bounded_and_only_when_it_is_ours() -> None:
    good = Sidecar("sha256:" + "ab" * 32, 123)
    assert Sidecar.decode(good.encode()) == good
    for bad in [
        b"",
        b"not json",
        b"[]",
        b'{"format": 2, "content_id": "x", "offset": 1}',
        b'{"format": 1, "content_id": "x", "offset": -1}',
        b'{"format": 1, "content_id": "x", "offset": true}',
        b'{"format": 1, "content_id": 7, "offset": 1}',
        good.encode() + b" " * 5000,
    ]:
        assert Sidecar.decode(bad) is None, bad
