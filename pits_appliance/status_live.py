"""The status page's lines about live updates: does the box push, do FPVTrackside's events come.

Both are green whatever they say: pushing needs a relay that takes it, and FPVTrackside's
ExtensionMode is for the organiser to turn on (docs/at-the-venue.md says how); without either
spectators still see the race, a little later.
"""

from __future__ import annotations

from typing import Any

from pits_appliance.state import AgentState
from pits_appliance.status_rows import GREEN, ago, row

GUIDE = "the box's guide, “At the venue”"


def push_row(s: AgentState, now: float) -> list[dict[str, Any]]:
    """Whether the box pushes changes to the relay (only while connected and not paused)."""
    if not s.ws_connected or s.paused:
        return []
    since = s.changed_at.get("pushing")
    if not s.pushing:
        return [
            row(
                "push",
                GREEN,
                "The relay asks for each file",
                "It takes no pushes (an older relay), or NO_PUSH is set in pitlink.conf: "
                "spectators see changes a little later.",
                since,
            )
        ]
    parts = [f"Watching {s.watched} file{'' if s.watched == 1 else 's'} on FPVTrackside"]
    if s.race_now:
        race = s.race_now.rsplit("/", 2)[-2]
        parts.append(f"the race now is {race[:8]}")
    parts.append(
        f"last change sent {ago(now - s.last_push)} ago" if s.last_push else "no change yet"
    )
    return [row("push", GREEN, "Pushing race changes to the relay", ", ".join(parts) + ".", since)]


def events_row(s: AgentState, now: float) -> dict[str, Any]:
    """Whether FPVTrackside's ExtensionMode sends the box its race events."""
    if s.fpvt_events_last is None:
        return row(
            "events",
            GREEN,
            "FPVTrackside sends race events: not turned on",
            "Turn on ExtensionMode in FPVTrackside for laps to reach spectators sooner: see "
            f"{GUIDE}.",
        )
    said = f" {s.fpvt_events_from}." if s.fpvt_events_from else ""
    return row(
        "events",
        GREEN,
        f"FPVTrackside sends race events: yes, last {ago(now - s.fpvt_events_last)} ago",
        "Each makes the box read the race again at once." + said,
    )
