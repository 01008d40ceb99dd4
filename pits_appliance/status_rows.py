"""The status page's words for times and its rows' shape, shared by the modules that make rows."""

from __future__ import annotations

import time
from typing import Any

GREEN, AMBER, RED = "green", "amber", "red"


def when(ts: float | None) -> str:
    """A moment as the page shows it: `2026-05-03 12:34`, local time."""
    if ts is None:
        return "unknown"
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts))


def ago(seconds: float) -> str:
    """A span as the page shows it: `42 s`, `5 min`, `2.5 h`, `3 days`."""
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{int(seconds)} s"
    if seconds < 5400:
        return f"{int(seconds // 60)} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{int(seconds // 86400)} days"


def row(
    key: str, mark: str, title: str, text: str, since: float | None = None, **extra: Any
) -> dict[str, Any]:
    """One line of the page: a mark, a title, what to do, since when."""
    return {"key": key, "mark": mark, "title": title, "text": text, "since": since, **extra}
