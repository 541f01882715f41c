"""The consensus runtime: the loop that owns the Raft core (``node.py``)
and what it delegates to, each behind a small interface: submissions,
compaction and snapshots, certification, reads; its configuration
(``config.py``) and its ports (``ports.py``)."""

from .config import RuntimeConfig
from .node import ConsensusNode
from .submissions import Waiter

__all__ = ["ConsensusNode", "RuntimeConfig", "Waiter"]
