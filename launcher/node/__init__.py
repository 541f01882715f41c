"""One logical node: the four services of a fleetsuit node (consensus, dht,
manifest, gateway) configured from one TOML file (``config.py``) and run as
separate processes under one supervisor (``supervisor.py``), started by
``fleetsuit node`` (``cli.py``) and, once per node, by ``fleetsuit cluster
up``."""
