"""A real redis-server (Debian's) on a loopback port, for the replica tests and the benches."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

from pitlink_testkit.loopback import free_port
from pitlink_testkit.waiting import poll

Launch = Callable[[Sequence[str]], "subprocess.Popen[bytes]"]


class RedisServer:
    """redis-server on a loopback port of its own, without persistence.

    It can be stopped and started again on the same port (a Redis outage and its end). By
    default memory is bounded (`maxmemory`, least recently used keys evicted), as a deployment
    should bound it; None leaves it unbounded.
    """

    def __init__(self, workdir: Path, *, maxmemory: str | None = "64mb") -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise FileNotFoundError(
                "redis-server is not installed: ./scripts/test and the benches install Debian's"
            )
        self.binary = binary
        self.workdir = workdir
        self.port = free_port()
        self.maxmemory = maxmemory
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        """Its command line: loopback only, nothing saved to disk, memory bounded if asked."""
        command = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1"]
        command += ["--save", "", "--appendonly", "no", "--dir", str(self.workdir)]
        if self.maxmemory:
            command += ["--maxmemory", self.maxmemory, "--maxmemory-policy", "allkeys-lru"]
        return command

    def start(self, launch: Launch | None = None, *, timeout: float = 10.0) -> None:
        """Start it and wait until it answers PING.

        `launch` starts the process from its command line; a bench passes its own, which keeps
        the output and stops the process with everything else it started.
        """
        self.workdir.mkdir(parents=True, exist_ok=True)
        if launch is None:
            proc = subprocess.Popen(
                self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
        else:
            proc = launch(self.command())
        self.proc = proc

        def up() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {proc.returncode}")
            return self.answers()

        poll(up, timeout=timeout, what=f"redis-server to answer on port {self.port}")

    def answers(self) -> bool:
        """Whether something on its port answers PING as Redis does."""
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s,
        ):
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
        return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.proc = None
