"""The ``fleetsuit`` command run as a person runs it (``python -m launcher``
in a child process), and ``fleetsuit cluster up`` in the foreground: started,
awaited until it prints success, stopped by pid with every child it started."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from launcher.layout import CLUSTER_FILE, NODE_PORT_SPAN

from .ports import free_base_port
from .procs import pid_alive, stop_processes
from .wait import wait_until

CLI = [sys.executable, "-m", "launcher"]
CLI_TIMEOUT_S = 60.0
UP_LINE = " up; description in "


def run_cli(
    *args: str, input: str | None = None, timeout_s: float = CLI_TIMEOUT_S, check: bool = False
) -> subprocess.CompletedProcess[str]:
    """Run ``fleetsuit ARGS`` to completion; stdout and stderr captured."""
    return subprocess.run(
        [*CLI, *args], input=input, capture_output=True, text=True, timeout=timeout_s, check=check
    )


class ClusterUp:
    """``fleetsuit cluster up`` in the foreground, its output collected."""

    def __init__(
        self, data_dir: Path, nodes: int = 1, base_port: int | None = None, extra: Sequence[str] = ()
    ) -> None:
        self.data_dir = data_dir
        self.base_port = base_port or free_base_port(NODE_PORT_SPAN * nodes + NODE_PORT_SPAN)
        self.doc: dict[str, Any] | None = None
        self._out: list[str] = []
        self._err: list[str] = []
        self.proc = subprocess.Popen(
            [*CLI, "cluster", "up", "--nodes", str(nodes), "--data", str(data_dir),
             "--base-port", str(self.base_port), *extra],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self._out), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, self._err), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(stream: Any, into: list[str]) -> None:
        for line in stream:
            into.append(line)

    @property
    def stdout(self) -> str:
        return "".join(self._out)

    @property
    def stderr(self) -> str:
        return "".join(self._err)

    def wait_up(self, timeout_s: float = 90.0) -> dict[str, Any]:
        """Wait for the success line; return cluster.json. Fails with the
        launcher's output if it exits first."""

        def up_or_exited() -> bool:
            return any(UP_LINE in line for line in self._out) or self.proc.poll() is not None

        wait_until(up_or_exited, timeout_s, "cluster up to print success")
        if not any(UP_LINE in line for line in self._out):
            self.join_output()
            raise AssertionError(
                f"cluster up exited with {self.proc.returncode}:\n{self.stdout}{self.stderr}"
            )
        self.doc = json.loads((self.data_dir / CLUSTER_FILE).read_text())
        return self.doc

    def child_pids(self) -> list[int]:
        if self.doc is None:
            return []
        return [pid for node in self.doc["nodes"] for pid in node["pids"].values()]

    def wait_exit(self, timeout_s: float = 60.0) -> int:
        code = self.proc.wait(timeout=timeout_s)
        self.join_output()
        return code

    def join_output(self) -> None:
        for reader in self._readers:
            reader.join(timeout=10)

    def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM the launcher by pid and wait for it (it stops its
        children); whatever still runs after that is stopped by pid too."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            stop_processes([self.proc], grace_s=0)
            code = self.proc.wait()
        leftovers = [pid for pid in self.child_pids() if pid_alive(pid)]
        stop_processes(leftovers)
        self.join_output()
        return code
