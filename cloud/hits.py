"""The fast path of a cache hit: a fresh entry's response prepared once, answered without a handler.

Most public requests ask for a path the relay already holds fresh. For those, a Tornado
RequestHandler (its setup, routing, default headers, the access line at INFO, a uuid4) costs
more than the answer. `Hits.answer` decides from the request line and headers alone whether a
request is such a hit and, if it is, gives the status, headers and body to write; anything else
(a miss, a stale copy, an error, a limit, a request with a body, the admin's host, a replica
leaving) returns None and goes to the application as before, so every rule is still decided in
one place. The headers are exactly those the handler writes for a hit (tests compare both).

Per entry, not per request: the content type, the ETag and the constant headers, and for a
page the body with the relay's age notice (cloud.age_notice) and its own ETag. Per request:
`Age`, `Cache-Control` (both follow the entry's age), `Date` (per second) and `X-Request-Id`
(a per-process random prefix and a counter: unique, the same 32 hex digits as before, with no
call for random bytes per request). Hits are counted in `pitlink_cache_hits_total`, not logged:
the audit line is per fetch from a pits.
"""

from __future__ import annotations

import email.utils
import itertools
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from cloud.age_notice import AgeNotice, pits_base
from cloud.cache import Entry
from cloud.clients import Clients
from cloud.drain import Drain
from cloud.hosts import HostRouting, host_name
from cloud.metrics import Metrics
from cloud.ratelimit import SharedLimiter
from cloud.relay import Relay
from wire import ProtocolError
from wire.canonical import etag_matches
from wire.mediatypes import content_type_for_path
from wire.paths import normalize_path

EXPOSED = "ETag, Age, X-Pitlink-Cache, X-Pitlink-Stale, Warning, X-Request-Id"
# Pits content is served under the relay's name: it may never be sniffed into something else,
# and it runs in an opaque origin that can read nothing of the relay's (the admin's token, its
# cookies). Scripts still run, so FPVTrackside's own page works; its requests are cross-origin
# and every answer here allows any origin.
DATA_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "sandbox allow-scripts",
}
CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Expose-Headers": EXPOSED,
}
# The public paths the application serves from the cache (its DataHandler's routes).
DATA_PATH = re.compile(r"/pits/|/(?:events|httpfiles)(?:/|$)")
# ... and on a pits' own host (`--pits-domain`): the page, and FPVTrackside's own paths.
PITS_HOST_PATH = re.compile(r"/(?:events|httpfiles)(?:/|$)|/[^/]*/?$")
# Bodies on a GET are refused by nobody, but a request that has one goes the long way.
BODY_HEADERS = ("Content-Length", "Transfer-Encoding")

# Raw paths whose normalized form is remembered, at most (then forgotten all at once), and
# the longest remembered: a request line may be 16 KiB, and 4,096 of those would be 64 MiB.
MAX_PATHS = 4096
MAX_REMEMBERED_LENGTH = 512
# A body larger than this is written in pieces of this size, each with its own deadline (the
# application's handler does it), so that a slow phone is never cut off for a body it is still
# taking; the fast path writes only bodies up to it, in one piece.
WRITE_CHUNK = 256 * 1024
# What a relay may put in a header line it writes itself: an ETag is one the relay computed.
ETAG = re.compile(r'"sha256:[0-9a-f]{64}"')


class RequestIds:
    """Request ids as 32 hex digits: a random prefix per process and a counter."""

    def __init__(self) -> None:
        self._prefix = os.urandom(8).hex()
        self._count = itertools.count()

    def next(self) -> str:
        return f"{self._prefix}{next(self._count) & 0xFFFF_FFFF_FFFF_FFFF:016x}"


@dataclass(frozen=True)
class Hit:
    """A whole response to write: status line, headers, blank line and body (if any)."""

    status: int
    data: bytes


@dataclass(frozen=True)
class Prepared:
    """The part of a hit's response that is the same for every request of one entry."""

    etag: str  # of the entry it was made for: the same ETag, the same bytes and headers
    body: bytes  # the entry's, or with the age notice (cloud.age_notice)
    served_etag: str  # the ETag answered: the entry's, or the changed body's
    ok: bytes  # status line and the constant headers of a 200
    not_modified: bytes  # the same for a 304: no Content-Type, no Content-Length


def _lines(headers: list[tuple[str, str]]) -> bytes:
    return "".join(f"{name}: {value}\r\n" for name, value in headers).encode("latin-1")


class _Dates:
    """The `Date` header, formatted once a second."""

    def __init__(self, wall: Callable[[], float]):
        self.wall = wall
        self._second = -1
        self._text = ""

    def now(self) -> str:
        second = int(self.wall())
        if second != self._second:
            self._second = second
            self._text = email.utils.formatdate(second, usegmt=True)
        return self._text


class Hits:
    """Answers fresh cache hits; None for everything the application must decide."""

    def __init__(
        self,
        *,
        serving: Relay,
        route: Callable[[str, str | None], tuple[str, str]],
        drain: Drain,
        client_limits: SharedLimiter,
        clients: Clients,
        metrics: Metrics,
        server: str,
        admin_host: str | None = None,
        hosts: HostRouting | None = None,
        pits_moved: bool = False,
        notice: AgeNotice | None = None,
        wall: Callable[[], float],
        max_prepared: int = 10_000,
    ):
        self.serving = serving
        self.route = route
        self.drain = drain
        self.client_limits = client_limits
        self.clients = clients
        self.metrics = metrics
        self.server = server
        self.admin_host = admin_host
        self.hosts = hosts
        self.pits_moved = pits_moved  # the relay's own name sends pits paths on (cloud.app)
        self.notice = notice  # adds the age notice to HTML pages (None: --no-age-notice)
        self.max_prepared = max_prepared
        self.ids = RequestIds()
        self._dates = _Dates(wall)
        self._prepared: dict[tuple[str, str, str], Prepared] = {}
        self._paths: dict[str, str] = {}

    def answer(
        self, method: str, uri: str, version: str, headers: Mapping[str, str], remote_ip: str
    ) -> Hit | None:
        """The response to a fresh hit, or None: the application answers the request."""
        if (method != "GET" and method != "HEAD") or version != "HTTP/1.1":
            return None
        raw_path = uri.partition("?")[0]
        if self.drain.draining or any(name in headers for name in BODY_HEADERS):
            return None
        host = headers.get("Host")
        if self.hosts is not None and self.hosts.pits_of(host) is not None:
            if not PITS_HOST_PATH.match(raw_path):
                return None
        elif not DATA_PATH.match(raw_path):
            return None
        elif self.admin_host is not None and host_name(host) == self.admin_host:
            # The application serves only the admin there (a host rule of its own).
            return None
        elif self.pits_moved and self.hosts is not None and self.hosts.is_relay_host(host):
            return None  # sent on to the pits' own host, by the application
        try:
            pits_id, path = self.route(self._normalized(raw_path), host)
        except ProtocolError:
            return None
        found = self.serving.fresh(pits_id, path)
        if found is None:
            return None
        entry, ttl, now = found
        if len(entry.body) > WRITE_CHUNK:
            return None  # written in pieces, each with its deadline, by the application
        # A page gets the age notice, which names the pits' base as this host sees it.
        notice = self.notice is not None and self.notice.applies(path)
        base = pits_base(pits_id, host, self.hosts) if notice else ""
        prepared = self._prepare(pits_id, path, entry, base)
        if prepared is None or len(prepared.body) > WRITE_CHUNK:
            return None
        ip = self.clients.key(remote_ip, headers.get("X-Forwarded-For"))
        if self.client_limits.check_here(ip) != 0.0:
            return None  # refused, or Redis must be asked: the application does it
        self.metrics.cache_hits.inc()
        age = max(0.0, now - entry.fetched_at)
        close = "Connection: close\r\n" if headers.get("Connection", "").lower() == "close" else ""
        middle = (
            f"Date: {self._dates.now()}\r\n"
            f"X-Request-Id: {self.ids.next()}\r\n"
            f"Age: {int(age)}\r\n"
            f"Cache-Control: public, max-age={max(0, math.ceil(ttl - age))}\r\n"
            f"{close}\r\n"
        ).encode("latin-1")
        if etag_matches(headers.get("If-None-Match"), prepared.served_etag):
            return Hit(304, prepared.not_modified + middle)
        if method == "HEAD":
            return Hit(200, prepared.ok + middle)
        return Hit(200, b"".join((prepared.ok, middle, prepared.body)))

    def _normalized(self, raw_path: str) -> str:
        """normalize_path, remembered for the paths seen (it is a pure function of the path)."""
        path = self._paths.get(raw_path)
        if path is None:
            path = normalize_path(raw_path)  # raises for a malformed one: not remembered
            if len(raw_path) <= MAX_REMEMBERED_LENGTH:
                if len(self._paths) >= MAX_PATHS:
                    self._paths.clear()
                self._paths[raw_path] = path
        return path

    def _prepare(self, pits_id: str, path: str, entry: Entry, base: str) -> Prepared | None:
        """`base`: the pits' base for the age notice of a page, else empty (no notice)."""
        key = (pits_id, path, base)
        prepared = self._prepared.get(key)
        if prepared is not None and prepared.etag == entry.etag:
            return prepared
        if not ETAG.fullmatch(entry.etag):
            return None  # (never so: the relay computes them) the application's checks apply
        if len(self._prepared) >= self.max_prepared:
            self._prepared.clear()  # entries evicted from the cache leave theirs here
        body, etag = entry.body, entry.etag
        marked = None if not base or self.notice is None else self.notice.mark(body, base)
        if marked is not None:
            body, etag = marked
        common = [("Server", self.server), *CORS_HEADERS.items(), *DATA_HEADERS.items()]
        # "Etag": the spelling Tornado's headers give the handler's answer (names are
        # case-insensitive, but the two paths send the same bytes).
        described = [("X-Pitlink-Cache", "HIT"), ("Etag", etag)]
        prepared = self._prepared[key] = Prepared(
            etag=entry.etag,
            body=body,
            served_etag=etag,
            ok=b"HTTP/1.1 200 OK\r\n"
            + _lines(
                [
                    *common,
                    ("Content-Type", content_type_for_path(path)),
                    *described,
                    ("Content-Length", str(len(body))),
                ]
            ),
            not_modified=b"HTTP/1.1 304 Not Modified\r\n" + _lines([*common, *described]),
        )
        return prepared
