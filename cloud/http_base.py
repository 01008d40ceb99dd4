"""What every handler of the relay shares: what it may use of the relay, CORS, JSON errors, the
access line, and a deadline on every write a client stops taking."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

import tornado.web
import ujson
from tornado.ioloop import IOLoop

from cloud.admin import Admin
from cloud.age_notice import AgeNotice
from cloud.age_state import BoxAge
from cloud.cache import Cache
from cloud.clients import Clients, Origin, PublicAddress
from cloud.control import PitsConnection, Transport
from cloud.drain import Drain
from cloud.hits import EXPOSED
from cloud.metrics import Metrics
from cloud.ratelimit import SharedLimiter
from cloud.registry import Registry
from cloud.relay import Relay
from cloud.routing import Router
from wire import ErrorCode, ProtocolError
from wire.budget import Throttle
from wire.errors import HTTP_STATUS
from wire.errors import retry_after as clamp_retry_after
from wire.paths import normalize_path

log = logging.getLogger("pitlink.cloud.http")
access_log = logging.getLogger("tornado.access")

RETRY_AFTER = {ErrorCode.BUSY: 1, ErrorCode.UNAVAILABLE: 5}
HEALTH_PATHS = frozenset({"/healthz", "/readyz"})


class RelayParts(Protocol):
    """What the handlers use of the relay (cloud.app.CloudRelay is one): nothing else."""

    metrics: Metrics
    drain: Drain
    client_limits: SharedLimiter
    clients: Clients
    public: PublicAddress
    serving: Relay
    registry: Registry[PitsConnection]
    cache: Cache
    admin: Admin
    clock: Callable[[], float]
    stalls: Stalls
    router: Router
    port: int | None  # the public listener's
    age_notice: AgeNotice | None  # None: pits' pages are served unchanged (--no-age-notice)
    box_age: BoxAge

    def route(self, path: str, host: str | None = None) -> tuple[str, str]: ...

    def pits_url(self, pits_id: str, origin: Origin | None) -> str | None: ...

    def verify_token(self, token: str, *, role: str | None) -> dict[str, Any]: ...

    def new_connection(
        self, claims: dict[str, Any], transport: Transport, *, kid: str | None = None
    ) -> PitsConnection: ...

    def readiness(self) -> dict[str, Any]: ...

    def active_pits_id(self) -> str | None: ...

    def push_of(self, pits_id: str) -> dict[str, Any]: ...


class Stalls:
    """A response the client stops taking is not kept waiting for it.

    Every write to a client (a response, or one piece of a long one: a bundle download, a
    feed) must be taken within `timeout` seconds; else the connection is closed, which ends
    the request and frees what it held (a box's one download slot, a feed's place). Counted
    in `pitlink_stalled_writes_total`, logged at most once a second.
    """

    def __init__(
        self, timeout: float, metrics: Metrics, *, clock: Callable[[], float] = time.monotonic
    ):
        self.timeout = timeout
        self.metrics = metrics
        self.clock = clock
        self._throttle = Throttle(1.0)

    def watch(self, written: Any, connection: object, what: str) -> None:
        """Close the client's connection unless the future `written` is done within the deadline."""
        if written is None or written.done():
            return  # taken at once, as nearly every answer is
        # The stream, not the HTTP connection: closing that forgets the write it was waiting
        # for, and the handler awaiting it would wait for ever.
        stream = getattr(connection, "stream", None)
        close: Callable[[], None] = getattr(stream, "close", lambda: None)
        loop = IOLoop.current()
        timer = loop.call_later(self.timeout, self._stalled, close, what)
        written.add_done_callback(lambda _: loop.remove_timeout(timer))

    def _stalled(self, close: Callable[[], None], what: str) -> None:
        self.metrics.stalled_writes.inc()
        held = self._throttle.allow("stalled", self.clock())
        if held is not None:
            log.warning(
                "client took nothing for too long: connection closed",
                extra={"what": what, "timeout_s": self.timeout, "held_back": held},
            )
        close()


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
    """CORS on everything, JSON error bodies, no framework ETags (ours come from the pits), and
    no write left waiting on a client that stopped reading."""

    def initialize(self, relay: RelayParts) -> None:
        self.relay = relay

    def set_default_headers(self) -> None:
        self.set_header("Access-Control-Allow-Origin", "*")
        self.set_header("Access-Control-Expose-Headers", EXPOSED)

    def compute_etag(self) -> None:
        return None

    def flush(self, include_footers: bool = False) -> Any:
        written = super().flush(include_footers)
        connection = self.request.connection
        if connection is not None:
            self.relay.stalls.watch(written, connection, self.request.path[:100])
        return written

    def origin(self) -> Origin:
        """The scheme and host the public reached the relay by (cloud.clients.PublicAddress)."""
        request = self.request
        return self.relay.public.origin(
            scheme=request.protocol,
            host=request.host,
            peer=request.remote_ip or "",
            forwarded_proto=request.headers.get("X-Forwarded-Proto"),
            forwarded_host=request.headers.get("X-Forwarded-Host"),
        )

    def client_key(self) -> str:
        """Whose per-client budget this request spends (cloud.clients.Clients.key)."""
        return self.relay.clients.key(
            self.request.remote_ip or "", self.request.headers.get("X-Forwarded-For")
        )

    def relay_pits(self) -> str | None:
        """The pits whose `/pitlink/` space this request's path is in (its own host with
        `--pits-domain`, else under `/pits/<id>/`); None, the error written, when there is none."""
        try:
            found = self.relay.router.relay_path(
                normalize_path(self.request.path), self.request.host
            )
        except ProtocolError as exc:
            self.write_json_error(exc.code, exc.message)
            return None
        if found is None:
            self.write_json_error(ErrorCode.DENIED, "no pits is served here", 404)
            return None
        return found[0]

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


def json_error(code: ErrorCode, message: str) -> str:
    return ujson.dumps({"error": {"code": str(code), "message": message}})
