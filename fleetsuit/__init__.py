"""fleetsuit's common package: config helpers, logging, metrics endpoint,
gRPC server plumbing, graceful shutdown, the CLI entry point and the
generated protobuf stubs (``fleetsuit.v1``, produced by ``make protos``).

It owns nothing of any one service; services import only this package and
each other's proto APIs.
"""

__version__ = "0.1.0"
