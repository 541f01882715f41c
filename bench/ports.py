"""Kept for the benchmark modules: the helper lives in ``fleetsuit.ports``."""

from fleetsuit.ports import free_base_port

__all__ = ["free_base_port"]
