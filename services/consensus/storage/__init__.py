"""A node's durable state: the ordered key-value store (``kv.py``), the key
layout (``layout.py``, owned here alone), the log and ledger store on top
(``node_storage.py``), and snapshot files (``snapshot_format.py``: the
bytes; ``snapshot_files.py``: the directory of them)."""

from .layout import log_key, request_key
from .node_storage import NodeStorage, RocksStorage, StateView
from .snapshot_files import FileSnapshotStore

__all__ = ["FileSnapshotStore", "NodeStorage", "RocksStorage", "StateView", "log_key", "request_key"]
