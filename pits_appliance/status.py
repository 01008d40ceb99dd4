"""The agent's local HTTP server on the status port: the status page, its JSON, health, metrics.

The page is for whoever is at the pits, on a phone on the pits network. Every request must
name the box in its Host (its own names and addresses, see `server.host_allowed`), so a web
page elsewhere cannot reach it by DNS rebinding; the few actions it offers (reconnect, pause,
resume, install now) are POSTs that need the page's own header and a same-origin `Origin` (or
`Sec-Fetch-Site: same-origin`), so another web page cannot trigger them from a visitor's
browser, and the session the box's PIN opened (`POST /api/pin`, pits_appliance.pin), so a
neighbour on the network cannot either. Reading the page needs no PIN.
"""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Callable
from importlib import resources
from typing import Any, Protocol

import tornado.web

from pits_appliance.extension import PATH as EVENTS_PATH
from pits_appliance.extension import Extension
from pits_appliance.metrics import AgentMetrics
from pits_appliance.pin import PinGate
from pits_appliance.pinfile import StatusPin
from pits_appliance.server import host_allowed, local_address, peer_of, same_origin
from pits_appliance.state import AgentState
from pits_appliance.status_view import view
from wire.budget import Throttle


class Link(Protocol):
    """What the page's Reconnect needs of the agent's link."""

    def reconnect_now(self) -> None: ...


access_log = logging.getLogger("tornado.access")

PAGE = resources.files("pits_appliance").joinpath("static/status.html").read_bytes()
ACTION_HEADER = "X-Pitlink-Action"
SESSION_COOKIE = "pitlink_session"
MAX_PIN_BODY = 256  # {"pin": "<12 digits>"} and then some: anything longer is no PIN
MAX_ACTION_BODY = 1024  # {"bundle": "<a name on the USB stick>"}


class StatusSource(Protocol):
    """What the status server needs: the agent, or a stand-in when the settings are broken."""

    state: AgentState
    metrics: AgentMetrics

    @property
    def link(self) -> Link | None: ...

    def set_paused(self, paused: bool) -> None: ...


class Access:
    """Who may press the page's buttons: the PIN's gate and where the organiser finds the PIN
    (None while the settings are broken: no button then acts)."""

    def __init__(self, pin: StatusPin | None, clock: Callable[[], float] = time.monotonic):
        self.gate = None if pin is None else PinGate(pin.pin)
        self.where = None if pin is None else pin.where
        self.clock = clock


class _Base(tornado.web.RequestHandler):
    def initialize(self, agent: StatusSource, access: Access) -> None:
        self.agent = agent
        self.access = access

    def set_default_headers(self) -> None:
        self.set_header("Cache-Control", "no-store")

    def prepare(self) -> None:
        allowed = host_allowed(
            self.request.headers.get("Host"),
            local_address=local_address(self.request),
            pits_id=self.agent.state.pits_id,
            hostname=socket.gethostname(),
        )
        if not allowed:
            self.set_status(421)
            self.finish({"error": "this box answers only to its own names and addresses"})

    def compute_etag(self) -> None:
        return None

    def from_page(self) -> bool:
        """Whether a POST comes from the status page itself (its header, its origin)."""
        headers = self.request.headers
        return headers.get(ACTION_HEADER) == "1" and same_origin(
            headers.get("Origin"),
            headers.get("Sec-Fetch-Site"),
            host=headers.get("Host"),
            scheme=self.request.protocol,
        )

    def unlocked(self) -> bool:
        """Whether the request carries a session the box's PIN opened."""
        gate = self.access.gate
        return gate is not None and gate.valid(self.get_cookie(SESSION_COOKIE), self.access.clock())


class NotFoundHandler(_Base):
    """Any other path: 404, after the Host check like everything else."""

    def get(self, *args: str) -> None:
        self.set_status(404)
        self.finish({"error": "not found"})

    post = get


class PageHandler(_Base):
    def get(self) -> None:
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.set_header(
            "Content-Security-Policy",
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
            "connect-src 'self'; img-src data:; form-action 'none'",
        )
        self.finish(PAGE)


class StatusJSONHandler(_Base):
    def get(self) -> None:
        body = view(self.agent.state)
        body.update(unlocked=self.unlocked(), pinWhere=self.access.where)
        self.finish(body)


class HealthHandler(_Base):
    """200 while the cloud link is up, 503 otherwise; the body says what is known."""

    def get(self) -> None:
        state = self.agent.state
        self.set_status(200 if state.ws_connected else 503)
        self.finish(state.health())


class MetricsHandler(_Base):
    def get(self) -> None:
        self.set_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.finish(self.agent.metrics.render())


class ActionHandler(_Base):
    """POST /api/reconnect, /api/pause, /api/resume, /api/install (Install now), and
    /api/downgrade (`{"bundle": "<name on the USB stick>"}`: install that older version)."""

    def post(self, action: str) -> None:
        if not self.from_page():
            self.set_status(403)
            self.finish({"error": "actions come from the status page"})
            return
        if self.access.gate is None:
            self.set_status(409)
            self.finish({"ok": False, "message": "Not possible now."})
            return
        if not self.unlocked():
            self.set_status(403)
            self.finish({"error": "enter the box's PIN first", "pin": "required"})
            return
        link = self.agent.link
        result: dict[str, Any]
        if action == "reconnect" and link is not None:
            link.reconnect_now()
            result = {"ok": True, "message": "Reconnecting now."}
        elif action == "install" and link is not None:
            install_now = getattr(self.agent, "install_now", None)
            result = install_now() if install_now is not None else {"ok": False}
            if not result.get("ok"):
                self.set_status(409)
                result.setdefault("message", "Not possible now.")
        elif action == "downgrade":
            name = _field_in(self.request.body, "bundle", MAX_ACTION_BODY)
            downgrade = getattr(self.agent, "downgrade", None)
            result = (
                downgrade(name)
                if name is not None and downgrade is not None
                else {"ok": False, "message": "Say which bundle on the USB stick."}
            )
            if not result.get("ok"):
                self.set_status(409 if name is not None else 400)
        elif action in ("pause", "resume") and link is not None:
            self.agent.set_paused(action == "pause")
            message = (
                "Paused: the box no longer answers the relay." if action == "pause" else "Resumed."
            )
            result = {"ok": True, "message": message}
        else:
            self.set_status(404 if link is not None else 409)
            result = {"ok": False, "message": "Not possible now."}
        self.finish(result)


@tornado.web.stream_request_body
class FpvtEventsHandler(_Base):
    """PUT /fpvtrackside/events: FPVTrackside's ExtensionMode events (pits_appliance.extension).

    FPVTrackside is no browser: no PIN or Origin here, but only its own address may send, a
    bounded body, within a rate; all decided from the headers, before the body is read. The
    answer (empty, 200) goes out as soon as the body is known to be a JSON object; the event is
    handled after (ExtensionMode's rule: every event behind this one waits for the answer).
    """

    def prepare(self) -> None:
        super().prepare()
        self._body = bytearray()
        if self._finished or self.request.method != "PUT":
            return
        extension = self.agent_extension()
        if extension is None:
            self._refuse(503, "this box takes no events while its settings are broken")
            return
        length = self.request.headers.get("Content-Length")
        status, why = extension.admit(
            self.request.remote_ip, int(length) if length and length.isdigit() else None
        )
        if status != 200:
            self._refuse(status, why)

    def agent_extension(self) -> Extension | None:
        extension = getattr(self.agent, "extension", None)
        return extension if isinstance(extension, Extension) else None

    def data_received(self, chunk: bytes) -> None:
        if self._finished:
            return
        self._body += chunk
        extension = self.agent_extension()
        if extension is not None and len(self._body) > extension.max_body:
            self._refuse(*extension.too_large())

    def put(self) -> None:
        extension = self.agent_extension()
        if self._finished or extension is None:
            return
        status, why = extension.take(bytes(self._body))
        if status != 200:
            self._refuse(status, why)
            return
        self.clear_header("Content-Type")
        self.finish()

    def _refuse(self, status: int, why: str) -> None:
        self.set_status(status)
        if status == 429:
            self.set_header("Retry-After", "1")
        self.finish({"error": why})

    def _wrong_method(self, *args: str) -> None:
        self.set_header("Allow", "PUT")
        self._refuse(405, "FPVTrackside sends its events with PUT")

    get = head = post = delete = patch = options = _wrong_method


class PinHandler(_Base):
    """POST /api/pin with `{"pin": "123456"}`: a session cookie for the buttons, for this
    browser session (no Max-Age), never sent by another site's page (SameSite=Strict), never
    read by a script (HttpOnly)."""

    def post(self) -> None:
        if not self.from_page():
            self.set_status(403)
            self.finish({"error": "actions come from the status page"})
            return
        gate = self.access.gate
        if gate is None:
            self.set_status(409)
            self.finish({"error": "Not possible now."})
            return
        attempt = _pin_in(self.request.body)
        if attempt is None:
            self.set_status(400)
            self.finish({"error": 'send the PIN as JSON: {"pin": "123456"}'})
            return
        verdict = gate.check(peer_of((self.request.remote_ip,)), attempt, self.access.clock())
        if verdict.session is not None:
            self.set_cookie(SESSION_COOKIE, verdict.session, httponly=True, samesite="Strict")
            self.finish({"ok": True, "message": verdict.message})
            return
        if verdict.wait is not None:
            self.set_status(429)
            self.set_header("Retry-After", str(verdict.seconds))
        else:
            self.set_status(403)
        self.finish({"error": verdict.message})


def _pin_in(body: bytes) -> str | None:
    """The PIN in a request's body, or None when the body is not `{"pin": "<text>"}`."""
    return _field_in(body, "pin", MAX_PIN_BODY)


def _field_in(body: bytes, key: str, limit: int) -> str | None:
    """`key`'s text in a small JSON body `{key: "<text>"}`; None for anything else."""
    if len(body) > limit:
        return None
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    value = doc.get(key) if isinstance(doc, dict) else None
    return value if isinstance(value, str) else None


class AccessLog:
    """Tornado's access line, at most one a second for each class of status (2xx, 4xx, ...),
    with the count of those held back: a flood of requests from the LAN must not fill the box's
    RAM-backed journal."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.throttle = Throttle(1.0)

    def __call__(self, handler: tornado.web.RequestHandler) -> None:
        status = handler.get_status()
        held = self.throttle.allow(f"{status // 100}xx", self.clock())
        if held is None:
            return
        request = handler.request
        if status < 400 or request.path == "/healthz":  # "the link is down" is an answer
            level = logging.INFO
        else:
            level = logging.WARNING if status < 500 else logging.ERROR
        access_log.log(
            level,
            "%d %s %s (%s) %.2fms",
            status,
            request.method,
            request.uri[:200] if request.uri else "",
            request.remote_ip,
            1000.0 * request.request_time(),
            extra={"held_back": held},
        )


def make_status_app(
    agent: StatusSource,
    pin: StatusPin | None = None,
    *,
    clock: Callable[[], float] = time.monotonic,
) -> tornado.web.Application:
    """The status port's application; `pin` None (settings broken) locks every button."""
    args = {"agent": agent, "access": Access(pin, clock)}
    return tornado.web.Application(
        [
            (r"/", PageHandler, args),
            (r"/status\.json", StatusJSONHandler, args),
            (r"/healthz", HealthHandler, args),
            (r"/metrics", MetricsHandler, args),
            (r"/api/pin", PinHandler, args),
            (r"/api/(reconnect|pause|resume|install|downgrade)", ActionHandler, args),
            (EVENTS_PATH, FpvtEventsHandler, args),
        ],
        default_handler_class=NotFoundHandler,
        default_handler_args=args,
        log_function=AccessLog(),
    )
