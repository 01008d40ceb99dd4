"""Programs a test runs as processes of their own (the relay, the agent, the simulator), each
writing its log to a file, and every one stopped when the test ends."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


class Processes:
    """The processes one test started: `start` one, `stop` them all (SIGTERM, then SIGKILL)."""

    def __init__(self) -> None:
        self.running: list[subprocess.Popen[bytes]] = []

    def start(self, args: Sequence[str], log: Path, **env: str) -> subprocess.Popen[bytes]:
        """`args` run with this Python (`["-m", "cloud", "serve", ...]`, or a script's path), from
        the repository, its stderr (the JSON log) into `log`, unbuffered."""
        with open(log, "wb") as err:  # the child has its own copy of the descriptor
            proc = subprocess.Popen(
                [sys.executable, *args],
                stdout=subprocess.DEVNULL,
                stderr=err,
                env=dict(os.environ, PYTHONUNBUFFERED="1", **env),
                cwd=REPO,
            )
        self.running.append(proc)
        return proc

    def stop(self, grace: float = 15.0) -> None:
        """Ask each to stop, then kill what is still running after `grace` seconds."""
        for proc in self.running:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.running:
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.running.clear()
