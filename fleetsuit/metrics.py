"""The Prometheus ``/metrics`` endpoint of a process.

Each service builds its metrics on its own ``CollectorRegistry`` (constructor
injection: no global registry) made by :func:`new_registry`, which adds what
every process exports: the standard ``process_*`` and ``python_*`` metrics
and ``fleetsuit_build_info``.
"""

from __future__ import annotations

import platform

from prometheus_client import (
    CollectorRegistry,
    Gauge,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)

from fleetsuit import __version__


def new_registry(service: str, node_id: str = "") -> CollectorRegistry:
    """A registry with the process, platform and GC collectors and
    ``fleetsuit_build_info{version, service, node, python}`` = 1."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    info = Gauge(
        "fleetsuit_build_info", "The build that runs: always 1, with the version in labels.",
        ["version", "service", "node", "python"], registry=registry,
    )
    info.labels(__version__, service, node_id, platform.python_version()).set(1)
    return registry


def serve_metrics(registry: CollectorRegistry, host: str, port: int) -> int:
    """Serve ``registry`` on ``host:port`` (port 0 picks one); returns the port."""
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return int(server.server_address[1])
