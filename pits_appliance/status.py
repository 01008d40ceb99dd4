"""The agent's local HTTP server on the status port: the status page, its JSON, health, metrics.

The page is for whoever is at the pits, on a phone on the pits network. Every request must
name the box in its Host (its own names and addresses, see `server.host_allowed`), so a web
page elsewhere cannot reach it by DNS rebinding; the few actions it offers (reconnect, pause,
resume, install now) are POSTs that need the page's own header and a same-origin `Origin` (or
`Sec-Fetch-Site: same-origin`), so another web page cannot trigger them from a visitor's
browser.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from importlib import resources
from typing import Any, Protocol

import tornado.web

from pits_appliance.metrics import AgentMetrics
from pits_appliance.server import host_allowed, local_address, same_origin
from pits_appliance.state import AgentState
from pits_appliance.status_view import view
from wire.budget import Throttle


class Link(Protocol):
    """What the page's Reconnect needs of the agent's link."""

    def reconnect_now(self) -> None: ...


access_log = logging.getLogger("tornado.access")

PAGE = resources.files("pits_appliance").joinpath("static/status.html").read_bytes()
ACTION_HEADER = "X-Pitlink-Action"


class StatusSource(Protocol):
    """What the status server needs: the agent, or a stand-in when the settings are broken."""

    state: AgentState
    metrics: AgentMetrics

    @property
    def link(self) -> Link | None: ...

    def set_paused(self, paused: bool) -> None: ...


class _Base(tornado.web.RequestHandler):
    def initialize(self, agent: StatusSource) -> None:
        self.agent = agent

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
            "connect-src 'self'; img-src data:",
        )
        self.finish(PAGE)


class StatusJSONHandler(_Base):
    def get(self) -> None:
        self.finish(view(self.agent.state))


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
    """POST /api/reconnect, /api/pause, /api/resume, /api/install (Install now)."""

    def post(self, action: str) -> None:
        headers = self.request.headers
        from_page = same_origin(
            headers.get("Origin"),
            headers.get("Sec-Fetch-Site"),
            host=headers.get("Host"),
            scheme=self.request.protocol,
        )
        if not from_page or headers.get(ACTION_HEADER) != "1":
            self.set_status(403)
            self.finish({"error": "actions come from the status page"})
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


def make_status_app(agent: StatusSource) -> tornado.web.Application:
    args = {"agent": agent}
    return tornado.web.Application(
        [
            (r"/", PageHandler, args),
            (r"/status\.json", StatusJSONHandler, args),
            (r"/healthz", HealthHandler, args),
            (r"/metrics", MetricsHandler, args),
            (r"/api/(reconnect|pause|resume|install)", ActionHandler, args),
        ],
        default_handler_class=NotFoundHandler,
        default_handler_args=args,
        log_function=AccessLog(),
    )
