"""The manifest service: a thin gRPC server (Validate, Inspect) over the SUIT
library in ``suit/``, and the ``fleetsuit manifest`` commands."""
