"""Tornado handlers of the relay: each a few lines around the plain objects that hold the logic.

What every handler shares is cloud.http_base; the front page is cloud.front_page, bundle
downloads cloud.bundle_http, the fast path of a hit cloud.hitfirst. The routes (which handler
answers which host and path) are at the end.
"""

from __future__ import annotations

import logging
import math
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any

import jwt
import tornado.iostream
import tornado.web
import tornado.websocket
import ujson

from cloud import TokenError
from cloud.admin_http import admin_rules
from cloud.age_http import AgeHandler
from cloud.age_notice import AGE_PAGE, pits_base
from cloud.bundle_http import BundleDownloadHandler
from cloud.cache import Served
from cloud.config import CloudConfig
from cloud.control import PitsConnection, why_peer_closed
from cloud.front_page import FrontPageHandler
from cloud.hits import DATA_HEADERS, WRITE_CHUNK
from cloud.hosts import DNS_LABEL, HostRouting
from cloud.http_base import BaseHandler, RelayParts, bearer_token, log_request, verify_pits_token
from cloud.race_page import RACE_PAGE, RacePageHandler
from cloud.ratelimit import RateLimited
from wire import SUPPORTED_VERSIONS, CloseCode, ErrorCode, ProtocolError
from wire.canonical import etag_matches
from wire.errors import TokenRefusal
from wire.mediatypes import content_type_for_path
from wire.paths import check_method, encode_path, normalize_path

log = logging.getLogger("pitlink.cloud.http")


class DataHandler(BaseHandler):
    """`/pits/<pitsId>/<path>`, and `/events/**` and `/httpfiles/**` of the active pits."""

    SUPPORTED_METHODS = ("GET", "HEAD", "OPTIONS", "POST", "PUT", "DELETE", "PATCH")

    def set_default_headers(self) -> None:
        super().set_default_headers()
        for name, value in DATA_HEADERS.items():
            self.set_header(name, value)

    async def get(self) -> None:
        await self._serve(head=False)

    async def head(self) -> None:
        await self._serve(head=True)

    def options(self) -> None:
        self.set_header("Access-Control-Allow-Methods", "GET, HEAD, OPTIONS")
        self.set_header("Access-Control-Allow-Headers", "If-None-Match, Cache-Control")
        self.set_header("Access-Control-Max-Age", "86400")
        self.set_status(204)
        self.finish()

    def _refuse_method(self) -> None:
        self.set_header("Allow", "GET, HEAD, OPTIONS")
        self.write_json_error(ErrorCode.DENIED, "only GET and HEAD are served", 405)

    post = put = delete = patch = _refuse_method

    async def _serve(self, *, head: bool) -> None:
        with self.relay.drain.track():
            if self.relay.drain.draining:
                self.set_header("Connection", "close")
            await self._serve_counted(head=head)

    async def _serve_counted(self, *, head: bool) -> None:
        request_id = uuid.uuid4().hex
        self.set_header("X-Request-Id", request_id)
        ip = self.client_key()
        wait = await self.relay.client_limits.wait(ip)
        if wait:
            self.relay.metrics.rate_limited.labels("client").inc()
            self.write_json_error(
                ErrorCode.BUSY, "too many requests from this address", 429, retry_after=wait
            )
            return
        try:
            check_method(self.request.method or "")
            pits_id, path = self.relay.route(normalize_path(self.request.path), self.request.host)
            served = await self.relay.serving.get(pits_id, path, request_id=request_id, client=ip)
        except RateLimited as exc:
            self.write_json_error(exc.code, exc.message, 429, exc.retry_after)
            return
        except ProtocolError as exc:
            # The relay maps the code to a status itself (wire.errors.HTTP_STATUS).
            self.write_json_error(exc.code, exc.message)
            return
        if served.status == 200:
            age = max(0.0, self.relay.clock() - served.fetched_at)
            self.relay.box_age.stale.saw(
                pits_id, cache=served.cache, reason=served.stale_reason, age=age
            )
            notice = self.relay.age_notice
            if notice is not None:
                base = pits_base(pits_id, self.request.host, self.relay.router.hosts)
                served = notice.served(served, path, base)
        await self._write_served(served, path, head=head)

    async def _write_served(self, served: Served, path: str, *, head: bool) -> None:
        age = max(0.0, self.relay.clock() - served.fetched_at)
        self.set_status(served.status)
        self.set_header("Content-Type", content_type_for_path(path))
        self.set_header("X-Pitlink-Cache", served.cache)
        self.set_header("Age", str(int(age)))
        if served.etag:
            self.set_header("ETag", served.etag)
        if served.cache == "STALE":
            self.set_header("X-Pitlink-Stale", str(int(age)))
            self.set_header("Warning", '110 - "Response is Stale"')
            self.set_header("Cache-Control", "no-cache")
        elif served.status == 200:
            # Rounded up: with the default 1 s window a copy 0.2 s old is good for another
            # second, not 0 (which would keep a CDN in front from caching anything).
            self.set_header(
                "Cache-Control", f"public, max-age={max(0, math.ceil(served.ttl - age))}"
            )
        else:
            self.set_header("Cache-Control", "no-store")
        if served.etag and etag_matches(self.request.headers.get("If-None-Match"), served.etag):
            self.set_status(304)
            self.clear_header("Content-Type")
            self.finish()
            return
        if head:
            self.set_header("Content-Length", str(len(served.body)))
            self.finish()
            return
        rest = memoryview(served.body)
        if len(rest) > WRITE_CHUNK:
            self.set_header("Content-Length", str(len(rest)))
        try:
            while len(rest) > WRITE_CHUNK:
                self.write(bytes(rest[:WRITE_CHUNK]))
                rest = rest[WRITE_CHUNK:]
                await self.flush()
        except tornado.iostream.StreamClosedError:
            return  # gone, or cut off for taking nothing (BaseHandler.flush)
        self.finish(bytes(rest))


class PitsHostRedirect(BaseHandler):
    """`--pits-domain`, on the relay's own name (the admin's origin): a pits path is sent on to
    the pits' own host, with 308 (same method, and a CORS fetch follows it), never served here.
    Old links and dashboards keep working; no pits content shares the admin's origin."""

    SUPPORTED_METHODS = ("GET", "HEAD", "OPTIONS")

    def get(self) -> None:
        try:
            check_method(self.request.method or "")
            public = normalize_path(self.request.path)
            # The relay's own paths of a pits (its live feed) move with it.
            pits_id, path = self.relay.router.relay_path(public) or self.relay.route(public)
        except ProtocolError as exc:
            self.write_json_error(exc.code, exc.message)
            return
        address = self.relay.pits_url(pits_id, self.origin())
        if address is None:
            self.write_json_error(ErrorCode.DENIED, "this pits has no host name of its own", 404)
            return
        query = f"?{self.request.query}" if self.request.query else ""
        self.set_header("Cache-Control", "no-store")
        target = encode_path(path)[1:]
        self.redirect(f"{address}{target}{query}", status=308)

    head = get

    def options(self) -> None:
        self.set_header("Access-Control-Allow-Methods", "GET, HEAD, OPTIONS")
        self.set_header("Access-Control-Allow-Headers", "If-None-Match, Cache-Control")
        self.set_status(204)
        self.finish()


def unverified_claim(token: str) -> tuple[str | None, str | None]:
    """The pits id (`sub`) and key id a token claims, read without checking it, or None."""
    try:
        kid = jwt.get_unverified_header(token).get("kid")
        sub = jwt.decode(token, options={"verify_signature": False}).get("sub")
    except (jwt.PyJWTError, ValueError, TypeError, AttributeError):
        return None, None
    return (
        None if sub is None else str(sub),
        None if kid is None else str(kid),
    )


class ControlHandler(tornado.websocket.WebSocketHandler):
    """`/control`: the pits' WebSocket. The token is checked before the upgrade."""

    def initialize(self, relay: RelayParts) -> None:
        self.relay = relay
        self.conn: PitsConnection | None = None
        self.claims: dict[str, Any] = {}
        self.kid: str | None = None
        self.version_ok = True

    async def get(self, *args: Any, **kwargs: Any) -> None:
        if self.get_query_argument("role", "") != "pits":
            self._refuse(400, ErrorCode.BAD_REQUEST, "role=pits is required")
            return
        token = bearer_token(self.request.headers.get("Authorization"))
        if token is None:
            self._refuse(
                401, ErrorCode.UNAUTHORIZED, "a Bearer token is required", TokenRefusal.MALFORMED
            )
            return
        try:
            self.claims = verify_pits_token(self.relay, token)
            self.kid = jwt.get_unverified_header(token).get("kid")
        except TokenError as exc:
            self.relay.metrics.auth_failures.inc()
            self._refused_token(token, exc)
            self._refuse(401, ErrorCode.UNAUTHORIZED, str(exc), reason=exc.reason)
            return
        version = self.get_query_argument("version", "")
        self.version_ok = version.isdigit() and int(version) in SUPPORTED_VERSIONS
        await super().get(*args, **kwargs)

    def _refused_token(self, token: str, exc: TokenError) -> None:
        """Say which box was refused: the pits id its token claims (not verified: the token
        was refused) and its key id, in the log and on the admin page (cloud.offline)."""
        claimed, kid = unverified_claim(token)
        address = self.relay.clients.address(
            self.request.remote_ip or "", self.request.headers.get("X-Forwarded-For")
        )
        seen = self.relay.registry.refused.note(
            claimed=claimed, kid=kid, reason=str(exc.reason), address=address, now=time.time()
        )
        log.warning(
            "control connection refused",
            extra={
                "reason": str(exc.reason),
                "detail": str(exc),
                "claimedPitsId": seen.claimed_pits_id,
                "verified": False,
                "kid": seen.kid,
                "client": seen.address,
                "count": seen.count,
            },
        )

    def _refuse(
        self, status: int, code: ErrorCode, message: str, reason: str | None = None
    ) -> None:
        """Refuse before the upgrade; a refused token says why (`reason`, for the box)."""
        self.set_status(status)
        self.set_header("Content-Type", "application/json; charset=utf-8")
        if status == 401:
            self.set_header("WWW-Authenticate", 'Bearer realm="pitlink"')
        error = {"code": str(code), "message": message}
        if reason is not None:
            error["reason"] = reason
        self.finish(ujson.dumps({"error": error}))

    def check_origin(self, origin: str) -> bool:
        return True  # pits agents are not browsers; the token is the credential

    def get_compression_options(self) -> dict[str, Any]:
        return {}

    def open(self, *args: str, **kwargs: str) -> None:
        self.set_nodelay(True)
        self.conn = self.relay.new_connection(self.claims, self, kid=self.kid)
        if not self.version_ok:
            versions = ", ".join(str(v) for v in sorted(SUPPORTED_VERSIONS))
            self.conn.close(CloseCode.VERSION_REFUSED, f"relay speaks protocol {versions}")
            return
        self.conn.start()

    def on_message(self, message: str | bytes) -> None:
        if self.conn is not None:
            self.conn.on_text(message)

    def on_close(self) -> None:
        if self.conn is not None:
            self.conn.closed(why_peer_closed(self.close_code, self.close_reason))

    # The transport a PitsConnection talks through.
    def send(self, text: str) -> None:
        try:
            self.write_message(text)
        except tornado.websocket.WebSocketClosedError:
            pass

    def close(self, code: int | None = None, reason: str | None = None) -> None:
        if reason is not None:
            reason = reason.encode("utf-8")[:120].decode("utf-8", "ignore")
        super().close(code, reason)


class HealthHandler(BaseHandler):
    def get(self) -> None:
        self.set_header("Cache-Control", "no-store")
        self.finish({"status": "ok", "connections": len(self.relay.registry.live())})


class ReadyHandler(BaseHandler):
    """503 while draining or a pits queue is over the threshold: a balancer sends traffic elsewhere."""

    def get(self) -> None:
        detail = self.relay.readiness()
        self.set_header("Cache-Control", "no-store")
        self.set_status(200 if detail["ready"] else 503)
        self.finish(detail)


class Generate204Handler(BaseHandler):
    """The appliance's connectivity probe: an empty 204 means the Internet is really there."""

    def get(self) -> None:
        self.set_header("Cache-Control", "no-store")
        self.set_status(204)
        self.finish()

    head = get


class MetricsHandler(BaseHandler):
    def get(self) -> None:
        self.set_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.finish(self.relay.metrics.render())


class NoSuchPitsHandler(BaseHandler):
    """`--pits-domain`: a name under the domain that can be no pits' (`a.b.<domain>`,
    `under_score.<domain>`). A 404 that says so, never the relay's own routes (which serve the
    active pits) under a name that is not theirs."""

    SUPPORTED_METHODS = ("GET", "HEAD", "OPTIONS", "POST", "PUT", "DELETE", "PATCH")

    def prepare(self) -> None:
        name = self.request.host_name[:100]
        self.write_json_error(
            ErrorCode.DENIED,
            f"no pits is served at {name}: a pits' own address is <pits id>.<domain>, "
            "one label before the relay's domain",
            404,
        )


class NotFound(DataHandler):
    """Anything unrouted: a JSON 404, with CORS like every other answer."""

    async def _serve(self, *, head: bool) -> None:
        self.write_json_error(ErrorCode.DENIED, "no such endpoint", 404)


@dataclass(frozen=True)
class Layout:
    """What decides the routes: the relay (handed to every handler) and its settings."""

    relay: RelayParts
    config: CloudConfig
    hosts: HostRouting | None
    pits_moved: bool  # --pits-domain: pits paths on the relay's own name go to the pits' host


def public_application(layout: Layout) -> tornado.web.Application:
    """The public application; the admin's routes too unless they have an origin of their own.

    Pits content is served under the relay's name, so a page from a pits shares the relay's
    origin. `--admin-host` or `--admin-port` give the admin page and API another origin, where
    no pits content is ever served; `--pits-domain` gives each pits a host of its own.
    """
    config = layout.config
    args: dict[str, Any] = {"relay": layout.relay}
    public: list[Any] = [
        (r"/control", ControlHandler, args),
        (r"/pits-api/bundles/([0-9a-f]{16})", BundleDownloadHandler, args),
        (r"/pits/[^/]+" + RACE_PAGE, RacePageHandler, args),
        (r"/pits/[^/]+" + AGE_PAGE, AgeHandler, args),
        (r"/pits/.*", DataHandler, args),
        (r"/(?:events|httpfiles)(?:/.*)?", DataHandler, args),
        (r"/healthz", HealthHandler, args),
        (r"/readyz", ReadyHandler, args),
        (r"/generate_204", Generate204Handler, args),
        (r"/metrics", MetricsHandler, args),
        (r"/", FrontPageHandler, args),
    ]
    own_origin = any(
        x is not None for x in (config.admin_host, config.admin_port, config.pits_domain)
    )
    app = _application(layout, public if own_origin else public + admin_rules(args))
    if config.admin_host is not None and config.admin_port is None:
        _admin_on_host(layout, app)
    if layout.hosts is not None:
        catch_all = (r".*", NotFound, args)
        domain = re.escape(layout.hosts.pits_domain)
        app.add_handlers(
            DNS_LABEL.pattern + r"\." + domain,
            [
                (RACE_PAGE, RacePageHandler, args),
                (AGE_PAGE, AgeHandler, args),
                (r"/(?:events|httpfiles)(?:/.*)?", DataHandler, args),
                (r"/[^/]*/?", DataHandler, args),  # the page, and where pushState left it
                catch_all,
            ],
        )
        # Any other name under the domain is no pits': never the relay's own routes.
        app.add_handlers(r".+\." + domain, [(r".*", NoSuchPitsHandler, args)])
        if layout.pits_moved:
            moved = [
                (r"/pits/.*", PitsHostRedirect, args),
                (r"/(?:events|httpfiles)(?:/.*)?", PitsHostRedirect, args),
            ]
            own = [
                rule for rule in public if rule[1] not in (DataHandler, RacePageHandler, AgeHandler)
            ]
            app.add_handlers(domain, [*moved, *own, *admin_rules(args), catch_all])
    return app


def admin_application(layout: Layout) -> tornado.web.Application:
    """The admin listener's application (`--admin-port`): the admin's routes and nothing else."""
    if layout.config.admin_host is not None:
        app = _application(layout, [])
        _admin_on_host(layout, app)
        return app
    return _application(layout, admin_rules({"relay": layout.relay}))


def _application(layout: Layout, rules: list[Any]) -> tornado.web.Application:
    return tornado.web.Application(
        rules,
        # A frame carries a base64 body (4/3 of its size) plus the envelope.
        websocket_max_message_size=layout.config.max_body_bytes * 4 // 3 + 64 * 1024,
        default_handler_class=NotFound,
        default_handler_args={"relay": layout.relay},
        log_function=log_request,
    )


def _admin_on_host(layout: Layout, app: tornado.web.Application) -> None:
    """The admin's routes on `--admin-host` only; every other path there is a 404."""
    assert layout.config.admin_host is not None
    args: dict[str, Any] = {"relay": layout.relay}
    catch_all = (r".*", NotFound, args)
    app.add_handlers(re.escape(layout.config.admin_host), [*admin_rules(args), catch_all])
