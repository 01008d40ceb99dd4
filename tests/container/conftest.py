"""The relay's container image, built once a run (scripts/build-relay-image, cached by its
inputs), and the containers each test starts from it."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator

import pytest
from container_tools import REPO, version

from pitlink_testkit import podman
from pitlink_testkit.needs import need

# From nothing, on 2 cores with a nearby mirror: about a minute (56 s measured); cached, under a
# second. The bound leaves room for a slow mirror.
BUILD_TIMEOUT = 900.0
# Seconds the build took in this run, for the figure the tests print.
BUILT: dict[str, float] = {}


@pytest.fixture(scope="session")
def relay_image() -> str:
    """The image pitlink-relay:VERSION in podman's store, and dist/pitlink-relay-VERSION.tar."""
    need(podman.missing() is None, podman.missing() or "")
    need(
        shutil.which("mmdebstrap") is not None,
        "mmdebstrap is not installed: ./scripts/test installs it",
    )
    need(os.geteuid() == 0, "the image is built and run by rootful podman: run the tests as root")
    started = time.monotonic()
    done = subprocess.run(
        [str(REPO / "scripts" / "build-relay-image")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
    )
    if done.returncode != 0:
        pytest.fail(f"scripts/build-relay-image failed:\n{done.stderr[-4000:]}")
    BUILT["relay"] = time.monotonic() - started
    print(f"\nscripts/build-relay-image took {BUILT['relay']:.0f} s; its last words:")
    print("\n".join(done.stderr.strip().splitlines()[-2:]))
    return f"pitlink-relay:{version()}"


@pytest.fixture
def containers(relay_image: str) -> Iterator[podman.Containers]:
    """Containers and volumes of the relay's image, removed when the test ends."""
    with podman.containers(relay_image) as made:
        yield made
