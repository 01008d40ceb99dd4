"""What the container tests share: the version the image is tagged with (a missing tool is
pitlink_testkit.needs.need's rule)."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def version() -> str:
    """setup.cfg's version: the image's tag."""
    found = re.search(r"^version *= *(\S+)", (REPO / "setup.cfg").read_text(), re.MULTILINE)
    assert found is not None, "setup.cfg has no version"
    return found.group(1)
