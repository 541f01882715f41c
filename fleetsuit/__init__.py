"""fleetsuit's common package: typed settings (``settings``), the error
root (``errors``), the server shape and its interceptor (``rpc``), channel
options (``grpcutil``), logging (``logs``), the metrics registry
(``metrics``), what every command shares (``cli``), the ledger client
library (``ledger_client``) and the generated protobuf stubs
(``fleetsuit.v1``, produced by ``make protos``).

It owns nothing of any one service and imports none; services import only
this package and each other's proto APIs. The ``fleetsuit`` command's entry
point lives above the services, in ``launcher/``.
"""

__version__ = "0.1.0"
