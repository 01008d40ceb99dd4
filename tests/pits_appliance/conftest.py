"""Fixtures shared by the box's update tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from pitlink_testkit.bundles import BundleServer, Served


@pytest.fixture
async def served() -> AsyncIterator[tuple[Served, BundleServer]]:
    """A real bundle endpoint on loopback (`GET /pits-api/bundles/<id>`, token `tok-1`) and what
    it serves."""
    s = Served(token="tok-1")
    server = BundleServer(s)
    yield s, server
    await server.close()
