"""FPVTrackside's built-in web server, quirks included: how it answers a path, and the handler.

FPVTrackside serves its event files from a single HttpListener loop on port 8080: one request at
a time (the simulator's ``turn``), no Content-Type on event files, an empty 200 for a missing
event file, index.html for unknown paths, no ETag or Last-Modified, no protection against
``..``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import urllib.parse
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import tornado.httpserver
import tornado.iostream
import tornado.web

from pitlink_testkit.fpvtrackside_pages import EVENT_PLACEHOLDER

if TYPE_CHECKING:
    from pitlink_testkit.fpvtrackside import Simulator

log = logging.getLogger("pitlink.sim.fpvtrackside")

# HttpListener (http.sys) names itself so; without this Tornado would announce itself.
SERVER_HEADER = "Microsoft-HTTPAPI/2.0"
# The only types the real server sets (by exact file extension); anything else gets none.
CONTENT_TYPES = {".html": "text/html", ".htm": "text/html", ".json": "text/json"}
HUGE_CHUNK_BYTES = 64 * 1024
# HttpListener keeps connections open between requests (HTTP/1.1; FPVTrackside never turns
# KeepAlive off) and http.sys closes one idle for 2 minutes (its IdleConnection timeout).
IDLE_TIMEOUT_S = 120.0


@dataclasses.dataclass(frozen=True)
class Reply:
    """What the real server answers for one path; ``content_type=None`` means no header at all."""

    body: bytes
    content_type: str | None
    escapes_root: bool


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except (OSError, ValueError):  # missing, a directory, unreadable, or a NUL in the name
        return None


def _escapes(base: str, target: str) -> bool:
    try:
        return os.path.commonpath([base, os.path.normpath(target)]) != base
    except ValueError:  # e.g. another drive on Windows
        return True


def resolve(root: Path, event_id: str, raw_path: str) -> Reply:
    """Answer ``raw_path`` the way FPVTrackside's EventWebServer does, reading files fresh.

    Segments are URL-decoded one by one and joined onto the root with no ``..`` check, as the
    real server does; ``escapes_root`` tells whether the resulting file path left the root.
    """
    segments = [urllib.parse.unquote(s) for s in raw_path.split("/") if s]
    base = str(root)
    target = os.sep.join([base, *segments])
    escapes = _escapes(base, target)
    if len(segments) > 1 and segments[0] == "events" and "." in segments[-1]:
        return Reply(_read(target) or b"", None, escapes)
    index = os.path.join(base, "httpfiles", "index.html")
    path = target if segments else index
    body = _read(path)
    if body is None:
        path, body = index, _read(index)
        if body is None:
            return Reply(b"", None, escapes)
    name = os.path.basename(path)
    if name == "index.html":  # the real server substitutes in any index.html it serves
        text = body.decode("utf-8", "replace").replace(EVENT_PLACEHOLDER, f"events/{event_id}")
        body = text.encode("ascii", "replace")
    return Reply(body, CONTENT_TYPES.get(os.path.splitext(name)[1]), escapes)


def find_event_id(root: Path) -> str:
    """The event a web root serves: the one (or most recently written) ``events/<id>/Event.json``."""
    events = [p.parent for p in (root / "events").glob("*/Event.json")]
    if not events:
        raise ValueError(f"no events/<id>/Event.json under {root}")
    return max(events, key=lambda d: ((d / "Event.json").stat().st_mtime, d.name)).name


# One 64-byte array item; 1024 of them make a chunk, so chunks join seamlessly.
_FILLER_UNIT = b'  {"Filler": "%s"},\r\n' % (b"pitlink-sim-padding-" * 3)[:45]
_FILLER_BLOCK = _FILLER_UNIT * (HUGE_CHUNK_BYTES // len(_FILLER_UNIT))


def filler(size: int) -> Iterator[bytes]:
    """Exactly ``size`` bytes of JSON-looking padding, one 64 KiB chunk at a time."""
    block = b"[" + _FILLER_BLOCK[1:]
    while size > 0:
        piece = block[:size]
        yield piece
        size -= len(piece)
        block = _FILLER_BLOCK


class _AnyMethod(tuple[str, ...]):
    """A SUPPORTED_METHODS that admits every verb: HttpListener answers them all alike."""

    def __contains__(self, item: object) -> bool:
        return True


def _skip_body_parse() -> None:
    return None


class _Handler(tornado.web.RequestHandler):
    """Hands each request to the simulator's one-at-a-time turn, then writes its reply."""

    SUPPORTED_METHODS = _AnyMethod(("GET", "HEAD"))

    def initialize(self, sim: Simulator) -> None:
        self.sim = sim
        # The real server never rejects a body; Tornado would 400 a malformed form body.
        self.request._parse_body = _skip_body_parse  # type: ignore[method-assign]

    def set_default_headers(self) -> None:
        self.clear_header("Content-Type")  # event files carry none; typed replies set their own
        self.set_header("Server", SERVER_HEADER)

    def compute_etag(self) -> str | None:
        return None  # no ETag, hence never a 304

    async def prepare(self) -> None:
        method, raw_path = self.request.method or "GET", self.request.path
        async with self.sim.turn(method, raw_path):
            await self._send(method, raw_path, self.sim.reply(raw_path))

    async def _send(self, method: str, raw_path: str, reply: Reply) -> None:
        self.set_header("Server", self.sim.server)
        self.set_header("Access-Control-Allow-Origin", "*")
        if method == "OPTIONS":
            self.set_header(
                "Access-Control-Allow-Headers", "Content-Type, Accept, X-Requested-With"
            )
            self.set_header("Access-Control-Allow-Methods", "GET, POST")
            self.set_header("Access-Control-Max-Age", "1728000")
        if reply.content_type is not None:
            self.set_header("Content-Type", reply.content_type)
        size = self.sim.huge.get(raw_path)
        finishing = None
        try:
            if size is None:
                finishing = self.finish(reply.body)
            else:
                self.set_header("Content-Length", size)
                if method != "HEAD":
                    for chunk in filler(size):
                        self.write(chunk)
                        await self.flush()
                finishing = self.finish()
            await finishing
        except tornado.iostream.StreamClosedError:
            log.debug("client left before the reply to %s %s was sent", method, raw_path)
            if finishing is None:
                with contextlib.suppress(tornado.iostream.StreamClosedError):
                    await self.finish()


class CountingServer(tornado.httpserver.HTTPServer):
    """Tornado's HTTP server, counting the TCP connections it accepts."""

    def initialize(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        super().initialize(*args, **kwargs)
        self.accepted = 0
        self.streams: weakref.WeakSet[tornado.iostream.IOStream] = weakref.WeakSet()

    def handle_stream(self, stream: tornado.iostream.IOStream, address: tuple[Any, ...]) -> None:
        self.accepted += 1
        self.streams.add(stream)
        super().handle_stream(stream, address)
