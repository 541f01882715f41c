"""The in-process dht cluster fixture, shared by the service, fetching and
command-line tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio

from tests.dht.test_service import Cluster


@pytest_asyncio.fixture
async def cluster() -> AsyncIterator[Cluster]:
    c = Cluster()
    try:
        yield c
    finally:
        await c.close()
