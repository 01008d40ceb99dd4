"""Draft the JSON Schemas of FPVTrackside's endpoints from event folders.

    .venv/bin/python scripts/draft_schemas.py [WEB_ROOT ...] [--simulated-steps N] [--out DIR]

Reads every `events/<id>/{Event,Pilots,Rounds,Results}.json`, `events/<id>/<race>/Race.json` and
`httpfiles/Channels.json` under each web root (the real event in tests/fixtures/ by default),
adds what the simulator writes over N steps of a live event, and writes one draft-2020-12
schema per endpoint to cloud/schemas/. What it writes: each record's fields that every sample
had are required; a field's type is every JSON type seen for it (null included); strings that
are all ids, dates or durations get those formats; lists are never required to hold anything.
Fields no sample had are allowed (an addition upstream breaks nothing).

When FPVTrackside changes: run it on a web root of the new version, read `git diff
cloud/schemas/`, and keep what is a real change (see docs/running-a-relay.md, Upstream drift).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pitlink_testkit.fpvtrackside import LiveEvent  # noqa: E402

ENDPOINTS = ("Event", "Pilots", "Rounds", "Race", "Results", "Channels")
FORMATS = {
    "id": re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"),
    "date": re.compile(r"\d{4}/\d{2}/\d{2} \d{1,2}:\d{2}:\d{2}(\.\d{1,7})?"),
    "duration": re.compile(r"(\d+\.)?\d{2}:\d{2}:\d{2}(\.\d{1,7})?"),
}
DEFS = {
    "id": {"type": "string", "pattern": "^" + FORMATS["id"].pattern + "$"},
    "date": {"type": "string", "pattern": "^" + FORMATS["date"].pattern + "$"},
    "duration": {"type": "string", "pattern": "^" + FORMATS["duration"].pattern + "$"},
}
KINDS = {
    bool: "boolean",
    int: "integer",
    float: "number",
    str: "string",
    type(None): "null",
    list: "array",
    dict: "object",
}


def load(path: Path) -> Any:
    return json.loads(path.read_bytes().decode("utf-8-sig") or "[]")


def samples_of(web_root: Path) -> dict[str, list[Any]]:
    found: dict[str, list[Any]] = {name: [] for name in ENDPOINTS}
    for event in sorted((web_root / "events").glob("*/")):
        for name in ("Event", "Pilots", "Rounds", "Results"):
            if (event / f"{name}.json").exists():
                found[name].append(load(event / f"{name}.json"))
        found["Race"] += [load(race) for race in sorted(event.glob("*/Race.json"))]
    channels = web_root / "httpfiles" / "Channels.json"
    if channels.exists():
        found["Channels"].append(load(channels))
    return found


def schema_of(values: list[Any]) -> dict[str, Any]:
    """The schema every one of `values` (samples of one place) fits."""
    by_kind: dict[str, list[Any]] = {}
    for value in values:
        by_kind.setdefault(KINDS[type(value)], []).append(value)
    if "integer" in by_kind and "number" in by_kind:
        by_kind["number"] += by_kind.pop("integer")
    options: list[dict[str, Any]] = []
    for kind, seen in sorted(by_kind.items()):
        if kind == "object":
            fields: dict[str, list[Any]] = {}
            for obj in seen:
                for key, value in obj.items():
                    fields.setdefault(key, []).append(value)
            options.append(
                {
                    "type": "object",
                    "required": [k for k in fields if all(k in obj for obj in seen)],
                    "properties": {k: schema_of(v) for k, v in fields.items()},
                }
            )
        elif kind == "array":
            items = [item for array in seen for item in array]
            options.append(
                {"type": "array", "items": schema_of(items)} if items else {"type": "array"}
            )
        elif kind == "string":
            fmt = next((f for f, rx in FORMATS.items() if all(rx.fullmatch(s) for s in seen)), None)
            options.append({"$ref": f"#/$defs/{fmt}"} if fmt else {"type": "string"})
        else:
            options.append({"type": kind})
    if not options:
        return {}
    if len(options) == 1:
        return options[0]
    if all(set(o) == {"type"} for o in options):
        return {"type": [o["type"] for o in options]}
    return {"anyOf": options}


def draft(name: str, samples: list[Any]) -> dict[str, Any]:
    body = schema_of(samples)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"https://pitlink.invalid/schemas/fpvtrackside/{name}.schema.json",
        "title": f"FPVTrackside {name}.json",
        "description": (
            f"What FPVTrackside's web server sends for {name}.json, drafted by "
            "scripts/draft_schemas.py from the event in tests/fixtures/ and simulated races."
        ),
        **body,
        "$defs": DEFS,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "roots", nargs="*", type=Path, default=[ROOT / "tests/fixtures/fpvtrackside"]
    )
    parser.add_argument("--simulated-steps", type=int, default=400)
    parser.add_argument("--out", type=Path, default=ROOT / "cloud" / "schemas")
    args = parser.parse_args()
    samples: dict[str, list[Any]] = {name: [] for name in ENDPOINTS}
    roots = list(args.roots)
    with tempfile.TemporaryDirectory() as tmp:
        if args.simulated_steps:
            live = LiveEvent(Path(tmp), seed=3, pilots=6)
            for _ in range(args.simulated_steps):
                live.step()
            roots.append(Path(tmp))
        for root in roots:
            for name, found in samples_of(root).items():
                samples[name] += found
    args.out.mkdir(parents=True, exist_ok=True)
    for name in ENDPOINTS:
        path = args.out / f"{name}.schema.json"
        path.write_text(json.dumps(draft(name, samples[name]), indent=2) + "\n")
        print(f"{path.relative_to(ROOT)}: {len(samples[name])} samples")
    return 0


if __name__ == "__main__":
    sys.exit(main())
