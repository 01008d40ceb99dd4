"""The relay's age notice on a pits' HTML pages: one script tag of its own, added to each page.

FPVTrackside's page writes the browser's clock after each fetch ("Updated 14:32:10"), so a page
served from the relay's cache with the box gone would go on looking live. The relay adds one
tag, `<script src="<pits base>/pitlink/age.js" defer></script>`, before the page's last
`</body>` (at the end when there is none). That script is the relay's own (cloud/static/age.js):
it asks the relay how the box stands (`<pits base>/pitlink/age`, cloud.age_state) and shows a
bar across the top of the page when the box is offline or the relay serves old copies.

Only 200 answers of paths served as HTML are touched, and only up to `max_bytes`: a bigger page
passes unchanged, as does everything else (JSON, scripts, images) byte for byte. The changed
body has an ETag of its own, the hash of the changed body as for every body the relay serves,
so a conditional request works and the pits' ETag is never given for a body it does not
describe.

A courtesy for honest pages: the page is the pits' own and runs in the same document, so it can
hide or imitate the bar. The response headers (`Age`, `X-Pitlink-Stale`) are the authority.
"""

from __future__ import annotations

import dataclasses
import re

from cloud.cache import Served
from cloud.hosts import HostRouting
from cloud.routing import RELAY_SPACE
from wire.canonical import etag_of
from wire.mediatypes import HTML, content_type_for_path

AGE_PAGE = RELAY_SPACE + r"/age(?:\.js)?"  # a route, after the pits' base: the state, the script
MAX_PAGE_BYTES = 1024 * 1024  # pages larger than this pass unchanged (the default setting)
BODY_END = b"</body"
# What a base may be, written into the page as it is: the relay's paths of a pits id.
BASE = re.compile(r"/(?:pits/[A-Za-z0-9][A-Za-z0-9._-]{0,63}/)?")


def pits_base(pits_id: str, host: str | None, hosts: HostRouting | None) -> str:
    """Where a pits' files start as the browser sees them: `/` on the pits' own host
    (`--pits-domain`), else `/pits/<id>/` (also for the active pits' files at the root)."""
    if hosts is not None and hosts.pits_of(host) == pits_id:
        return "/"
    return f"/pits/{pits_id}/"


class AgeNotice:
    """Adds the age notice's tag to a pits' HTML page, and gives the changed body its ETag."""

    def __init__(self, *, max_bytes: int = MAX_PAGE_BYTES):
        self.max_bytes = max_bytes

    @staticmethod
    def applies(path: str) -> bool:
        """A path the relay serves as HTML (the relay decides content types, never the pits)."""
        return content_type_for_path(path) == HTML

    @staticmethod
    def tag(base: str) -> bytes:
        """The tag added: the relay's script, on the page's own origin. `base` is the relay's
        (a pits id is letters, digits, `.`, `_` and `-`), never anything from the page."""
        return f'<script src="{base}pitlink/age.js" defer></script>'.encode("ascii")

    def mark(self, body: bytes, base: str) -> tuple[bytes, str] | None:
        """(the page with the tag, its ETag), or None for a page left as it is (too large, or a
        base that is not one of the relay's paths: nothing else is written into a page)."""
        if len(body) > self.max_bytes or not BASE.fullmatch(base):
            return None
        tag = self.tag(base)
        # The last `</body` (as HTML reads it, in any case): one inside a script or a comment
        # earlier on does not matter; a page without one gets the tag at its end.
        at = body.lower().rfind(BODY_END)
        marked = body + tag if at < 0 else b"".join((body[:at], tag, body[at:]))
        # As every ETag the relay gives: the body's own hash (the same on every replica, never
        # the pits' own, which describes another body).
        return marked, etag_of(marked)

    def served(self, served: Served, path: str, base: str) -> Served:
        """`served` with the notice when it is a page the notice is for, else as it is."""
        if served.status != 200 or served.etag is None or not self.applies(path):
            return served
        marked = self.mark(served.body, base)
        if marked is None:
            return served
        body, etag = marked
        return dataclasses.replace(served, body=body, etag=etag)
