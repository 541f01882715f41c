"""Downloads against a real aiohttp server on 127.0.0.1:0: a cut connection
is resumed with Range from the right offset, wrong bytes are refused and
leave the slot alone, a server sending more than the manifest's size is
refused (the endless-data attack), no_install hashes without writing."""

from __future__ import annotations

import hashlib
import random
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio

from agent.download import DownloadPolicy, download
from agent.errors import DownloadFailed, Reason, Refused

from .fakes import PayloadServer, cid_of

PAYLOAD = bytes(random.Random(7).getrandbits(8) for _ in range(300_000))
CID = cid_of(PAYLOAD)
SHA = hashlib.sha256(PAYLOAD).digest()
FAST = DownloadPolicy(attempts=4, backoff_initial_ms=1, backoff_max_ms=5, piece_bytes=16 * 1024)


@pytest_asyncio.fixture
async def server() -> AsyncIterator[PayloadServer]:
    s = PayloadServer({CID: PAYLOAD})
    await s.start()
    yield s
    await s.stop()


@pytest_asyncio.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def slot(tmp_path: Path) -> tuple[Path, Path]:
    dest = tmp_path / "slots" / "b" / "firmware"
    dest.parent.mkdir(parents=True)
    dest.write_bytes(b"the old image")
    return dest, dest.with_name("firmware.part")


@pytest.mark.asyncio
async def test_a_cut_connection_resumes_from_the_right_offset(
        server: PayloadServer, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    server.cut_after, server.cuts = 100_000, 1
    dest, part = slot(tmp_path)
    done = await download(http, (server.url(CID),), SHA, len(PAYLOAD), dest, part, policy=FAST)
    assert dest.read_bytes() == PAYLOAD and not part.exists()
    assert server.ranges[0] is None
    assert len(server.ranges) == 2
    resumed_at = int(str(server.ranges[1]).removeprefix("bytes=").rstrip("-"))
    assert 0 < resumed_at <= 100_000  # what reached the .part file, no more
    assert done.requests == 2


@pytest.mark.asyncio
async def test_a_part_file_left_by_a_restart_is_continued(
        server: PayloadServer, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    dest, part = slot(tmp_path)
    part.write_bytes(PAYLOAD[:12_345])
    done = await download(http, (server.url(CID),), SHA, len(PAYLOAD), dest, part, policy=FAST)
    assert server.ranges == ["bytes=12345-"]
    assert done.resumed_from == 12_345 and done.bytes_fetched == len(PAYLOAD) - 12_345
    assert dest.read_bytes() == PAYLOAD


@pytest.mark.asyncio
async def test_a_cut_connection_moves_on_to_the_next_url(
        server: PayloadServer, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    dest, part = slot(tmp_path)
    dead = "http://127.0.0.1:9/v1/payloads/" + CID  # the discard port: nothing listens
    await download(http, (dead, server.url(CID)), SHA, len(PAYLOAD), dest, part, policy=FAST)
    assert dest.read_bytes() == PAYLOAD


@pytest.mark.asyncio
async def test_wrong_bytes_are_refused_and_the_slot_is_untouched(
        server: PayloadServer, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    server.tamper = True
    dest, part = slot(tmp_path)
    with pytest.raises(Refused) as info:
        await download(http, (server.url(CID),), SHA, len(PAYLOAD), dest, part, policy=FAST)
    assert (info.value.reason, info.value.suit_code, info.value.step) == (
        Reason.MISMATCH, "IMAGE_DIGEST_MISMATCH", "fetch")
    assert dest.read_bytes() == b"the old image" and not part.exists()


@pytest.mark.asyncio
async def test_a_server_sending_more_than_the_size_is_refused(
        server: PayloadServer, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    server.extra = b"\0" * 50_000
    dest, part = slot(tmp_path)
    with pytest.raises(Refused) as info:
        await download(http, (server.url(CID),), SHA, len(PAYLOAD), dest, part, policy=FAST)
    assert info.value.suit_code == "IMAGE_SIZE_MISMATCH"
    assert dest.read_bytes() == b"the old image" and not part.exists()


@pytest.mark.asyncio
async def test_no_install_hashes_and_writes_nothing(
        server: PayloadServer, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    server.cut_after, server.cuts = 50_000, 2
    done = await download(http, (server.url(CID),), SHA, len(PAYLOAD), None, None, policy=FAST)
    assert done.requests == 3 and done.bytes_fetched == len(PAYLOAD)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.asyncio
async def test_attempts_are_bounded(http: aiohttp.ClientSession, tmp_path: Path) -> None:
    dest, part = slot(tmp_path)
    with pytest.raises(DownloadFailed):
        await download(http, ("http://127.0.0.1:9/x",), SHA, len(PAYLOAD), dest, part, policy=FAST)
    assert dest.read_bytes() == b"the old image"


@pytest.mark.asyncio
async def test_a_missing_payload_is_a_failed_download(
        server: PayloadServer, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    with pytest.raises(DownloadFailed):
        await download(http, (server.url(cid_of(b"absent")),), SHA, len(PAYLOAD), None, None, policy=FAST)
