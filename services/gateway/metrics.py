"""The gateway's Prometheus metrics (``fleetsuit_gateway_...``), on a
registry the caller owns. The gauges of devices by version and by rollout
state are kept by the session hub (``sessions.SessionHub``) as sessions
come, change and go; the rest are counted where things happen."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.sessions = Gauge(
            "fleetsuit_gateway_sessions", "Device sessions open on this gateway", registry=registry
        )
        self.registrations = Counter(
            "fleetsuit_gateway_registrations",
            "Registrations by result (accepted, or the refusal's code)",
            ["result"],
            registry=registry,
        )
        self.failovers = Counter(
            "fleetsuit_gateway_failovers",
            "Registrations of devices that came from another gateway (previous_gateway_id)",
            registry=registry,
        )
        self.missed_heartbeats = Counter(
            "fleetsuit_gateway_missed_heartbeats",
            "Sessions closed because the device stayed silent too long",
            registry=registry,
        )
        self.redirects = Counter(
            "fleetsuit_gateway_redirects",
            "Devices told to go to another gateway (their primary, or away from a draining one)",
            registry=registry,
        )
        self.devices_by_version = Gauge(
            "fleetsuit_gateway_devices_by_version",
            "Devices in session by installed release of a component",
            ["component", "release"],
            registry=registry,
        )
        self.devices_by_rollout_state = Gauge(
            "fleetsuit_gateway_devices_by_rollout_state",
            "Devices in session by rollout state (current, offered, switching_back)",
            ["state"],
            registry=registry,
        )
        self.reports = Counter(
            "fleetsuit_gateway_reports",
            "Device reports by result (committed, duplicate, refused, retry)",
            ["result"],
            registry=registry,
        )
        self.report_commit_seconds = Histogram(
            "fleetsuit_gateway_report_commit_seconds",
            "Time from a device report's arrival to its commit in the ledger",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=registry,
        )
        self.heartbeat_seconds = Histogram(
            "fleetsuit_gateway_heartbeat_handling_seconds",
            "Time to handle one heartbeat (answer and re-decide)",
            buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05),
            registry=registry,
        )
        self.offers = Counter(
            "fleetsuit_gateway_offers",
            "Commands sent to devices by kind (offer, switch_back, hold)",
            ["kind"],
            registry=registry,
        )
        self.ledger_height = Gauge(
            "fleetsuit_gateway_ledger_height",
            "The ledger block this gateway followed up to",
            registry=registry,
        )
        self.ledger_reconnects = Counter(
            "fleetsuit_gateway_ledger_reconnects",
            "Times following the ledger failed (no answer, a broken watch) and was tried again",
            registry=registry,
        )
        self.ledger_cut_off = Gauge(
            "fleetsuit_gateway_ledger_cut_off",
            "1 while this gateway, cut off from its node's ledger too long, sends its devices elsewhere",
            registry=registry,
        )
        self.live_gateways = Gauge(
            "fleetsuit_gateway_live_gateways",
            "Gateways of the cluster this one sees live (itself included)",
            registry=registry,
        )
