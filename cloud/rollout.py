"""Rollouts in waves: a bundle offered to a few boxes first, to the rest once those are good,
and halted as soon as one of them rolls back.

A rollout is a record in the bundle folder (`rollouts.json`, bundle id → record), written
under the folder's lock like the offers, so that it survives a restart of the relay, the CLI
can start, resume or cancel one, and replicas sharing the folder drive it together. It does
not send anything itself: it sets and withdraws standing offers (cloud.bundles), which the
relay sends to the boxes as it always does (cloud.updates). This module decides (pure, over
the record and the boxes); cloud.rollout_store reads and writes the file.

Each relay steps every rollout on its tick, with the boxes connected to it:

- `wave`: the boxes named with --first, then the connected boxes that can take the bundle in
  pits id order, until the wave holds N; each is offered the bundle. Once every box of the
  wave reports `good`, the rollout moves on to `rest`.
- `rest`: every connected box that can take the bundle is offered it, now and as they connect.
- Any box of the rollout reporting `rolled-back` or `failed` for the bundle's version halts it:
  nothing more is offered, and the offers not yet acted on (not installing, installed,
  restarting or good) are withdrawn. The operator resumes it (the boxes that failed are left
  out and the wave is filled up again) or cancels it (its offers not yet acted on withdrawn).

A box can take the bundle when its hello says an arch that is the bundle's (or none), a
version older than the bundle's (wire.versions), and no other bundle stands offered to it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from cloud.bundles import (
    PITS_ID,
    Bundle,
    BundleError,
    arch_of,
    check_id,
)
from wire import messages as m
from wire.errors import DamagedError
from wire.untrusted import read_json
from wire.versions import is_version, newer

log = logging.getLogger("pitlink.cloud.rollout")

ROLLOUTS = "rollouts.json"
MAX_ROLLOUTS = 100  # one per bundle; a relay keeps a handful of bundles
MAX_BOXES = 10_000  # boxes in one rollout, as many as the offers file holds
MAX_WAVE = 1000
MAX_ROLLOUTS_BYTES = 8 * 1024 * 1024
HALTING = frozenset({"rolled-back", "failed"})
# The box has the bundle in its other slot, or is writing it: a withdrawal changes nothing.
ACTED = frozenset({"installing", "installed", "restarting", "good"})


@dataclass(kw_only=True)
class Rollout:
    """One bundle's rollout, as kept in rollouts.json."""

    bundle: str
    version: str
    wave: int
    first: list[str] = field(default_factory=list)  # named by the operator, offered first
    members: list[str] = field(default_factory=list)  # the wave, in the order it was filled
    phase: str = "wave"  # or "rest"
    state: str = "running"  # or "halted", "cancelled"
    boxes: dict[str, str] = field(default_factory=dict)  # pits id → its last state of it
    skipped: list[str] = field(default_factory=list)  # failed, and resumed past
    halt: dict[str, Any] | None = None  # {pitsId, state, version, message, at}
    started: float = 0.0
    by: str = ""

    def describe(self) -> dict[str, Any]:
        return {
            "bundle": self.bundle,
            "version": self.version,
            "wave": self.wave,
            "first": list(self.first),
            "members": list(self.members),
            "phase": self.phase,
            "state": self.state,
            "boxes": dict(self.boxes),
            "skipped": list(self.skipped),
            "halt": self.halt,
            "started": self.started,
            "by": self.by,
        }

    @classmethod
    def parse(cls, data: Any) -> Rollout:
        """From rollouts.json; ValueError (only) on anything this module did not write."""
        if not isinstance(data, dict):
            raise ValueError("not an object")
        try:
            r = cls(
                bundle=str(data["bundle"]),
                version=str(data["version"]),
                wave=int(data["wave"]),
                first=_ids(data.get("first", [])),
                members=_ids(data.get("members", [])),
                phase=str(data.get("phase", "wave")),
                state=str(data.get("state", "running")),
                boxes=_states(data.get("boxes", {})),
                skipped=_ids(data.get("skipped", [])),
                halt=_halt(data.get("halt")),
                started=float(data.get("started", 0.0)),
                by=str(data.get("by", ""))[:200],
            )
        except KeyError as exc:
            raise ValueError(f"no {str(exc)[:40]}") from None
        except (TypeError, OverflowError) as exc:
            raise ValueError(f"a field of the wrong type: {exc}") from None
        if not (
            1 <= r.wave <= MAX_WAVE
            and r.phase in ("wave", "rest")
            and r.state in ("running", "halted", "cancelled")
            and is_version(r.version)
        ):
            raise ValueError("fields out of range")
        check_id(r.bundle)
        return r

    def failures(self) -> list[str]:
        """Boxes of this rollout that rolled back or failed, and were not resumed past."""
        return [p for p, s in self.boxes.items() if s in HALTING and p not in self.skipped]

    def wave_members(self) -> list[str]:
        return [p for p in self.members if p not in self.skipped]


def _ids(raw: Any) -> list[str]:
    if not isinstance(raw, list):
        raise TypeError("not a list")
    return [p for p in raw[:MAX_BOXES] if isinstance(p, str) and PITS_ID.fullmatch(p)]


def _states(raw: Any) -> dict[str, str]:
    if not isinstance(raw, dict):
        raise TypeError("not an object")
    return {
        p: s
        for p, s in list(raw.items())[:MAX_BOXES]
        if PITS_ID.fullmatch(p) and isinstance(s, str) and s in m.UPDATE_STATES
    }


def _halt(raw: Any) -> dict[str, Any] | None:
    if not isinstance(raw, dict):
        return None
    return {k: str(raw.get(k, ""))[:1000] for k in ("pitsId", "state", "version", "message")} | {
        "at": float(raw.get("at", 0.0))
    }


def read_rollouts(path: Any) -> dict[str, Rollout]:
    """The rollouts in the file, the damaged records skipped; OSError or DamagedError when the
    file is no JSON object."""
    raw = read_json(path, limit=MAX_ROLLOUTS_BYTES)
    if not isinstance(raw, dict):
        raise DamagedError("not a JSON object")
    out = {}
    for key, value in list(raw.items())[:MAX_ROLLOUTS]:
        try:
            rollout = Rollout.parse(value)
        except (ValueError, BundleError):
            continue
        if rollout.bundle == key:
            out[key] = rollout
    return out


@dataclass(frozen=True)
class Box:
    """What a step needs of a box connected here."""

    pits_id: str
    hello: m.PitsHello | None
    update: m.UpdateReport | None


def can_take(bundle: Bundle, box: Box, offered: str | None) -> bool:
    """Whether this box can be offered the bundle by a rollout."""
    if box.hello is None or offered not in (None, bundle.id):
        return False
    if arch_of(box.hello) not in (None, bundle.arch):
        return False
    try:
        return newer(bundle.version, box.hello.sw_version)
    except ValueError:
        return False


@dataclass
class Changes:
    """What one step decided: offers to set and to withdraw (besides the record itself)."""

    offer: list[str] = field(default_factory=list)
    withdraw: list[str] = field(default_factory=list)
    halted: bool = False  # this step halted it


def advance(
    r: Rollout, bundle: Bundle, boxes: Iterable[Box], offers: dict[str, str], now: float
) -> Changes:
    """Step one rollout with the boxes connected here; it changes `r` and says which offers
    to change. Pure: the caller reads and writes the files."""
    changes = Changes()
    here = {b.pits_id: b for b in boxes}
    for pits_id, box in here.items():
        if pits_id in r.boxes and box.update is not None and box.update.version == r.version:
            if r.boxes[pits_id] != box.update.state:
                r.boxes[pits_id] = box.update.state
                if box.update.state in HALTING and r.state == "running":
                    r.state, changes.halted = "halted", True
                    r.halt = {
                        "pitsId": pits_id,
                        "state": box.update.state,
                        "version": r.version,
                        "message": box.update.message[:1000],
                        "at": now,
                    }
    if changes.halted:
        changes.withdraw = not_acted(r, offers)
        return changes
    if r.state != "running":
        return changes

    def take(pits_id: str) -> None:
        r.boxes.setdefault(pits_id, "offered")
        if offers.get(pits_id) != r.bundle:
            changes.offer.append(pits_id)

    if r.phase == "wave":
        for pits_id in r.first:
            if pits_id not in r.members and pits_id not in r.skipped:
                r.members.append(pits_id)
        ready = sorted(
            p
            for p, b in here.items()
            if p not in r.members and p not in r.boxes and can_take(bundle, b, offers.get(p))
        )
        while len(r.wave_members()) < r.wave and ready:
            r.members.append(ready.pop(0))
        for pits_id in r.wave_members():
            take(pits_id)
        if len(r.wave_members()) >= r.wave and all(
            r.boxes.get(p) == "good" for p in r.wave_members()
        ):
            r.phase = "rest"
            log.info("rollout wave good", extra={"bundle": r.bundle, "version": r.version})
    if r.phase == "rest":
        for pits_id, box in sorted(here.items()):
            if pits_id not in r.boxes and can_take(bundle, box, offers.get(pits_id)):
                take(pits_id)
    return changes


def describe_rollout(r: Rollout) -> str:
    """One line for the CLI: where the rollout stands."""
    good = sum(1 for s in r.boxes.values() if s == "good")
    text = (
        f"rollout of {r.bundle} ({r.version}): {r.state}, "
        + (
            "wave " + (", ".join(r.wave_members()) or "not chosen yet") + f" of {r.wave}"
            if r.phase == "wave"
            else "offered to all"
        )
        + f"; {len(r.boxes)} boxes in it, {good} good"
    )
    if r.halt is not None:
        text += f"; halted: {r.halt['pitsId']} reported {r.halt['state']} of {r.halt['version']}"
    return text


def not_acted(r: Rollout, offers: dict[str, str]) -> list[str]:
    """The boxes standing offered this rollout's bundle that have not started installing it."""
    return sorted(
        p for p, b in offers.items() if b == r.bundle and r.boxes.get(p, "offered") not in ACTED
    )
