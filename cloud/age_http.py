"""`<pits base>/pitlink/age` and `<pits base>/pitlink/age.js`: the relay's age notice.

The script is the one the relay adds to a pits' HTML pages (cloud.age_notice); the state is
what it asks (cloud.age_state.BoxAge). Both are the relay's own, in the pits' `/pitlink/`
space, so they are on the page's own host with or without `--pits-domain`.
"""

from __future__ import annotations

from importlib import resources

from cloud.http_base import BaseHandler

SCRIPT = resources.files("cloud").joinpath("static", "age.js").read_bytes()


class AgeHandler(BaseHandler):
    """The box's state as JSON (`.../pitlink/age`), or the script (`.../pitlink/age.js`)."""

    def get(self, *args: str) -> None:
        pits_id = self.relay_pits()
        if pits_id is None:
            return
        self.set_header("X-Content-Type-Options", "nosniff")
        if self.request.path.endswith(".js"):
            self.set_header("Content-Type", "text/javascript; charset=utf-8")
            self.set_header("Cache-Control", "public, max-age=60")
            self.finish(SCRIPT)
            return
        self.set_header("Cache-Control", "no-store")
        self.finish(self.relay.box_age.describe(pits_id))

    head = get
