"""One logging set-up for every process (STYLE, operability): one line per
record on stderr, as plain text or as JSON lines (``--log-format json``),
each with time, level, service and node; a start line that says what runs
where; and a rate limit for lines that a misbehaving peer or client could
otherwise repeat thousands of times a second."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Hashable, Mapping

LOG_FORMATS = ("text", "json")


class _JsonFormatter(logging.Formatter):
    def __init__(self, service: str, node_id: str) -> None:
        super().__init__()
        self._service = service
        self._node = node_id

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "service": self._service,
            "node": self._node,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, separators=(",", ":"))


def setup_logging(
    service: str, node_id: str, level: str = "INFO", log_format: str = "text"
) -> logging.Logger:
    """Route every logger of the process to stderr in ``log_format``."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format {log_format!r} is not one of {', '.join(LOG_FORMATS)}")
    handler = logging.StreamHandler(sys.stderr)
    formatter: logging.Formatter
    if log_format == "json":
        formatter = _JsonFormatter(service, node_id)
    else:
        formatter = logging.Formatter(
            f"%(asctime)s.%(msecs)03dZ %(levelname)s {service}[{node_id}] %(name)s: %(message)s",
            "%Y-%m-%dT%H:%M:%S",
        )
    formatter.converter = time.gmtime
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    return logging.getLogger(f"fleetsuit.{service}")


def log_start(
    logger: logging.Logger,
    *,
    service: str,
    version: str,
    cluster_id: str,
    node_id: str,
    data_dir: str,
    addresses: Mapping[str, str],
) -> None:
    """The first line of every service: what runs, in which cluster, where."""
    where = " ".join(f"{name}={address}" for name, address in addresses.items())
    logger.info(
        "starting %s version=%s cluster=%s node=%s data=%s %s",
        service, version, cluster_id or "-", node_id, data_dir or "-", where,
    )


class RateLimitedLog:
    """At most one line per key every ``interval_s``; the lines held back are
    counted and the count is added to the next line of that key."""

    def __init__(self, logger: logging.Logger, interval_s: float = 10.0, max_keys: int = 1024) -> None:
        self._logger = logger
        self._interval_s = interval_s
        self._max_keys = max_keys
        self._last: dict[Hashable, tuple[float, int]] = {}

    def log(self, key: Hashable, level: int, msg: str, *args: object) -> bool:
        """Log unless a line of ``key`` went out less than ``interval_s``
        ago; True if it was logged."""
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last[0] < self._interval_s:
            self._last[key] = (last[0], last[1] + 1)
            return False
        if len(self._last) >= self._max_keys:
            self._last.clear()
        suppressed = last[1] if last is not None else 0
        if suppressed:
            msg = f"{msg} (and {suppressed} more like it)"
        self._logger.log(level, msg, *args)
        self._last[key] = (now, 0)
        return True
