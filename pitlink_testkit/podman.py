"""podman as the container tests run it: one place for the flags these machines need.

The tests run the relay's image (scripts/build-relay-image) with rootful podman, on the host's
network, so that a container's relay is on a loopback port like any other relay in the suite.
On the machines the suite runs on (a VM without systemd, with a hybrid cgroup v1/v2 layout,
and a hard limit on open files), podman's defaults do not start a container:

- `--runtime runc`: crun, podman's preferred runtime where it is installed, refuses the hybrid
  cgroup layout; runc takes it.
- `--cgroup-manager cgroupfs`: there is no systemd to ask for a container's cgroup.
- `--ulimit nofile=N:N --ulimit nproc=4096:4096`: podman asks the runtime for 1,048,576 open
  files by default, and passes the host's process limit, and the runtime may not set either
  here ("error setting rlimit type 7 (6): operation not permitted"); N is this machine's own
  hard limit on open files (65,536 at most), and 4,096 processes is plenty for one relay.
- `--health-interval disable` (`--no-healthcheck` for a one-off command): podman runs a health
  check from a systemd timer, and there is no systemd; a test runs the image's check itself
  with `podman healthcheck run`.

Nothing here changes the image: an operator runs it with whatever their podman or Docker needs.
"""

from __future__ import annotations

import contextlib
import json
import resource
import shutil
import subprocess
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

GLOBAL = ["--runtime", "runc", "--cgroup-manager", "cgroupfs"]


def missing() -> str | None:
    """Why podman cannot run containers here, or None when it can."""
    for tool in ("podman", "runc"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed: ./scripts/test installs it"
    return None


def podman(
    *args: str, timeout: float = 60.0, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """`podman ARGS` with the global flags above; its output as text. A failure raises with
    podman's own words when `check`."""
    done = subprocess.run(
        ["podman", *GLOBAL, *args], capture_output=True, text=True, timeout=timeout
    )
    if check and done.returncode != 0:
        raise RuntimeError(
            f"podman {' '.join(args[:3])} ... exited with {done.returncode}: {done.stderr.strip()}"
        )
    return done


def run_flags() -> list[str]:
    """The limits every `podman run` here takes (see the module's docstring for why)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    nofile = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
    return [
        "--ulimit",
        f"nofile={nofile}:{nofile}",
        "--ulimit",
        "nproc=4096:4096",
    ]


@dataclass
class Containers:
    """The containers and volumes one test made, all removed when it ends."""

    image: str
    names: list[str] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)

    def volume(self) -> str:
        """A new named volume (podman fills it from the image's /var/lib/pitlink on first use)."""
        name = f"pitlink-test-{uuid.uuid4().hex[:10]}"
        podman("volume", "create", name)
        self.volumes.append(name)
        return name

    def once(
        self, volume: str, *command: str, env: dict[str, str] | None = None, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """`podman run --rm --read-only -v VOLUME:/var/lib/pitlink IMAGE COMMAND`: a one-off
        command against the volume, as docs/running-a-relay.md has an operator run them."""
        return podman(
            "run",
            "--rm",
            "--read-only",
            "--no-healthcheck",
            *run_flags(),
            *env_flags(env),
            "-v",
            f"{volume}:/var/lib/pitlink",
            self.image,
            *command,
            timeout=timeout,
            check=False,
        )

    def start(
        self,
        volume: str,
        *,
        env: dict[str, str],
        flags: Sequence[str] = ("--read-only",),
        command: Sequence[str] = (),
    ) -> str:
        """Start the image (by default the relay, `cloud-relay serve`) in the background on
        the host's network, the volume at /var/lib/pitlink; returns the container's name."""
        name = f"pitlink-test-{uuid.uuid4().hex[:10]}"
        podman(
            "run",
            "-d",
            "--name",
            name,
            "--network",
            "host",
            *flags,
            "--health-interval",
            "disable",
            *run_flags(),
            *env_flags(env),
            "-v",
            f"{volume}:/var/lib/pitlink",
            self.image,
            *command,
        )
        self.names.append(name)
        return name

    def remove(self) -> None:
        for name in self.names:
            podman("rm", "-f", "-t", "0", name, check=False)
        for volume in self.volumes:
            podman("volume", "rm", "-f", volume, check=False)
        self.names.clear()
        self.volumes.clear()


@contextlib.contextmanager
def containers(image: str) -> Iterator[Containers]:
    made = Containers(image)
    try:
        yield made
    finally:
        made.remove()


def env_flags(env: dict[str, str] | None) -> list[str]:
    return [f"--env={key}={value}" for key, value in (env or {}).items()]


def inspect(what: str, kind: str = "container") -> dict[str, Any]:
    """`podman KIND inspect WHAT`, the one object it describes."""
    found = json.loads(podman(kind, "inspect", what).stdout)
    assert isinstance(found, list) and len(found) == 1, found
    return dict(found[0])


def logs(name: str) -> str:
    """A container's output, both streams (the relay logs JSON lines on stderr)."""
    done = podman("logs", name, check=False)
    return done.stdout + done.stderr
