"""Above the services: the ``fleetsuit`` command's entry point (which
registers each service's sub-commands), the local cluster launcher and the
demo. The common package ``fleetsuit`` never imports from here or from any
service; this package may import both."""

import os

# gRPC's C core logs connection events (a GOAWAY, a reconnect) to stderr at
# INFO; a command's stderr is for its own one-line errors. Set before any
# module of this package imports grpc; the caller's own setting wins.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
