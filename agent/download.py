"""Fetching a release's payload over HTTP/1.1 with Range resume, checked
against the manifest's digest and size before anything is installed.

The download goes to a ``.part`` file next to the slot's image and resumes
from that file's length (``Range: bytes=<length>-``), after a cut
connection or an agent restart; on the next URL or the same one, with a
bounded number of attempts and a jittered, capped backoff. The manifest's
size caps what is accepted: a server that sends more is refused (the
endless-data attack, TUF's threat model). A payload whose SHA-256 differs
from the manifest's is refused and deleted; the slot's image is replaced
(by a rename) only once the digest matched. Without a destination
(``no_install``, the simulator) the bytes are hashed and dropped.

Bad data raises ``Refused`` (reported, never retried elsewhere: a gateway
serving it is not trusted); transport failures raise ``DownloadFailed``
once the attempts are spent.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import aiohttp

from .errors import DownloadFailed, Reason, Refused

_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


@dataclass(frozen=True, slots=True)
class DownloadPolicy:
    attempts: int = 8  # requests in all, over the URLs in turn
    backoff_initial_ms: int = 100
    backoff_max_ms: int = 2_000
    connect_timeout_ms: int = 5_000
    read_timeout_ms: int = 30_000  # between two pieces of the body
    piece_bytes: int = 256 * 1024


@dataclass(frozen=True, slots=True)
class Downloaded:
    bytes_fetched: int  # over the network, this call
    requests: int
    resumed_from: int  # bytes already in the .part file when this call began


class _Sink:
    """Where the bytes go: a ``.part`` file or nowhere, with the running hash."""

    def __init__(self, part: Path | None) -> None:
        self.part = part
        self.hash = hashlib.sha256()
        self.offset = 0
        self.received = 0  # over the network, this download
        self._file: BinaryIO | None = None
        if part is not None and part.exists():
            with open(part, "rb") as f:
                while piece := f.read(1024 * 1024):
                    self.hash.update(piece)
                    self.offset += len(piece)

    def restart(self) -> None:
        """The server ignored the Range: start over."""
        self.close()
        self.hash = hashlib.sha256()
        self.offset = 0
        if self.part is not None:
            self.part.unlink(missing_ok=True)

    def write(self, piece: bytes) -> None:
        if self.part is not None:
            if self._file is None:
                self.part.parent.mkdir(parents=True, exist_ok=True)
                self._file = open(self.part, "ab")  # noqa: SIM115 - kept open across pieces
            self._file.write(piece)
        self.hash.update(piece)
        self.offset += len(piece)
        self.received += len(piece)

    def close(self) -> None:
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None

    def discard(self) -> None:
        self.close()
        if self.part is not None:
            self.part.unlink(missing_ok=True)


class _Retry(Exception):
    """This request failed in a way another request may not."""


async def download(
    http: aiohttp.ClientSession,
    urls: tuple[str, ...],
    sha256: bytes,
    size: int,
    dest: Path | None,
    part: Path | None = None,
    *,
    policy: DownloadPolicy = DownloadPolicy(),
    rng: random.Random | None = None,
) -> Downloaded:
    """Fetch the payload of digest ``sha256`` and ``size`` bytes into
    ``dest`` (through ``part``; None: hash only). Raises ``Refused`` for bad
    data, ``DownloadFailed`` when no URL delivered it."""
    if not urls:
        raise DownloadFailed("the offer names no payload URL")
    if (dest is None) != (part is None):
        raise ValueError("give both dest and part, or neither")
    rng = rng or random.Random()
    sink = _Sink(part)
    resumed_from = sink.offset
    if sink.offset > size:
        sink.restart()
    requests = 0
    last_error = "no attempt"
    try:
        for attempt in range(policy.attempts):
            if sink.offset < size:
                url = urls[attempt % len(urls)]
                requests += 1
                try:
                    await _fetch(http, url, sink, size, policy)
                except _Retry as exc:
                    last_error = f"{url}: {exc}"
                except (aiohttp.ClientError, TimeoutError) as exc:
                    last_error = f"{url}: {type(exc).__name__}: {exc}"
                if sink.offset < size:
                    if attempt + 1 < policy.attempts:
                        await asyncio.sleep(_backoff_s(attempt, policy, rng))
                    continue
            sink.close()
            if sink.hash.digest() != sha256:
                sink.discard()
                raise Refused(Reason.MISMATCH, "IMAGE_DIGEST_MISMATCH",
                              f"the payload's SHA-256 is {sink.hash.hexdigest()}, the manifest says {sha256.hex()}",
                              step="fetch")
            if dest is not None and part is not None:
                os.replace(part, dest)
                _fsync_dir(dest.parent)
            return Downloaded(sink.received, requests, resumed_from)
        raise DownloadFailed(f"no URL delivered the payload in {policy.attempts} requests; last: {last_error}")
    finally:
        sink.close()


async def _fetch(http: aiohttp.ClientSession, url: str, sink: _Sink, size: int,
                 policy: DownloadPolicy) -> None:
    """One request from the sink's offset."""
    headers = {"Range": f"bytes={sink.offset}-"} if sink.offset else {}
    timeout = aiohttp.ClientTimeout(total=None, connect=policy.connect_timeout_ms / 1000,
                                    sock_read=policy.read_timeout_ms / 1000)
    async with http.get(url, headers=headers, timeout=timeout) as response:
        if response.status == 206:
            match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", ""))
            if match is None or int(match.group(1)) != sink.offset:
                sink.restart()
                raise _Retry(f"answered Range bytes={sink.offset}- with {response.headers.get('Content-Range')!r}")
        elif response.status == 200:
            if sink.offset:
                sink.restart()  # the server ignored the Range: the whole body follows
        elif response.status == 416:
            sink.restart()
            raise _Retry("416: the partial file is longer than what the server has")
        else:
            raise _Retry(f"HTTP {response.status}")
        async for piece in response.content.iter_chunked(policy.piece_bytes):
            if sink.offset + len(piece) > size:
                sink.discard()
                raise Refused(Reason.MISMATCH, "IMAGE_SIZE_MISMATCH",
                              f"the server sent more than the manifest's {size} bytes", step="fetch")
            sink.write(piece)


def _backoff_s(attempt: int, policy: DownloadPolicy, rng: random.Random) -> float:
    cap = min(policy.backoff_max_ms, policy.backoff_initial_ms * (2 ** min(attempt, 16)))
    return rng.uniform(cap / 2, cap) / 1000


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
