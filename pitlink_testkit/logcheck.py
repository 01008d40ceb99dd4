"""Every log record of a test run, formatted as the programs format it, and what must not be in it.

Each line must be one JSON object and hold no secret. A record at ERROR or above, or one that
carries a traceback at any level, fails the test it came from unless the test declared it with
`@pytest.mark.provokes_error(logger, message, why=...)`: an error nobody expected is a bug until
shown otherwise (Tornado's own test runner fails on the same). tests/conftest.py holds the hooks.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass

from wire.jsonlog import JsonFormatter, mask_text

# Key material the tests made; pitlink_testkit.keys.make_keys adds to it.
SECRETS: set[str] = set()
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]+")
_RAW_KEY = re.compile(r"(?<![A-Za-z0-9_-])[A-Za-z0-9_-]{43}(?![A-Za-z0-9_-])")  # 256 bits, b64url


@dataclass(frozen=True)
class ErrorRecord:
    """A record at ERROR or above, or with a traceback: what a test must have declared."""

    test: str | None  # the test's node id; None outside any test
    logger: str
    level: str
    message: str
    exception: str | None  # "Type: text" of the traceback's exception, if it has one

    def __str__(self) -> str:
        traceback = f" (traceback: {self.exception})" if self.exception else ""
        return f"{self.level} {self.logger}: {self.message}{traceback}"


@dataclass(frozen=True)
class Expected:
    """An error a test provokes on purpose: its logger, a regular expression searched for in its
    message, and why the test provokes it.

    `required`: the test fails if no such error was logged, so that a declaration cannot outlive
    the error it excuses.
    """

    logger: str
    message: str
    why: str
    required: bool = True

    def __post_init__(self) -> None:
        if not self.why.strip():
            raise ValueError(f"say why the test provokes {self.logger}: {self.message!r}")
        re.compile(self.message)

    def matches(self, error: ErrorRecord) -> bool:
        return error.logger == self.logger and re.search(self.message, error.message) is not None

    def __str__(self) -> str:
        return f"{self.logger}: /{self.message}/ ({self.why})"


class Recorder(logging.Handler):
    """Formats every record of the run the way the programs do, and keeps the lines; keeps the
    errors apart, each with the test that was running when it was logged."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(JsonFormatter())
        self.lines: list[str] = []
        self.errors: list[ErrorRecord] = []
        self.test: str | None = None  # set by tests/conftest.py around each test

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))
        exc = record.exc_info[1] if record.exc_info else None
        if record.levelno >= logging.ERROR or exc is not None:
            self.errors.append(
                ErrorRecord(
                    test=self.test,
                    logger=record.name,
                    level=record.levelname,
                    message=mask_text(record.getMessage())[:300],
                    exception=None if exc is None else mask_text(f"{type(exc).__name__}: {exc}"),
                )
            )

    def errors_of(self, test: str | None) -> list[ErrorRecord]:
        return [e for e in self.errors if e.test == test]


RECORDER = Recorder()


def unexpected(errors: list[ErrorRecord], expected: list[Expected]) -> list[ErrorRecord]:
    """The errors that no declaration matches."""
    return [e for e in errors if not any(x.matches(e) for x in expected)]


def unseen(errors: list[ErrorRecord], expected: list[Expected]) -> list[Expected]:
    """The required declarations that no error matched."""
    return [x for x in expected if x.required and not any(x.matches(e) for e in errors)]


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
