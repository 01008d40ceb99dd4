"""Upstream drift: each FPVTrackside body checked against its endpoint's JSON Schema.

The schemas (cloud/schemas/, drafted by scripts/draft_schemas.py from a real event and the
simulator) say what Pitlink and the dashboards rely on: the required fields, their types, ids
as UUID strings. A body that does not match is still served (drift is a warning, not an
outage); this only says where it differs, so the operator hears of an upgrade at the venue
before spectators do.

Checked once per new body (a new ETag), never per request: fastjsonschema's compiled check
(about 0.2 ms for a Race.json, eight times quicker than jsonschema's), and jsonschema only for
a body that fails, to name the first place it differs (its JSON pointer and what was expected).
"""

from __future__ import annotations

import json
import logging
import re
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fastjsonschema
import jsonschema

from wire.budget import Throttle
from wire.errors import DamagedError
from wire.untrusted import load_json

SCHEMAS = Path(__file__).parent / "schemas"
ENDPOINTS = (
    re.compile(r"/events/[^/]+/(Event|Pilots|Rounds|Results)\.json"),
    re.compile(r"/events/[^/]+/[^/]+/(Race)\.json"),
    re.compile(r"/httpfiles/(Channels)\.json"),
)
MAX_SHOWN = 120  # characters of an expected value or a message kept for the log and the page
# Bodies larger than this are not checked (counted as unchecked): a pits sending a new 8 MiB
# body again and again must not keep the relay's loop busy validating it.
MAX_CHECKED_BYTES = 2 * 1024 * 1024


@dataclass(frozen=True)
class Mismatch:
    """Where a body first differs from its endpoint's schema."""

    endpoint: str  # e.g. "Race.json"
    pointer: str  # JSON pointer into the body, e.g. "/0/Laps/3/LengthSeconds"
    kind: str  # the schema keyword that failed: type, required, pattern, ...
    expected: str  # what the schema asks there, e.g. "number"
    message: str


def endpoint_of(path: str) -> str | None:
    """The endpoint a normalized FPVTrackside path is, e.g. "Race" (None: no schema)."""
    for pattern in ENDPOINTS:
        found = pattern.fullmatch(path)
        if found is not None:
            return found.group(1)
    return None


class Schemas:
    """The endpoints' schemas, compiled once."""

    def __init__(self, folder: Path = SCHEMAS):
        self._fast: dict[str, Any] = {}
        self._full: dict[str, jsonschema.protocols.Validator] = {}
        for file in sorted(folder.glob("*.schema.json")):
            name = file.name.removesuffix(".schema.json")
            schema = json.loads(file.read_text())
            jsonschema.Draft202012Validator.check_schema(schema)
            self._fast[name] = fastjsonschema.compile(schema)
            self._full[name] = jsonschema.Draft202012Validator(schema)

    @property
    def endpoints(self) -> list[str]:
        return sorted(self._fast)

    def check(self, path: str, body: bytes) -> Mismatch | None:
        """None when `body` fits its endpoint's schema, or the path has none."""
        name = endpoint_of(path)
        if name is None or name not in self._fast:
            return None
        try:
            # Bounded in depth too: a deep body that decodes would still make the check below
            # recurse past Python's limit (jsonschema's message holds the value's repr).
            data = load_json(body, limit=MAX_CHECKED_BYTES) if body.strip() else []
        except DamagedError as exc:  # the agent sends canonical JSON: this is no FPVTrackside's
            return Mismatch(f"{name}.json", "", "json", "JSON", str(exc)[:MAX_SHOWN])
        try:
            self._fast[name](data)
            return None
        except fastjsonschema.JsonSchemaException:
            pass
        error = jsonschema.exceptions.best_match(self._full[name].iter_errors(data))
        if error is None:  # the two disagree: trust the one that names a place
            return None
        pointer = "".join(
            f"/{str(p).replace('~', '~0').replace('/', '~1')}" for p in error.absolute_path
        )
        expected = error.validator_value
        shown = expected if isinstance(expected, str) else json.dumps(expected)
        return Mismatch(
            endpoint=f"{name}.json",
            pointer=pointer[:MAX_SHOWN],
            kind=str(error.validator),
            expected=shown[:MAX_SHOWN],
            message=error.message[:MAX_SHOWN],
        )


LOG_INTERVAL_S = 300.0  # one line per endpoint and kind of mismatch every 5 minutes at most
MAX_PITS_SHOWN = 1000  # pits whose last mismatches are kept for the admin page


@dataclass(frozen=True)
class Seen:
    """A mismatch as the admin page shows it: which pits, when (wall clock), where."""

    pits_id: str
    at: float
    mismatch: Mismatch


class DriftWatch:
    """What the relay does with a new body: check it, count, log (rate-limited), remember.

    Time is passed in (`wall`, `now`), so the rate limit is tested without sleeping.
    """

    def __init__(
        self,
        schemas: Schemas,
        *,
        mismatches: Any,  # a prometheus Counter labelled by endpoint
        last_mismatch: Any,  # a prometheus Gauge: wall-clock time of the last one
        unchecked: Any,  # a prometheus Counter: bodies over MAX_CHECKED_BYTES
        log: logging.Logger,
        wall: Callable[[], float],
        monotonic: Callable[[], float],
    ):
        self.schemas = schemas
        self.mismatches = mismatches
        self.last_mismatch = last_mismatch
        self.unchecked = unchecked
        self.log = log
        self.wall = wall
        self.monotonic = monotonic
        self._throttle = Throttle(LOG_INTERVAL_S)
        self._latest: OrderedDict[str, dict[str, Seen]] = OrderedDict()

    def seen(self, pits_id: str, path: str, body: bytes) -> Mismatch | None:
        """Check one new body from `pits_id`; the mismatch, if any (it is still served)."""
        if endpoint_of(path) is None:
            return None
        if len(body) > MAX_CHECKED_BYTES:
            self.unchecked.inc()
            return None
        found = self.schemas.check(path, body)
        latest = self._latest.get(pits_id)
        if found is None:
            if latest is not None:
                latest.pop(f"{endpoint_of(path)}.json", None)
            return None
        now = self.wall()
        self.mismatches.labels(found.endpoint).inc()
        self.last_mismatch.set(now)
        if latest is None:
            latest = self._latest[pits_id] = {}
            while len(self._latest) > MAX_PITS_SHOWN:
                self._latest.popitem(last=False)
        latest[found.endpoint] = Seen(pits_id, now, found)
        held = self._throttle.allow(f"{found.endpoint} {found.kind}", self.monotonic())
        if held is not None:
            self.log.warning(
                "FPVTrackside data differs from its schema (still served)",
                extra={
                    "pits_id": pits_id,
                    "endpoint": found.endpoint,
                    "pointer": found.pointer,
                    "kind": found.kind,
                    "expected": found.expected,
                    "detail": found.message,
                    "suppressed": held,
                },
            )
        return found

    def first(self, pits_id: str) -> Seen | None:
        """The earliest mismatch still standing for `pits_id` (for the admin page)."""
        latest = self._latest.get(pits_id)
        return min(latest.values(), key=lambda s: s.at) if latest else None
