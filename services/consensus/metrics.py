"""Prometheus metrics of the consensus service, named in etcd's style with a
``fleetsuit_`` prefix (etcd_server_*, etcd_disk_*, etcd_network_*).

A labelled counter whose label values are a closed set starts with every
value at 0, so that a dashboard or an alert on it has a series before the
first event (Prometheus' instrumentation practice, "avoid missing metrics")."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

# The reasons runtime/submissions.py counts a failed submission under.
PROPOSAL_FAILURE_REASONS = ("overloaded", "outcome_unknown", "no_leader")


class TableGauge(Collector):
    """A gauge whose series are read from a table when scraped: the reader
    bound with :meth:`bind` returns {label values: value}. Until one is
    bound it has no series."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str], registry: CollectorRegistry) -> None:
        self._name = name
        self._documentation = documentation
        self._labelnames = list(labelnames)
        self._read: Callable[[], Mapping[tuple[str, ...], float]] | None = None
        registry.register(self)

    def bind(self, read: Callable[[], Mapping[tuple[str, ...], float]]) -> None:
        self._read = read

    def describe(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(self._name, self._documentation, labels=self._labelnames)

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(self._name, self._documentation, labels=self._labelnames)
        if self._read is not None:
            for labels, value in self._read().items():
                family.add_metric(list(labels), value)
        yield family

_LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
)


class ConsensusMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.term = Gauge("fleetsuit_server_term", "Current Raft term.", registry=r)
        self.commit_index = Gauge("fleetsuit_server_commit_index", "Raft commit index.", registry=r)
        self.applied_index = Gauge("fleetsuit_server_applied_index", "Last applied log index.", registry=r)
        self.block_height = Gauge("fleetsuit_ledger_block_height", "Height of the ledger head.", registry=r)
        self.has_leader = Gauge("fleetsuit_server_has_leader", "1 if a leader is known.", registry=r)
        self.is_leader = Gauge("fleetsuit_server_is_leader", "1 if this node is the leader.", registry=r)
        self.leader_changes = Counter(
            "fleetsuit_server_leader_changes_seen", "Leader changes seen.", registry=r
        )
        self.proposals_committed = Counter(
            "fleetsuit_server_proposals_committed", "Ledger entries committed.", registry=r
        )
        self.proposals_applied = Counter(
            "fleetsuit_server_proposals_applied", "Ledger entries applied.", registry=r
        )
        self.proposals_pending = Gauge(
            "fleetsuit_server_proposals_pending", "Submissions waiting for commit.", registry=r
        )
        self.proposals_failed = Counter(
            "fleetsuit_server_proposals_failed", "Submissions that failed or timed out.", ["reason"],
            registry=r,
        )
        for reason in PROPOSAL_FAILURE_REASONS:
            self.proposals_failed.labels(reason)
        self.append_duration = Histogram(
            "fleetsuit_disk_wal_append_duration_seconds", "Time to persist one Ready (append + sync).",
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.fsync_duration = Histogram(
            "fleetsuit_disk_wal_fsync_duration_seconds", "Time of the synced write of one batch.",
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.peer_rtt = Histogram(
            "fleetsuit_network_peer_round_trip_time_seconds", "Round-trip time to a peer.", ["to"],
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.certified_height = Gauge(
            "fleetsuit_ledger_certified_height",
            "Every block up to this height has signatures of a majority.", registry=r,
        )
        self.certificate_lag = Gauge(
            "fleetsuit_ledger_certificate_lag_blocks", "Applied blocks not yet certified.", registry=r
        )
        self.certificate_conflicts = Counter(
            "fleetsuit_ledger_certificate_conflicts",
            "Peer signatures that did not verify or signed a different block.", registry=r,
        )
        self.snapshots = Counter(
            "fleetsuit_snapshot", "Snapshots saved, sent, received and installed.", ["kind"], registry=r
        )
        self.snapshot_failures = Counter(
            "fleetsuit_snapshot_failures", "Snapshots that failed to save, send or install.", ["kind"],
            registry=r,
        )
        self.snapshot_bytes = Gauge(
            "fleetsuit_snapshot_size_bytes", "Size of the latest snapshot saved or installed.", registry=r
        )
        self.snapshot_duration = Histogram(
            "fleetsuit_snapshot_duration_seconds", "Time to save, send or install one snapshot.", ["kind"],
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0), registry=r,
        )
        self.snapshot_index = Gauge(
            "fleetsuit_snapshot_index", "The log starts after this index (latest compaction).", registry=r
        )
        self.voters = Gauge("fleetsuit_server_voters", "Voting members in the configuration.", registry=r)
        self.learners = Gauge("fleetsuit_server_learners", "Learners (non-voting members).", registry=r)
        self.promotions = Counter(
            "fleetsuit_server_learner_promotions", "Learners promoted to voters (applied).", registry=r
        )
        self.membership_changes = Counter(
            "fleetsuit_server_membership_changes", "Membership changes applied.", ["kind"], registry=r
        )
        self.peer_sent_failures = Counter(
            "fleetsuit_network_peer_sent_failures", "Failed stream sends to a peer.", ["to"], registry=r
        )
        self.peer_messages_sent = Counter(
            "fleetsuit_network_peer_messages_sent", "Raft messages sent to a peer.", ["to"], registry=r
        )
        self.peer_batches_sent = Counter(
            "fleetsuit_network_peer_batches_sent",
            "Stream writes to a peer (each carries one or more Raft messages).", ["to"], registry=r,
        )
        self.releases = Gauge(
            "fleetsuit_releases", "Releases in the ledger by state (read at scrape).", ["state"], registry=r
        )
        self.devices = Gauge(
            "fleetsuit_devices", "Devices in the ledger by enrolment state (read at scrape).", ["state"], registry=r
        )
        self.devices_by_version = TableGauge(
            "fleetsuit_devices_by_version",
            "Accepted devices in the ledger by installed version, <component>@<release id or factory> "
            "(read at scrape).", ["version"], registry=r,
        )
        self.release_outcomes = TableGauge(
            "fleetsuit_release_outcomes",
            "Devices whose last outcome for a release is installed or failed, as the ledger counts them "
            "(read at scrape).", ["release", "outcome"], registry=r,
        )
        self.release_refusals = Gauge(
            "fleetsuit_release_refusals",
            "Release entries recorded in the ledger as refused on apply, by code (read at scrape).",
            ["code"], registry=r,
        )
        self.release_pushes = Counter(
            "fleetsuit_release_pushes",
            "Release submissions answered by this node, by outcome (published, duplicate, or the error code).",
            ["outcome"], registry=r,
        )
        self.release_checks = Counter(
            "fleetsuit_release_checks",
            "Release entries checked before this node proposed them, by outcome (passed, skipped, "
            "or the refusal's code).", ["outcome"], registry=r,
        )
