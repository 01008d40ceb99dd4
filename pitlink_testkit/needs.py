"""A tool a test needs: where it is missing the test is skipped on a developer's machine, and
fails in CI (`CI` set), where ./scripts/test installs every tool. Never a skip to green there."""

from __future__ import annotations

import os


def need(ok: bool, why: str) -> None:
    """Skip where a tool is missing, but fail in CI, where ./scripts/test installs them."""
    import pytest  # only the tests call this; the package does not depend on pytest

    if ok:
        return
    if os.environ.get("CI"):
        pytest.fail(why)
    pytest.skip(why)
