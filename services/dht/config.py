"""The dht service's configuration: one frozen dataclass.

``from_env`` is the only reader of environment variables (prefix
``FLEETSUIT_DHT_``); command-line flags override it in ``__main__``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

from fleetsuit.envconfig import ConfigError, env_int, env_str

MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class DhtConfig:
    node_id: str = "node-1"
    listen: str = "127.0.0.1:7102"  # HOST:PORT; port 0 picks a free one
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 7107  # 0 picks a free one, -1 disables
    data_dir: str = "data/dht"
    seeds: tuple[str, ...] = ()  # HOST:PORT of other nodes' dht services
    k: int = 3  # replicas per blob
    bucket_size: int = 20  # Kademlia's k for buckets and lookups
    alpha: int = 3  # lookup parallelism
    chunk_bytes: int = 1 * MIB
    max_disk_bytes: int = 10 * 1024 * MIB
    max_blob_bytes: int = 4 * 1024 * MIB
    repair_interval_ms: int = 5_000
    rpc_timeout_ms: int = 2_000
    fetch_timeout_ms: int = 30_000
    fetch_parallelism: int = 8  # chunks in flight per blob fetch
    max_uploads: int = 4  # chunks served to peers at once; more are told Busy
    provider_ttl_ms: int = 30_000  # provider records expire unless re-announced
    scrub_interval_ms: int = 600_000  # pause between scrub passes
    scrub_bytes_per_s: int = 32 * MIB  # scrub read rate limit
    # Upload cap (chunks served to peers and Get streams), so spreading a
    # release does not saturate an edge link; 0 = unlimited (ratelimit.py).
    upload_bytes_per_s: int = 0
    upload_burst_bytes: int = 1 * MIB  # credit an idle node may spend at once
    grace_ms: int = 2_000

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> DhtConfig:
        d = cls()
        seeds = env_str("FLEETSUIT_DHT_SEEDS", "", env)
        return cls(
            node_id=env_str("FLEETSUIT_DHT_NODE_ID", d.node_id, env),
            listen=env_str("FLEETSUIT_DHT_LISTEN", d.listen, env),
            metrics_host=env_str("FLEETSUIT_DHT_METRICS_HOST", d.metrics_host, env),
            metrics_port=env_int("FLEETSUIT_DHT_METRICS_PORT", d.metrics_port, env),
            data_dir=env_str("FLEETSUIT_DHT_DATA", d.data_dir, env),
            seeds=parse_seeds(seeds),
            k=env_int("FLEETSUIT_DHT_K", d.k, env),
            bucket_size=env_int("FLEETSUIT_DHT_BUCKET_SIZE", d.bucket_size, env),
            alpha=env_int("FLEETSUIT_DHT_ALPHA", d.alpha, env),
            chunk_bytes=env_int("FLEETSUIT_DHT_CHUNK_BYTES", d.chunk_bytes, env),
            max_disk_bytes=env_int("FLEETSUIT_DHT_MAX_DISK_BYTES", d.max_disk_bytes, env),
            max_blob_bytes=env_int("FLEETSUIT_DHT_MAX_BLOB_BYTES", d.max_blob_bytes, env),
            repair_interval_ms=env_int(
                "FLEETSUIT_DHT_REPAIR_INTERVAL_MS", d.repair_interval_ms, env
            ),
            rpc_timeout_ms=env_int("FLEETSUIT_DHT_RPC_TIMEOUT_MS", d.rpc_timeout_ms, env),
            fetch_timeout_ms=env_int("FLEETSUIT_DHT_FETCH_TIMEOUT_MS", d.fetch_timeout_ms, env),
            fetch_parallelism=env_int("FLEETSUIT_DHT_FETCH_PARALLELISM", d.fetch_parallelism, env),
            max_uploads=env_int("FLEETSUIT_DHT_MAX_UPLOADS", d.max_uploads, env),
            provider_ttl_ms=env_int("FLEETSUIT_DHT_PROVIDER_TTL_MS", d.provider_ttl_ms, env),
            scrub_interval_ms=env_int("FLEETSUIT_DHT_SCRUB_INTERVAL_MS", d.scrub_interval_ms, env),
            scrub_bytes_per_s=env_int("FLEETSUIT_DHT_SCRUB_BYTES_PER_S", d.scrub_bytes_per_s, env),
            upload_bytes_per_s=env_int(
                "FLEETSUIT_DHT_UPLOAD_BYTES_PER_S", d.upload_bytes_per_s, env
            ),
            upload_burst_bytes=env_int(
                "FLEETSUIT_DHT_UPLOAD_BURST_BYTES", d.upload_burst_bytes, env
            ),
            grace_ms=env_int("FLEETSUIT_DHT_GRACE_MS", d.grace_ms, env),
        )

    def replace(self, **changes: object) -> DhtConfig:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    def validate(self) -> DhtConfig:
        """Returns self; raises ConfigError naming the first bad field."""
        if not self.node_id or len(self.node_id) > 128:
            raise ConfigError("node_id must be 1..128 characters")
        for name, value in [("listen", self.listen), *[("seeds", s) for s in self.seeds]]:
            split_host_port(value, name)
        positive = {
            "k": self.k,
            "bucket_size": self.bucket_size,
            "alpha": self.alpha,
            "chunk_bytes": self.chunk_bytes,
            "max_disk_bytes": self.max_disk_bytes,
            "max_blob_bytes": self.max_blob_bytes,
            "repair_interval_ms": self.repair_interval_ms,
            "rpc_timeout_ms": self.rpc_timeout_ms,
            "fetch_timeout_ms": self.fetch_timeout_ms,
            "fetch_parallelism": self.fetch_parallelism,
            "max_uploads": self.max_uploads,
            "provider_ttl_ms": self.provider_ttl_ms,
            "scrub_interval_ms": self.scrub_interval_ms,
            "scrub_bytes_per_s": self.scrub_bytes_per_s,
            "upload_burst_bytes": self.upload_burst_bytes,
        }
        for field_name, number in positive.items():
            if number <= 0:
                raise ConfigError(f"{field_name} must be positive, got {number}")
        if self.upload_bytes_per_s < 0:
            raise ConfigError(
                f"upload_bytes_per_s must be 0 (unlimited) or positive, got {self.upload_bytes_per_s}"
            )
        if self.upload_bytes_per_s and (
            self.max_uploads * self.chunk_bytes * 1000
            >= self.upload_bytes_per_s * self.fetch_timeout_ms
        ):
            # A peer's chunk request waits behind the other uploads in flight;
            # it must not time out there (node.handle_fetch_chunk).
            raise ConfigError(
                "upload_bytes_per_s too low: max_uploads chunks must go out within fetch_timeout_ms"
            )
        if self.chunk_bytes > 4 * MIB:
            raise ConfigError("chunk_bytes must be at most 4 MiB (gRPC message limit)")
        if self.provider_ttl_ms <= self.repair_interval_ms:
            # The repair loop re-announces every blob each pass (node.repair_once).
            raise ConfigError("provider_ttl_ms must exceed repair_interval_ms")
        if self.k > self.bucket_size:
            raise ConfigError("k must not exceed bucket_size")
        if not -1 <= self.metrics_port <= 65535:
            raise ConfigError(f"metrics_port out of range: {self.metrics_port}")
        if self.grace_ms < 0:
            raise ConfigError("grace_ms must not be negative")
        return self


def parse_seeds(text: str) -> tuple[str, ...]:
    return tuple(s.strip() for s in text.split(",") if s.strip())


def split_host_port(value: str, field: str = "address") -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host:
        raise ConfigError(f"{field}: {value!r} is not HOST:PORT")
    try:
        number = int(port)
    except ValueError:
        raise ConfigError(f"{field}: port of {value!r} is not a number") from None
    if not 0 <= number <= 65535:
        raise ConfigError(f"{field}: port of {value!r} out of range")
    return host, number
