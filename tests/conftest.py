"""Shared test setup: the simulator script is importable, and the real fixtures are located."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = REPO / "scripts"
if str(SCRIPTS) not in sys.path:
    sys.path.insert(0, str(SCRIPTS))

FIXTURES = REPO.parent / "shared" / "fixtures" / "fpvtrackside"


@pytest.fixture
def fixtures_root() -> Path:
    """The real FPVTrackside event in ../shared; tests that need it skip where it is absent."""
    if not (FIXTURES / "events").is_dir():
        pytest.skip(f"real event fixtures not found at {FIXTURES} (../shared is absent)")
    return FIXTURES


TESTS = Path(__file__).resolve().parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))
