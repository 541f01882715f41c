"""The dht's Prometheus metrics, on a registry the caller owns. The repair
counter starts with both of its kinds at 0, so that a dashboard or an alert
on it has a series before the first repair."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# What node.py counts a repair action as: a replica requested by the repair
# loop, a chunk re-fetched after it failed verification.
REPAIR_KINDS = ("replica", "chunk")


class DhtMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.blobs_stored = Gauge(
            "fleetsuit_dht_blobs_stored", "Blobs with a root on this node", registry=registry
        )
        self.bytes_stored = Gauge(
            "fleetsuit_dht_bytes_stored", "Logical bytes held by the blob store", registry=registry
        )
        self.replicas_missing = Gauge(
            "fleetsuit_dht_replicas_missing",
            "Replicas found missing among the k closest live nodes in the last repair pass",
            registry=registry,
        )
        self.bytes_in = Counter(
            "fleetsuit_dht_bytes_in",
            "Payload bytes received (clients and peers)",
            registry=registry,
        )
        self.bytes_out = Counter(
            "fleetsuit_dht_bytes_out", "Payload bytes sent (clients and peers)", registry=registry
        )
        self.upload_wait_seconds = Counter(
            "fleetsuit_dht_upload_wait_seconds",
            "Seconds uploads waited for the upload rate limit (upload_bytes_per_s)",
            registry=registry,
        )
        self.lookup_hops = Histogram(
            "fleetsuit_dht_lookup_hops",
            "Hops to the closest node found by an iterative lookup",
            buckets=(1, 2, 3, 4, 5, 6, 8, 10, 15, 20),
            registry=registry,
        )
        self.lookup_seconds = Histogram(
            "fleetsuit_dht_lookup_seconds", "Latency of iterative lookups", registry=registry
        )
        self.repair_actions = Counter(
            "fleetsuit_dht_repair_actions",
            "Replicas requested by the repair loop and chunks re-fetched",
            ["kind"],
            registry=registry,
        )
        for kind in REPAIR_KINDS:
            self.repair_actions.labels(kind)
        self.corrupt_chunks = Counter(
            "fleetsuit_dht_corrupt_chunks",
            "Chunks that failed verification",
            ["where"],
            registry=registry,
        )
        self.evictions = Counter(
            "fleetsuit_dht_evictions",
            "Unpinned blobs evicted under disk pressure",
            registry=registry,
        )
        self.chunk_requests = Counter(
            "fleetsuit_dht_chunk_requests",
            "Chunk requests this node sent to peers while fetching, by outcome "
            "(ok, busy: the peer's upload slots were full, missing: a partial "
            "holder lacked it, failed: unreachable or bad data)",
            ["outcome"],
            registry=registry,
        )
        self.scrub_chunks = Counter(
            "fleetsuit_dht_scrub_chunks",
            "Stored chunks re-verified by the background scrub, by result",
            ["result"],
            registry=registry,
        )
