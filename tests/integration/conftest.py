"""What the integration tests share beyond tests/conftest.py."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pitlink_testkit.processes import Processes


@pytest.fixture
def procs() -> Iterator[Processes]:
    """Programs as processes of their own, all stopped when the test ends."""
    running = Processes()
    yield running
    running.stop()
