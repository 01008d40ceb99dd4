"""What FPVTrackside's own files say about the event it has open.

FPVTrackside's page at `/` names the open event as `new EventManager("events/<event id>")`
(its `%eventDirectory%` filled in), and `events/<id>/Event.json` holds the event's name. Both
come from whatever answers on the venue LAN, so both are bounded and cleaned before anyone
shows them.
"""

from __future__ import annotations

import re
import unicodedata

from wire.canonical import decode_lenient
from wire.errors import ContentError

EVENT_RE = re.compile(rb'new EventManager\("events/([a-z0-9-]{1,64})"')
MAX_NAME = 100


def event_id_from_page(body: bytes) -> str | None:
    """The open event's id, from FPVTrackside's page; None when no event is open."""
    match = EVENT_RE.search(body)
    return match.group(1).decode("ascii") if match else None


def event_name(body: bytes) -> str | None:
    """The event's name from its Event.json, cleaned of control characters and bounded."""
    try:
        doc = decode_lenient(body)
    except ContentError:
        return None
    first = doc[0] if isinstance(doc, list) and doc else None
    name = first.get("Name") if isinstance(first, dict) else None
    if not isinstance(name, str):
        return None
    clean = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C").strip()
    if len(clean) > MAX_NAME:
        clean = clean[: MAX_NAME - 1] + "…"
    return clean or None
