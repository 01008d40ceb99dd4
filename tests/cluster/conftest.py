"""Real redis-servers from Debian, started and stopped by the tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pitlink_testkit.redis_server import RedisServer


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_factory(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    """Start redis-servers with settings of the test's choosing; all stopped at the end."""
    started: list[RedisServer] = []

    def make(**settings: Any) -> RedisServer:
        server = RedisServer(tmp_path / f"redis-{len(started)}", **settings)
        server.start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()
