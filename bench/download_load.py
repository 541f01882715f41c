"""The download side of ``bench.gateway``: processes of simulated devices
that GET one payload all at once (aiohttp, whole or in Range pieces, or a
lean HTTP/1.1 client reading into one reused buffer), and the anchor they
are measured against with the very same clients: a bare server that answers
every GET with the file through ``os.sendfile`` and nothing else (one
thread per connection; no HTTP parsing beyond the end of the request, no
cache, no metrics). The gateway's figure over this one is what the gateway
itself costs; over single-stream raw TCP (``bench.dht.raw_tcp``) it is what
the whole machine delivers to 100 Python devices on two cores.

``python -m bench.download_load client URL COUNT RANGE`` and
``python -m bench.download_load serve FILE`` (prints its port) are the two
child processes.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

from bench.cpu import cpu_seconds
from launcher.cluster import stop_processes

MIB = 1024 * 1024
REPO = Path(__file__).resolve().parents[1]
MAX_REQUEST_BYTES = 16 * 1024

LEAN = -1  # the download client's RANGE for a lean client (one socket, one reused buffer)


def download_client(url: str, count: int, range_bytes: int) -> None:
    """``python -m bench.download_load client URL COUNT RANGE``: on each
    ``go`` line, ``count`` concurrent devices each GET the whole payload at
    ``url`` with aiohttp (in ``RANGE``-byte Range pieces when RANGE > 0;
    with a lean client when RANGE is ``LEAN``); prints ``{"bytes", "start",
    "end"}`` (CLOCK_MONOTONIC, shared by processes)."""
    import aiohttp

    async def device(session: aiohttp.ClientSession, size: int) -> int:
        received = 0
        pieces = [(0, size)] if range_bytes <= 0 else [
            (o, min(size, o + range_bytes)) for o in range(0, size, range_bytes)]
        for start, end in pieces:
            headers = {} if range_bytes <= 0 else {"Range": f"bytes={start}-{end - 1}"}
            async with session.get(url, headers=headers) as resp:
                if resp.status not in (200, 206):
                    raise RuntimeError(f"GET {url}: HTTP {resp.status}")
                async for chunk in resp.content.iter_any():
                    received += len(chunk)
        return received

    async def lean_device(_session: aiohttp.ClientSession, _size: int) -> int:
        """HTTP/1.1 by hand, the body read into one reused 1 MiB buffer, as
        the TCP anchor's receiver reads: what the gateway serves when a
        device costs no more than the copy (aiohttp copies each chunk into
        a new bytes object)."""
        parts = urllib.parse.urlsplit(url)
        loop = asyncio.get_running_loop()
        with socket.socket() as sock:
            sock.setblocking(False)
            await loop.sock_connect(sock, (parts.hostname, parts.port))
            await loop.sock_sendall(sock, f"GET {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
                                          f"Connection: close\r\n\r\n".encode())
            buf = bytearray(MIB)
            head = b""
            while b"\r\n\r\n" not in head:
                n = await loop.sock_recv_into(sock, buf)
                if not n:
                    raise RuntimeError(f"GET {url}: the connection closed in the headers")
                head += bytes(buf[:n])
            status, _, rest = head.partition(b"\r\n\r\n")
            lines = status.decode("latin-1").split("\r\n")
            if " 200 " not in lines[0] + " ":
                raise RuntimeError(f"GET {url}: {lines[0]}")
            length = next(int(v) for k, _, v in (x.partition(":") for x in lines[1:])
                          if k.strip().lower() == "content-length")
            received = len(rest)
            while received < length and (n := await loop.sock_recv_into(sock, buf)):
                received += n
            return received

    one = lean_device if range_bytes == LEAN else device

    async def run() -> None:
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector, read_bufsize=4 * MIB,
                                         auto_decompress=False) as session:
            async with session.head(url) as resp:
                size = int(resp.headers["Content-Length"])
            loop = asyncio.get_running_loop()
            for _ in range(100):  # bounded: a bench runs a few rounds
                line = await loop.run_in_executor(None, sys.stdin.readline)
                if line.strip() != "go":
                    return
                start = time.monotonic()
                got = await asyncio.gather(*(one(session, size) for _ in range(count)))
                end = time.monotonic()
                if any(g != size for g in got):
                    raise RuntimeError(f"short download: {min(got)} of {size} bytes")
                print(json.dumps({"bytes": sum(got), "start": start, "end": end}), flush=True)

    asyncio.run(run())


class DownloadClients:
    """``download_processes`` client processes of ``_download_client``,
    waiting for a ``go``; ``round()`` runs every device at once."""

    def __init__(self, url: str, clients: int, processes: int, range_bytes: int) -> None:
        per = clients // processes
        self.procs = [subprocess.Popen(
            [sys.executable, "-m", "bench.download_load", "client", url, str(per), str(range_bytes)],
            cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            for _ in range(processes)]

    def round(self, server_pid: int) -> dict[str, float]:
        """MB/s (bytes over the first start to the last end) and CPU seconds
        per GiB of the gateway and of the clients."""
        server0 = cpu_seconds(server_pid)
        clients0 = sum(cpu_seconds(p.pid) for p in self.procs)
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        results = []
        for proc in self.procs:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError("a download client failed")
            results.append(json.loads(line))
        total = sum(r["bytes"] for r in results)
        gib = total / 1024**3
        elapsed = max(r["end"] for r in results) - min(r["start"] for r in results)
        return {"mb_s": total / MIB / elapsed,
                "server_cpu_s_per_gib": (cpu_seconds(server_pid) - server0) / gib,
                "clients_cpu_s_per_gib": (sum(cpu_seconds(p.pid) for p in self.procs) - clients0) / gib}

    def close(self) -> None:
        for proc in self.procs:
            if proc.stdin is not None and proc.poll() is None:
                proc.stdin.close()  # the client's end of rounds
        stop_processes(self.procs)  # type: ignore[arg-type]



def serve_file(path: Path) -> None:
    """A bare sendfile server on 127.0.0.1 (port printed on stdout), until
    stdin closes: every connection gets ``200`` with the file's length and
    the file (the headers alone for a HEAD), then is closed."""
    size = path.stat().st_size
    listener = socket.create_server(("127.0.0.1", 0), backlog=512)
    print(listener.getsockname()[1], flush=True)

    def answer(conn: socket.socket) -> None:
        with conn:
            request = b""
            while b"\r\n\r\n" not in request and len(request) < MAX_REQUEST_BYTES:
                piece = conn.recv(4096)
                if not piece:
                    return
                request += piece
            try:
                conn.sendall(f"HTTP/1.1 200 OK\r\nContent-Length: {size}\r\nConnection: close\r\n\r\n".encode())
                if request.startswith(b"HEAD "):
                    return
                with open(path, "rb") as f:
                    sent = 0
                    while sent < size:
                        n = os.sendfile(conn.fileno(), f.fileno(), sent, size - sent)
                        if n == 0:
                            return
                        sent += n
            except OSError:
                return  # the client went away

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return  # closed
            threading.Thread(target=answer, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    sys.stdin.read()  # the bench closes stdin to stop it
    listener.close()


class FileServer:
    """``serve_file`` in a child process; ``url`` serves ``path``."""

    def __init__(self, path: Path) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.download_load", "serve", str(path)],
                                     cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        port = self.proc.stdout.readline().strip()
        if not port:
            stop_processes([self.proc])  # type: ignore[list-item]
            raise RuntimeError("the bare file server did not start")
        self.url = f"http://127.0.0.1:{port}/file"

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        stop_processes([self.proc])  # type: ignore[list-item]


if __name__ == "__main__":
    if sys.argv[1:2] == ["client"]:
        download_client(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    elif sys.argv[1:2] == ["serve"]:
        serve_file(Path(sys.argv[2]))
    else:
        print("usage: python -m bench.download_load client URL COUNT RANGE | serve FILE", file=sys.stderr)
        sys.exit(2)
