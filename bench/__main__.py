"""``make bench``: run every benchmark, print its figures, write JSON to
``bench/results/`` (one file per benchmark plus ``summary.json``).

``python -m bench consensus dht`` runs only the ones named. The node bench
writes ``node-<timestamp>.json`` rather than ``node.json``.
"""

from __future__ import annotations

import importlib
import json
import sys
import time
import traceback
from pathlib import Path

BENCHES = ("consensus", "manifest", "dht", "snapshot", "release", "gateway", "node")


def main(argv: list[str]) -> int:
    names = argv or list(BENCHES)
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        print(f"unknown benchmark(s) {unknown}; choose from {list(BENCHES)}", file=sys.stderr)
        return 2
    results_dir = Path("bench/results")
    results_dir.mkdir(parents=True, exist_ok=True)
    summary: dict[str, object] = {}
    failed = []
    for name in names:
        print(f"\n=== bench {name} ===", flush=True)
        started = time.monotonic()
        try:
            module = importlib.import_module(f"bench.{name}")
            module.main(results_dir)
            summary[name] = {"ok": True, "seconds": round(time.monotonic() - started, 1)}
        except Exception as exc:  # one failing bench must not hide the others
            traceback.print_exc()
            summary[name] = {"ok": False, "error": str(exc)}
            failed.append(name)
    (results_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    files = ", ".join("node-<timestamp>.json" if n == "node" else f"{n}.json" for n in names)
    print(f"\nresults in {results_dir}/ ({files})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
