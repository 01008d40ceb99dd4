"""Key sets for tests, whose secrets the log check then looks for in every log line."""

from __future__ import annotations

import json
from pathlib import Path

from cloud.keys import KeySet, keygen
from pitlink_testkit.logcheck import SECRETS


def make_keys(directory: Path, kid: str = "k1") -> tuple[Path, KeySet]:
    """A fresh key set in `directory`: its file and the loaded set.

    Its keys are registered with the log check, so that a line that leaks one fails the run.
    """
    path = directory / "jwks.json"
    keygen(path, kid)
    for key in json.loads(path.read_text())["keys"]:
        SECRETS.add(key["k"])
    return path, KeySet.load(path)
