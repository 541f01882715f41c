"""The root of every service's error tree.

Each service declares one base exception (``ConsensusError``, ``DhtError``,
``suit.errors.SuitError``, ...) that derives from :class:`ServiceError`, with one
subclass per thing that can go wrong, each carrying a stable,
machine-readable ``code`` (``NOT_LEADER``, ``DHT_NOT_FOUND``, ...). The codes
are part of the API: clients and scripts branch on them, so they never
change once published.

The mapping from an error to a gRPC status is a table at the service's
protobuf edge (its ``convert.py``), applied by one interceptor
(``fleetsuit.rpc.ServiceInterceptor``); this module imports no gRPC, so the
sans-I/O cores can raise these errors.
"""

from __future__ import annotations


class ServiceError(Exception):
    """An error a service reports to its caller: a stable ``code`` and a
    message a person can act on."""

    code: str = "INTERNAL"

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        """Pairs sent with the error besides its code (a retry-after hint)."""
        return ()
