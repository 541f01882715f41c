"""The consensus process refuses, with one line and no traceback, a data
directory that belongs to another node, and a port already in use."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

from services.consensus.storage import RocksStorage


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.consensus", *args],
        capture_output=True, text=True, timeout=60,
    )


def test_data_directory_of_another_node_stops_the_process(tmp_path: Path) -> None:
    RocksStorage(str(tmp_path / "consensus"), node_id="n1", cluster_id="c").close()
    out = _run("--node-id", "n2", "--cluster-id", "c", "--listen", "127.0.0.1:0",
               "--peers", "n2=127.0.0.1:1", "--data", str(tmp_path))
    assert out.returncode == 3
    assert "WRONG_DATA_DIRECTORY" in out.stderr and "belongs to node 'n1'" in out.stderr
    assert "Traceback" not in out.stderr


def test_bad_configuration_is_a_usage_error(tmp_path: Path) -> None:
    out = _run("--node-id", "n9", "--peers", "n1=127.0.0.1:1", "--data", str(tmp_path))
    assert out.returncode == 2
    assert "n9" in out.stderr and "Traceback" not in out.stderr


def test_port_in_use_is_a_one_line_error(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        out = _run("--node-id", "n1", "--listen", f"127.0.0.1:{port}",
                   "--peers", f"n1=127.0.0.1:{port}", "--data", str(tmp_path))
    assert out.returncode == 3
    assert "cannot start" in out.stderr and "Traceback" not in out.stderr
