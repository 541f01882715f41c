"""Fixtures shared by the multi-process tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cluster import LocalCluster, local_cluster


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    """Three nodes on loopback, every process stopped by pid afterwards.
    (Tests that need other settings define their own ``cluster``.)"""
    with local_cluster(3, tmp_path) as c:
        yield c
