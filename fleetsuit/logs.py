"""One logging set-up for every process: one line per record, to stderr."""

from __future__ import annotations

import logging
import sys


def setup_logging(service: str, node_id: str, level: str = "INFO") -> logging.Logger:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter(
            f"%(asctime)s %(levelname)s {service}[{node_id}] %(name)s: %(message)s"
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    return logging.getLogger(f"fleetsuit.{service}")
