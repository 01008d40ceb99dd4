"""Tornado handlers of the relay: each a few lines around the plain objects that hold the logic."""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Callable
from typing import Any, Protocol

import jwt
import tornado.httputil
import tornado.web
import tornado.websocket
import ujson
from tornado.escape import url_escape, xhtml_escape

from cloud import TokenError
from cloud.admin import Admin
from cloud.cache import Cache, Served
from cloud.control import PitsConnection, Transport
from cloud.drain import Drain
from cloud.hits import DATA_HEADERS, EXPOSED, Hit, Hits
from cloud.metrics import Metrics
from cloud.ratelimit import Network, RateLimited, SharedLimiter, client_ip
from cloud.registry import Registry
from cloud.relay import Relay
from wire import SUPPORTED_VERSIONS, CloseCode, ErrorCode, ProtocolError
from wire.canonical import etag_matches
from wire.errors import HTTP_STATUS, TokenRefusal
from wire.errors import retry_after as clamp_retry_after
from wire.event import event_id_from_page
from wire.mediatypes import content_type_for_path
from wire.paths import check_method, encode_path, normalize_path

# Bundle downloads are logged with the bundle folder's other lines.
bundle_log = logging.getLogger("pitlink.cloud.bundles")


class RelayParts(Protocol):
    """What the handlers use of the relay (cloud.app.CloudRelay is one): nothing else."""

    metrics: Metrics
    drain: Drain
    client_limits: SharedLimiter
    trusted_proxies: tuple[Network, ...]
    serving: Relay
    registry: Registry[PitsConnection]
    cache: Cache
    admin: Admin
    clock: Callable[[], float]

    def route(self, path: str, host: str | None = None) -> tuple[str, str]: ...

    def pits_address(self, pits_id: str, request_host: str | None) -> str | None: ...

    def verify_token(self, token: str, *, role: str | None) -> dict[str, Any]: ...

    def new_connection(
        self, claims: dict[str, Any], transport: Transport, *, kid: str | None = None
    ) -> PitsConnection: ...

    def readiness(self) -> dict[str, Any]: ...

    def active_pits_id(self) -> str | None: ...


def bearer_token(header: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, or None."""
    scheme, _, token = (header or "").partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def verify_pits_token(relay: RelayParts, token: str) -> dict[str, Any]:
    """A box's token checked as a box's: signature, key, expiry, revocation and role `pits`.

    /control checks a box's connection with it and /pits-api/bundles its downloads, so that a
    token refused on one is refused on the other. Raises TokenError.
    """
    return relay.verify_token(token, role="pits")


log = logging.getLogger("pitlink.cloud.http")

RETRY_AFTER = {ErrorCode.BUSY: 1, ErrorCode.UNAVAILABLE: 5}


access_log = logging.getLogger("tornado.access")
HEALTH_PATHS = frozenset({"/healthz", "/readyz"})


def log_request(handler: tornado.web.RequestHandler) -> None:
    """Tornado's access line, except that a health check's 503 is an answer, not an error.

    A balancer asks /readyz every few seconds; "not ready" while draining is the point of it.
    """
    status = handler.get_status()
    request = handler.request
    if status < 400 or request.path in HEALTH_PATHS:
        level = logging.INFO
    elif status < 500:
        level = logging.WARNING
    else:
        level = logging.ERROR
    access_log.log(
        level,
        "%d %s %s %.2fms",
        status,
        request.method,
        request.path[:200],
        1000.0 * request.request_time(),
    )


class BaseHandler(tornado.web.RequestHandler):
    """CORS on everything, JSON error bodies, no framework ETags (ours come from the pits)."""

    def initialize(self, relay: RelayParts) -> None:
        self.relay = relay

    def set_default_headers(self) -> None:
        self.set_header("Access-Control-Allow-Origin", "*")
        self.set_header("Access-Control-Expose-Headers", EXPOSED)

    def compute_etag(self) -> None:
        return None

    def write_json_error(
        self,
        code: ErrorCode,
        message: str,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.set_status(status or HTTP_STATUS[code])
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        wait = clamp_retry_after(retry_after, RETRY_AFTER.get(code))
        if wait is not None:
            self.set_header("Retry-After", str(wait))
        self.relay.metrics.errors.labels(str(code)).inc()
        self.finish(ujson.dumps({"error": {"code": str(code), "message": message}}))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        code = {404: ErrorCode.DENIED, 405: ErrorCode.DENIED}.get(status_code, ErrorCode.INTERNAL)
        if status_code == 405:
            self.set_header("Allow", "GET, HEAD, OPTIONS")
        message = self._reason if status_code != 500 else "internal error"
        self.clear_header("Retry-After")
        self.write_json_error(code, message, status_code)


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
        ip = client_ip(
            self.request.remote_ip or "",
            self.request.headers.get("X-Forwarded-For"),
            self.relay.trusted_proxies,
        )
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
        self._write_served(served, path, head=head)

    def _write_served(self, served: Served, path: str, *, head: bool) -> None:
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
        else:
            self.finish(served.body)


class PitsHostRedirect(BaseHandler):
    """`--pits-domain`, on the relay's own name (the admin's origin): a pits path is sent on to
    the pits' own host, with 308 (same method, and a CORS fetch follows it), never served here.
    Old links and dashboards keep working; no pits content shares the admin's origin."""

    SUPPORTED_METHODS = ("GET", "HEAD", "OPTIONS")

    def get(self) -> None:
        try:
            check_method(self.request.method or "")
            pits_id, path = self.relay.route(normalize_path(self.request.path))
        except ProtocolError as exc:
            self.write_json_error(exc.code, exc.message)
            return
        address = self.relay.pits_address(pits_id, self.request.host)
        if address is None:
            self.write_json_error(ErrorCode.DENIED, "this pits has no host name of its own", 404)
            return
        query = f"?{self.request.query}" if self.request.query else ""
        self.set_header("Cache-Control", "no-store")
        target = encode_path(path)[1:]
        self.redirect(f"{self.request.protocol}:{address}{target}{query}", status=308)

    head = get

    def options(self) -> None:
        self.set_header("Access-Control-Allow-Methods", "GET, HEAD, OPTIONS")
        self.set_header("Access-Control-Allow-Headers", "If-None-Match, Cache-Control")
        self.set_status(204)
        self.finish()


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
            log.warning(
                "control connection refused", extra={"reason": str(exc.reason), "detail": str(exc)}
            )
            self._refuse(401, ErrorCode.UNAUTHORIZED, str(exc), reason=exc.reason)
            return
        version = self.get_query_argument("version", "")
        self.version_ok = version.isdigit() and int(version) in SUPPORTED_VERSIONS
        await super().get(*args, **kwargs)

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
            self.conn.closed()

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


class IndexHandler(BaseHandler):
    """What a visitor finds at `/`: the connected pits, their pages and data, and how to use them."""

    def get(self) -> None:
        active = self.relay.active_pits_id()
        rows = "".join(
            self._row(conn.pits_id, conn.connected_since_wall, conn.pits_id == active)
            for conn in sorted(self.relay.registry.live(), key=lambda c: c.pits_id)
        )
        base = xhtml_escape(f"{self.request.protocol}://{self.request.host}")
        # With --pits-domain, each pits' own name: "//x.<domain>[:port]/" with the label shown.
        own = self.relay.pits_address("x", self.request.host)
        where = (
            f"<code>{self.request.protocol}://&lt;pits id&gt;{xhtml_escape(own[3:])}</code>"
            if own is not None
            else f"<code>{base}/pits/&lt;pits id&gt;/</code>"
        )
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        self.set_header("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'")
        self.finish(
            "<!doctype html><html lang=en><meta charset=utf-8>"
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            "<title>Pitlink relay</title>"
            "<style>body{font:16px/1.45 system-ui,sans-serif;max-width:46em;margin:1em auto;"
            "padding:0 1em}code{background:#f3f3f3;padding:0 .2em}li{margin:.5em 0}</style>"
            "<h1>Pitlink relay</h1>"
            "<p>Live FPV race data from the pits, as FPVTrackside serves it at the race.</p>"
            "<h2>Connected pits</h2>"
            f"<ul id=pits>{rows or '<li>None yet: a box appears here once it connects.</li>'}</ul>"
            "<h2>Dashboards and overlays</h2>"
            "<p>Give a dashboard or a stream overlay the address "
            f"{where} where it would take FPVTrackside's "
            "address: every path FPVTrackside serves is there, "
            "<code>events/&lt;event id&gt;/Race.json</code> and the rest, refreshed about "
            "every second.</p>"
        )

    def _row(self, pits_id: str, since: float, active: bool) -> str:
        quoted = url_escape(pits_id, plus=False)
        name = xhtml_escape(pits_id)
        # Its own host with --pits-domain (its page works there unchanged), else its path.
        own = self.relay.pits_address(pits_id, self.request.host)
        root = xhtml_escape(own) if own is not None else f"/pits/{quoted}/"
        links = [f'<a href="{root}">race page</a>']
        event = self._event_of(pits_id)
        if event is not None:
            links += [
                f'<a href="{root}events/{event}/{file}">{file}</a>'
                for file in ("Event.json", "Pilots.json", "Rounds.json", "Results.json")
            ]
        links.append(f'<a href="{root}httpfiles/Channels.json">Channels.json</a>')
        if own is not None:
            links.append(f"<code>{xhtml_escape(own.removeprefix('//'))}</code>")
        note = (
            " (active: also at <code>/events/…</code>, <code>/httpfiles/…</code>)" if active else ""
        )
        minutes = max(0, int(time.time() - since) // 60)
        return (
            f"<li data-pits={quoted}><strong>{name}</strong>{note}, connected {minutes} min: "
            + " · ".join(links)
            + "</li>"
        )

    def _event_of(self, pits_id: str) -> str | None:
        """The event the pits has open, read from its page if the relay holds a copy."""
        entry = self.relay.cache.get((pits_id, "GET", "/"))
        return event_id_from_page(entry.body) if entry is not None else None


class BundleDownloadHandler(BaseHandler, tornado.web.StaticFileHandler):
    """One bundle to the box it is offered to; one download at a time per box."""

    def initialize(self, relay: RelayParts) -> None:  # type: ignore[override]
        BaseHandler.initialize(self, relay)
        store = relay.admin.updates.store
        root = "/nonexistent" if store is None else str(store.root)
        tornado.web.StaticFileHandler.initialize(self, path=root)
        self.sha256 = ""

    def set_default_headers(self) -> None:
        self.set_header("Cache-Control", "private, no-store, no-transform")
        self.set_header("X-Content-Type-Options", "nosniff")

    async def get(self, bundle_id: str, include_body: bool = True) -> None:
        updates = self.relay.admin.updates
        if updates.store is None:
            self._refused("refused", ErrorCode.DENIED, "updates are off on this relay", 404)
            return
        token = bearer_token(self.request.headers.get("Authorization"))
        if token is None:
            self.set_header("WWW-Authenticate", 'Bearer realm="pitlink"')
            self._refused("refused", ErrorCode.UNAUTHORIZED, "a Bearer token is required", 401)
            return
        try:
            claims = verify_pits_token(self.relay, token)
        except TokenError as exc:
            self.set_header("WWW-Authenticate", 'Bearer realm="pitlink"')
            self._refused("refused", ErrorCode.UNAUTHORIZED, str(exc), 401)
            return
        pits_id = str(claims["sub"])
        bundle = updates.store.offered_to(pits_id)
        if bundle is None or bundle.id != bundle_id:
            self._refused(
                "refused", ErrorCode.DENIED, f"bundle {bundle_id} is not offered to {pits_id}", 403
            )
            return
        if pits_id in updates.downloading:
            self._refused(
                "busy", ErrorCode.BUSY, f"{pits_id} is downloading already", 429, retry_after=5
            )
            return
        self.sha256 = bundle.sha256
        updates.downloading.add(pits_id)
        try:
            await super().get(f"{bundle.id}.raucb", include_body)
        finally:
            updates.downloading.discard(pits_id)
        status = self.get_status()
        if status == 416:
            self.set_header("Content-Type", "application/json; charset=utf-8")
            self.write(_error(ErrorCode.BAD_REQUEST, "the range is not within the bundle"))
        outcome = {200: "ok", 206: "partial", 304: "ok"}.get(status, "refused")
        self.relay.metrics.bundle_downloads.labels(outcome).inc()
        bundle_log.info(
            "bundle download",
            extra={
                "pits_id": pits_id,
                "bundle": bundle.id,
                "status": status,
                "head": not include_body,
            },
        )

    def _refused(
        self,
        outcome: str,
        code: ErrorCode,
        message: str,
        status: int,
        retry_after: float | None = None,
    ) -> None:
        self.relay.metrics.bundle_downloads.labels(outcome).inc()
        self.write_json_error(code, message, status, retry_after)

    def compute_etag(self) -> str | None:  # type: ignore[override]
        return f'"sha256:{self.sha256}"' if self.sha256 else None

    def get_content_type(self) -> str:
        return "application/octet-stream"

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        BaseHandler.write_error(self, status_code, **kwargs)


def _error(code: ErrorCode, message: str) -> str:
    return ujson.dumps({"error": {"code": str(code), "message": message}})


class HitFirst(tornado.httputil.HTTPServerConnectionDelegate):
    """The public listener: fresh cache hits are answered here (cloud.hits), the rest by `app`.

    Below RequestHandler on purpose: a hit needs no handler, route or access line, only its
    prepared response. Everything Hits declines goes to the application unchanged.
    """

    def __init__(self, hits: Hits, app: tornado.web.Application):
        self.hits = hits
        self.app = app

    def start_request(
        self, server_conn: object, request_conn: tornado.httputil.HTTPConnection
    ) -> tornado.httputil.HTTPMessageDelegate:
        return _HitOrApp(self, server_conn, request_conn)

    def on_close(self, server_conn: object) -> None:
        self.app.on_close(server_conn)


class _HitOrApp(tornado.httputil.HTTPMessageDelegate):
    def __init__(
        self, parent: HitFirst, server_conn: object, request_conn: tornado.httputil.HTTPConnection
    ):
        self.parent = parent
        self.server_conn = server_conn
        self.request_conn = request_conn
        self.hit: Hit | None = None
        self.app: tornado.httputil.HTTPMessageDelegate | None = None

    def headers_received(
        self,
        start_line: tornado.httputil.RequestStartLine | tornado.httputil.ResponseStartLine,
        headers: tornado.httputil.HTTPHeaders,
    ) -> Any:
        assert isinstance(start_line, tornado.httputil.RequestStartLine)
        context = getattr(self.request_conn, "context", None)  # HTTP1Connection's: the peer
        self.hit = self.parent.hits.answer(
            start_line.method,
            start_line.path,
            start_line.version,
            headers,
            getattr(context, "remote_ip", ""),
        )
        if self.hit is not None:
            return None
        self.app = self.parent.app.start_request(self.server_conn, self.request_conn)
        return self.app.headers_received(start_line, headers)

    def data_received(self, chunk: bytes) -> Any:
        if self.app is not None:
            return self.app.data_received(chunk)
        return None

    def finish(self) -> None:
        # Written only once the request has been read, as RequestHandler does: a response
        # finished before that would make Tornado close the connection after it.
        if self.app is not None:
            self.app.finish()
            return
        assert self.hit is not None
        # One pre-encoded block, which HTTP1Connection.write takes in place of write_headers
        # (documented, and what a hit needs: the constant headers were formatted once).
        self.request_conn.write(self.hit.data)
        self.request_conn.finish()

    def on_connection_close(self) -> None:
        if self.app is not None:
            self.app.on_connection_close()
