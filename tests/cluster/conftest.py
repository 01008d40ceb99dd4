"""A real redis-server from Debian, started and stopped by the tests, and relays sharing it."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pitlink_testkit.loopback import free_port


class RedisServer:
    """redis-server on a loopback port of its own, without persistence; can stop and come back."""

    def __init__(self, workdir: Path, *, maxmemory: str | None = "64mb"):
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail(
                "redis-server is not installed: ./scripts/test installs Debian's redis-server"
            )
        self.binary = binary
        self.workdir = workdir
        self.port = free_port()
        self.maxmemory = maxmemory
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
                *(
                    ["--maxmemory", self.maxmemory, "--maxmemory-policy", "allkeys-lru"]
                    if self.maxmemory
                    else []
                ),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.proc = None


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
        server.workdir.mkdir()
        server.start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()
