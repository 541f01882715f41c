"""``python -m services.dht``: config from the environment, flags override, serve."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from fleetsuit.envconfig import ConfigError
from fleetsuit.logs import setup_logging
from services.dht.config import DhtConfig, parse_seeds
from services.dht.server import serve


def parse_args(argv: Sequence[str] | None, base: DhtConfig) -> DhtConfig:
    p = argparse.ArgumentParser(prog="python -m services.dht", description="fleetsuit dht node")
    p.add_argument("--node-id", default=base.node_id)
    p.add_argument("--listen", default=base.listen, metavar="HOST:PORT")
    p.add_argument("--metrics-port", type=int, default=base.metrics_port)
    p.add_argument("--data", default=base.data_dir, metavar="DIR")
    p.add_argument("--seeds", default=",".join(base.seeds), metavar="HOST:PORT,...")
    p.add_argument("--k", type=int, default=base.k, help="replicas per blob")
    p.add_argument("--max-disk-bytes", type=int, default=base.max_disk_bytes)
    p.add_argument("--max-blob-bytes", type=int, default=base.max_blob_bytes)
    p.add_argument("--chunk-bytes", type=int, default=base.chunk_bytes)
    p.add_argument("--repair-interval-ms", type=int, default=base.repair_interval_ms)
    p.add_argument("--max-uploads", type=int, default=base.max_uploads)
    p.add_argument("--provider-ttl-ms", type=int, default=base.provider_ttl_ms)
    p.add_argument("--scrub-interval-ms", type=int, default=base.scrub_interval_ms)
    p.add_argument("--scrub-bytes-per-s", type=int, default=base.scrub_bytes_per_s)
    p.add_argument(
        "--upload-bytes-per-s",
        type=int,
        default=base.upload_bytes_per_s,
        help="cap on bytes uploaded to peers and clients (0: unlimited)",
    )
    p.add_argument("--upload-burst-bytes", type=int, default=base.upload_burst_bytes)
    p.add_argument("--log-level", default="INFO")
    args = p.parse_args(argv)
    setup_logging("dht", args.node_id, args.log_level)
    return base.replace(
        node_id=args.node_id,
        listen=args.listen,
        metrics_port=args.metrics_port,
        data_dir=args.data,
        seeds=parse_seeds(args.seeds),
        k=args.k,
        max_disk_bytes=args.max_disk_bytes,
        max_blob_bytes=args.max_blob_bytes,
        chunk_bytes=args.chunk_bytes,
        repair_interval_ms=args.repair_interval_ms,
        max_uploads=args.max_uploads,
        provider_ttl_ms=args.provider_ttl_ms,
        scrub_interval_ms=args.scrub_interval_ms,
        scrub_bytes_per_s=args.scrub_bytes_per_s,
        upload_bytes_per_s=args.upload_bytes_per_s,
        upload_burst_bytes=args.upload_burst_bytes,
    )


def main(argv: Sequence[str] | None = None) -> int:
    try:
        config = parse_args(argv, DhtConfig.from_env()).validate()
    except ConfigError as exc:
        print(f"dht: {exc}", file=sys.stderr)
        return 2
    asyncio.run(serve(config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
