"""Upstream drift: each FPVTrackside body checked against its endpoint's JSON Schema (issue 18).

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
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fastjsonschema
import jsonschema
import ujson

SCHEMAS = Path(__file__).parent / "schemas"
ENDPOINTS = (
    re.compile(r"/events/[^/]+/(Event|Pilots|Rounds|Results)\.json"),
    re.compile(r"/events/[^/]+/[^/]+/(Race)\.json"),
    re.compile(r"/httpfiles/(Channels)\.json"),
)
MAX_SHOWN = 120  # characters of an expected value or a message kept for the log and the page


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
            data = ujson.loads(body) if body.strip() else []
        except ValueError as exc:  # the agent sends canonical JSON: this is not drift
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
