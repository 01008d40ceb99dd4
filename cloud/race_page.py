"""`<pits base>/pitlink/race`: the live race page, and its script, from the relay itself.

The page is the relay's, not the pits': it takes its data from the pits' files and the feed
(`<pits base>/pitlink/live`) and writes all of it as text. It is served as strictly as the
pits' own content: a sandbox (an opaque origin, like every data answer), no inline script, and
nothing but its own script, its feed and its pits' files to talk to.
"""

from __future__ import annotations

from importlib import resources

from cloud.http_base import BaseHandler
from cloud.routing import RELAY_SPACE

STATIC = resources.files("cloud").joinpath("static")
PAGE = STATIC.joinpath("race.html").read_bytes()
SCRIPT = STATIC.joinpath("race.js").read_bytes()
POLICY = (
    "sandbox allow-scripts; default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; "
    "connect-src 'self'; img-src data:"
)
RACE_PAGE = RELAY_SPACE + r"/race(?:\.js)?"  # a route, after the pits' base


class RacePageHandler(BaseHandler):
    """The page (`.../pitlink/race`) or its script (`.../pitlink/race.js`)."""

    def get(self, *args: str) -> None:
        pits_id = self.relay_pits()
        if pits_id is None:
            return
        script = self.request.path.endswith(".js")
        self.set_header(
            "Content-Type",
            "text/javascript; charset=utf-8" if script else "text/html; charset=utf-8",
        )
        self.set_header("Cache-Control", "public, max-age=60")
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Content-Security-Policy", POLICY)
        self.finish(SCRIPT if script else PAGE)

    head = get
