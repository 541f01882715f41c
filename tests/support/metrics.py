"""Asking a service's Prometheus endpoint from a test."""

from __future__ import annotations

import urllib.error
import urllib.request


def serves_metrics(url: str, timeout_s: float = 5.0) -> bool:
    """True when ``url`` answers 200 with a fleetsuit registry
    (``fleetsuit_build_info``); False when it refuses or fails."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return resp.status == 200 and b"fleetsuit_build_info" in resp.read()
    except (urllib.error.URLError, OSError):
        return False
