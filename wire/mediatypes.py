"""Which Content-Type a path is served with: chosen from its extension, never from a peer.

Whatever answers at FPVTrackside's address on the venue LAN could label an HTML page with a
script as anything; the relay serves pits content under its own name, so the label must not
come from the pits. A small table covers what FPVTrackside's web root holds (its data, its page
and the page's scripts, styles, images and fonts); anything else is a download.
"""

from __future__ import annotations

OCTET_STREAM = "application/octet-stream"
HTML = "text/html; charset=utf-8"
JSON = "application/json; charset=utf-8"

BY_EXTENSION: dict[str, str] = {
    ".json": JSON,
    ".html": HTML,
    ".htm": HTML,
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".svg": "image/svg+xml",
    ".ico": "image/x-icon",
    ".webp": "image/webp",
    ".woff": "font/woff",
    ".woff2": "font/woff2",
    ".ttf": "font/ttf",
    ".otf": "font/otf",
}


def content_type_for_path(path: str) -> str:
    """The Content-Type of a normalized path: a path ending in `/` is a page; else by extension."""
    if path.endswith("/"):
        return HTML
    name = path.rsplit("/", 1)[-1]
    dot = name.rfind(".")
    # As `is_json_path` judges it: whatever ends in `.json` is data, even a bare `.json`.
    return BY_EXTENSION.get(name[dot:].lower(), OCTET_STREAM) if dot >= 0 else OCTET_STREAM
