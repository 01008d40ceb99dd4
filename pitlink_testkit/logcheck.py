"""Every log line of a test run, formatted as the programs format it, and a check for secrets."""

from __future__ import annotations

import json
import logging
import re

from wire.jsonlog import JsonFormatter

# Key material the tests made; pitlink_testkit.keys.make_keys adds to it.
SECRETS: set[str] = set()
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]+")
_RAW_KEY = re.compile(r"(?<![A-Za-z0-9_-])[A-Za-z0-9_-]{43}(?![A-Za-z0-9_-])")  # 256 bits, b64url


class Recorder(logging.Handler):
    """Formats every record of the run the way the programs do, and keeps the lines."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(JsonFormatter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


RECORDER = Recorder()


def not_json(lines: list[str]) -> list[str]:
    """Lines that are not one JSON object each."""
    bad = []
    for line in lines:
        try:
            if not isinstance(json.loads(line), dict):
                bad.append(line[:300])
        except ValueError:
            bad.append(line[:300])
    return bad


def find_secrets(lines: list[str]) -> list[str]:
    """Lines that hold a token, a raw 256-bit key, or any secret a test registered."""
    return [
        line[:300]
        for line in lines
        if _JWT.search(line) or _RAW_KEY.search(line) or any(s in line for s in SECRETS)
    ]
