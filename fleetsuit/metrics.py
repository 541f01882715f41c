"""The Prometheus ``/metrics`` endpoint of a process.

Each service builds its metrics on its own ``CollectorRegistry`` (constructor
injection: no global registry), and serves it here.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, start_http_server


def serve_metrics(registry: CollectorRegistry, host: str, port: int) -> int:
    """Serve ``registry`` on ``host:port`` (port 0 picks one); returns the port."""
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return int(server.server_address[1])
