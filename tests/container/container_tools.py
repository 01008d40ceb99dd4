"""What the container tests share: the version the image is tagged with, and the rule for a
missing tool."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def need(ok: bool, why: str) -> None:
    """Skip where a tool is missing, but fail in CI, where ./scripts/test installs them."""
    if ok:
        return
    if os.environ.get("CI"):
        pytest.fail(why)
    pytest.skip(why)


def version() -> str:
    """setup.cfg's version: the image's tag."""
    found = re.search(r"^version *= *(\S+)", (REPO / "setup.cfg").read_text(), re.MULTILINE)
    assert found is not None, "setup.cfg has no version"
    return found.group(1)
