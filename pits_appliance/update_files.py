"""The update's files in the state folder, read as hostile (bounded, a damaged one is absent)
and written privately: `update-report.json` (the last report, sent in each hello),
`update.json` (written just before a restart: the version, the slot left and the slot
entered) and `update-handled.json` (the sha256 of local bundles already dealt with).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wire.errors import DamagedError
from wire.files import write_private
from wire.untrusted import DamageNotes, read_json, stamp_of

log = logging.getLogger("pitlink.pits.update")

MAX_HANDLED = 100  # local bundles remembered as dealt with
MAX_STATE_FILE = 16 * 1024
OTHER = {"A": "B", "B": "A"}
REPORT = "update-report.json"
RECORD = "update.json"
HANDLED = "update-handled.json"

_DAMAGED = DamageNotes(max_kept=16)  # state files said to be damaged, once per version


def read_state_json(path: Path) -> dict[str, Any] | None:
    """A state file's JSON object; None when there is none, or it is damaged (said once)."""
    try:
        doc = read_json(path, limit=MAX_STATE_FILE)
        if not isinstance(doc, dict):
            raise DamagedError("not a JSON object")
    except FileNotFoundError:
        return None
    except (OSError, DamagedError) as exc:
        if _DAMAGED.first(str(path), stamp_of(path)):
            log.warning(
                "update state file unreadable; taken as absent",
                extra={"path": str(path), "error": str(exc)},
            )
        return None
    _DAMAGED.good(str(path))
    return doc


@dataclass(frozen=True)
class Pending:
    """Installed in the other slot, waiting for its restart."""

    version: str
    to_slot: str
    at: float


class UpdateFiles:
    """The update's JSON files in STATE_DIR."""

    def __init__(self, state_dir: Path):
        self.state_dir = state_dir

    def path(self, name: str) -> Path:
        return self.state_dir / name

    def load(self, name: str) -> dict[str, Any] | None:
        return read_state_json(self.path(name))

    def save(self, name: str, doc: dict[str, Any]) -> None:
        try:
            write_private(self.path(name), json.dumps(doc))
        except OSError as exc:
            log.warning("cannot write update state", extra={"file": name, "error": str(exc)})

    def remove(self, name: str) -> None:
        self.path(name).unlink(missing_ok=True)

    def handled(self) -> list[str]:
        """The sha256 of the local bundles dealt with, newest last."""
        got = (self.load(HANDLED) or {}).get("sha256")
        return (
            [s for s in got if isinstance(s, str)][-MAX_HANDLED:] if isinstance(got, list) else []
        )

    def save_handled(self, handled: list[str]) -> None:
        self.save(HANDLED, {"sha256": handled[-MAX_HANDLED:]})
