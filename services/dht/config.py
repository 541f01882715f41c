"""The dht service's configuration: one frozen dataclass, declared once.

Every field is a ``fleetsuit.settings.setting``: its flag (``--field-name``),
its environment variable (``FLEETSUIT_DHT_FIELD_NAME``), its default and its
help come from that one declaration. A value is taken from the flag, else
the environment, else the default; an unknown ``FLEETSUIT_DHT_`` variable, a
value that does not parse and a failed ``validate()`` are ``ConfigError``s
naming the setting. Derived values are properties.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from fleetsuit import settings
from fleetsuit.logs import LOG_FORMATS
from fleetsuit.settings import ConfigError, setting

MIB = 1024 * 1024
ENV_PREFIX = "FLEETSUIT_DHT_"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


@dataclass(frozen=True, slots=True)
class DhtConfig:
    node_id: str = setting("node-1", "this node's name; its routing id is the SHA-256 of it")
    cluster_id: str = setting(
        "", "the cluster this node belongs to, for the start line", env="FLEETSUIT_CLUSTER_ID"
    )
    listen: str = setting(
        "127.0.0.1:7102", "address of the Dht and DhtPeer services (port 0 picks a free one)",
        metavar="HOST:PORT",
    )  # fmt: skip
    # The contact this node hands to its peers (Ping, FindNode, provider
    # records): in a container ``listen`` is 0.0.0.0, which no peer can dial.
    advertise: str = setting(
        "", "HOST:PORT other nodes dial to reach this node (default: the listen address; required "
        "when listen is a wildcard address such as 0.0.0.0 and seeds are set)", metavar="HOST:PORT",
    )  # fmt: skip
    metrics_host: str = setting(
        "127.0.0.1", "address /metrics listens on (0.0.0.0: every interface)", metavar="HOST"
    )
    metrics_port: int = setting(
        7107, "port of /metrics (0 picks a free one, -1 disables it)", metavar="PORT"
    )
    data_dir: str = setting(
        "data/dht", "directory of the blob store", flag="--data", env="FLEETSUIT_DHT_DATA",
        metavar="DIR",
    )  # fmt: skip
    seeds: tuple[str, ...] = setting(
        (), "other nodes' dht services to join through", metavar="HOST:PORT,..."
    )
    k: int = setting(3, "replicas per blob", metavar="N")
    bucket_size: int = setting(
        20, "Kademlia's k: contacts per bucket and per lookup result", metavar="N"
    )
    alpha: int = setting(3, "lookup parallelism (requests in flight)", metavar="N")
    chunk_bytes: int = setting(1 * MIB, "chunk size of new blobs (at most 4 MiB)", metavar="BYTES")
    max_disk_bytes: int = setting(
        10 * 1024 * MIB, "disk-use limit of stored chunks and roots", metavar="BYTES"
    )
    max_blob_bytes: int = setting(
        4 * 1024 * MIB, "largest blob accepted or fetched", metavar="BYTES"
    )
    repair_interval_ms: int = setting(5_000, "pause between repair passes", metavar="MS")
    rpc_timeout_ms: int = setting(2_000, "deadline of a routing call to a peer", metavar="MS")
    fetch_timeout_ms: int = setting(30_000, "deadline of a chunk fetched from a peer", metavar="MS")
    fetch_parallelism: int = setting(8, "chunks in flight per blob fetch", metavar="N")
    max_uploads: int = setting(4, "chunks served to peers at once; more are told Busy", metavar="N")
    provider_ttl_ms: int = setting(
        30_000, "provider records expire unless announced again", metavar="MS"
    )
    scrub_interval_ms: int = setting(600_000, "pause between scrub passes", metavar="MS")
    scrub_bytes_per_s: int = setting(
        32 * MIB, "read rate of the background scrub", metavar="BYTES_PER_S"
    )
    # The upload cap (chunks served to peers and Get streams), so spreading a
    # release does not saturate an edge link (ratelimit.py).
    upload_bytes_per_s: int = setting(
        0, "cap on bytes uploaded to peers and clients (0: unlimited)", metavar="BYTES_PER_S"
    )
    upload_burst_bytes: int = setting(
        1 * MIB, "upload credit an idle node may spend at once", metavar="BYTES"
    )
    grace_ms: int = setting(2_000, "time calls in flight get to finish at shutdown", metavar="MS")
    log_level: str = setting("INFO", "lowest level logged", metavar="|".join(LOG_LEVELS))
    log_format: str = setting("text", "log lines as text or as JSON", metavar="|".join(LOG_FORMATS))

    @classmethod
    def from_args(
        cls, argv: Sequence[str] | None, env: Mapping[str, str] | None = None
    ) -> DhtConfig:
        """Flags, then the environment (``os.environ`` when ``env`` is None),
        then defaults; validated. ``--help`` lists every default and variable."""
        return settings.parse_config(
            cls, argv, env, prog="python -m services.dht", env_prefix=ENV_PREFIX,
            description="A fleetsuit dht node: content-addressed payload storage.",
        )  # fmt: skip

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> DhtConfig:
        """The environment, then defaults; validated."""
        return settings.from_sources(cls, None, env, ENV_PREFIX)

    def replace(self, **changes: object) -> DhtConfig:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    @property
    def store_path(self) -> str:
        """The RocksDB directory of the blob store."""
        return os.path.join(self.data_dir, "blobs")

    def contact_address(self, bound_port: int) -> str:
        """The address peers are told to dial: ``advertise``, else the listen
        host with the port bound (``listen`` may ask for port 0)."""
        if self.advertise:
            return self.advertise
        host, _port = split_host_port(self.listen, "listen")
        return f"{host}:{bound_port}"

    @property
    def metrics_address(self) -> str:
        return f"{self.metrics_host}:{self.metrics_port}" if self.metrics_port >= 0 else "off"

    def validate(self) -> DhtConfig:
        """Returns self; raises ConfigError naming the first bad field."""
        if not self.node_id or len(self.node_id) > 128:
            raise ConfigError("node_id must be 1..128 characters")
        if not self.data_dir:
            raise ConfigError("data_dir must name a directory")
        for name, value in [("listen", self.listen), *[("seeds", s) for s in self.seeds]]:
            split_host_port(value, name)
        self._validate_advertise()
        check_host(self.metrics_host, "metrics_host")
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
        if self.log_level.upper() not in LOG_LEVELS:
            raise ConfigError(f"log_level must be one of {', '.join(LOG_LEVELS)}")
        if self.log_format not in LOG_FORMATS:
            raise ConfigError(f"log_format must be one of {', '.join(LOG_FORMATS)}")
        return self

    def _validate_advertise(self) -> None:
        if self.advertise:
            host, port = split_host_port(self.advertise, "advertise")
            if is_wildcard(host):
                raise ConfigError(
                    f"advertise: {self.advertise!r} is a wildcard address, which peers cannot dial; "
                    "give this node's own name or address"
                )
            if port == 0:
                raise ConfigError(f"advertise: {self.advertise!r} has port 0, which peers cannot dial")
            return
        listen_host, _port = split_host_port(self.listen, "listen")
        if self.seeds and is_wildcard(listen_host):
            # Peers would be told to dial 0.0.0.0, i.e. themselves.
            raise ConfigError(
                f"advertise: required when listen ({self.listen}) is a wildcard address and seeds "
                "are set; give the HOST:PORT other nodes reach this one at"
            )


_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DNS_NAME = re.compile(rf"(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*\.?")


def is_wildcard(host: str) -> bool:
    """True for an unspecified address (0.0.0.0, ::, [::]): one a server
    binds to listen on every interface, never one a client can dial."""
    literal = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        return ipaddress.ip_address(literal).is_unspecified
    except ValueError:
        return False


def check_host(value: str, field: str) -> str:
    """``value`` when it is a bare host a server can bind (an IP address,
    0.0.0.0 or :: for every interface, or a DNS name); ConfigError naming
    ``field`` otherwise (a HOST:PORT, say)."""
    try:
        ipaddress.ip_address(value)
        return value
    except ValueError:
        pass
    if _DNS_NAME.fullmatch(value) is None:
        hint = " (a host only, without a port)" if ":" in value else ""
        raise ConfigError(f"{field}: {value!r} is not an IP address or a host name{hint}")
    return value


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
