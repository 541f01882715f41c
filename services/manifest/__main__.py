"""``python -m services.manifest``: configuration in, service running."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
from collections.abc import Sequence

from fleetsuit.envconfig import ConfigError

from .config import ManifestConfig
from .server import serve


def parse_config(argv: Sequence[str] | None = None) -> ManifestConfig:
    parser = argparse.ArgumentParser(prog="python -m services.manifest")
    parser.add_argument("--listen", help="HOST:PORT for gRPC")
    parser.add_argument("--metrics-port", type=int, help="Prometheus port (-1: off)")
    parser.add_argument("--node-id")
    parser.add_argument("--trust-anchor", action="append", help="PEM public key (repeatable)")
    args = parser.parse_args(argv)
    config = ManifestConfig.from_env()
    overrides: dict[str, object] = {}
    if args.listen is not None:
        overrides["listen"] = args.listen
    if args.metrics_port is not None:
        overrides["metrics_port"] = args.metrics_port
    if args.node_id is not None:
        overrides["node_id"] = args.node_id
    if args.trust_anchor:
        overrides["trust_anchor_paths"] = tuple(args.trust_anchor)
    return dataclasses.replace(config, **overrides).validate()  # type: ignore[arg-type]


def main(argv: Sequence[str] | None = None) -> int:
    try:
        config = parse_config(argv)
    except ConfigError as exc:
        print(f"manifest: {exc}", file=sys.stderr)
        return 2
    asyncio.run(serve(config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
