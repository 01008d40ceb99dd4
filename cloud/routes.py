"""The relay's routes: which handler answers which host and path.

Pits content is served under the relay's name, so a page from a pits shares the relay's origin;
`--admin-host` or `--admin-port` give the admin page and API another origin, where no pits
content is ever served, and `--pits-domain` gives each pits a host of its own.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import tornado.web

from cloud.admin_http import AdminAPIHandler, AdminPageHandler, BundleUploadHandler
from cloud.bundle_http import BundleDownloadHandler
from cloud.config import CloudConfig
from cloud.front_page import FrontPageHandler
from cloud.handlers import (
    ControlHandler,
    DataHandler,
    Generate204Handler,
    HealthHandler,
    MetricsHandler,
    NoSuchPitsHandler,
    PitsHostRedirect,
    ReadyHandler,
)
from cloud.hosts import DNS_LABEL, HostRouting
from cloud.http_base import RelayParts, log_request
from cloud.race_page import RACE_PAGE, RacePageHandler
from wire import ErrorCode


@dataclass(frozen=True)
class Layout:
    """What decides the routes: the relay (handed to every handler) and its settings."""

    relay: RelayParts
    config: CloudConfig
    hosts: HostRouting | None
    pits_moved: bool  # --pits-domain: pits paths on the relay's own name go to the pits' host


class NotFound(DataHandler):
    """Anything unrouted: a JSON 404, with CORS like every other answer."""

    async def _serve(self, *, head: bool) -> None:
        self.write_json_error(ErrorCode.DENIED, "no such endpoint", 404)


def public_app(layout: Layout) -> tornado.web.Application:
    """The public application; the admin's routes too unless they have an origin of their own."""
    config = layout.config
    args: dict[str, Any] = {"relay": layout.relay}
    public: list[Any] = [
        (r"/control", ControlHandler, args),
        (r"/pits-api/bundles/([0-9a-f]{16})", BundleDownloadHandler, args),
        (r"/pits/[^/]+" + RACE_PAGE, RacePageHandler, args),
        (r"/pits/.*", DataHandler, args),
        (r"/(?:events|httpfiles)(?:/.*)?", DataHandler, args),
        (r"/healthz", HealthHandler, args),
        (r"/readyz", ReadyHandler, args),
        (r"/generate_204", Generate204Handler, args),
        (r"/metrics", MetricsHandler, args),
        (r"/", FrontPageHandler, args),
    ]
    own_origin = (
        config.admin_host is not None
        or config.admin_port is not None
        or config.pits_domain is not None
    )
    app = tornado.web.Application(
        public if own_origin else public + _admin_rules(layout),
        # A frame carries a base64 body (4/3 of its size) plus the envelope.
        websocket_max_message_size=config.max_body_bytes * 4 // 3 + 64 * 1024,
        default_handler_class=NotFound,
        default_handler_args=args,
        log_function=log_request,
    )
    if config.admin_host is not None and config.admin_port is None:
        _admin_on_host(layout, app)
    if layout.hosts is not None:
        _pits_on_hosts(layout, app, public)
    return app


def admin_app(layout: Layout) -> tornado.web.Application:
    """The admin listener's application (`--admin-port`): the admin's routes and nothing else."""
    args: dict[str, Any] = {"relay": layout.relay}
    if layout.config.admin_host is not None:
        app = tornado.web.Application(
            [], default_handler_class=NotFound, default_handler_args=args, log_function=log_request
        )
        _admin_on_host(layout, app)
        return app
    return tornado.web.Application(
        _admin_rules(layout),
        default_handler_class=NotFound,
        default_handler_args=args,
        log_function=log_request,
    )


def _admin_rules(layout: Layout) -> list[Any]:
    args: dict[str, Any] = {"relay": layout.relay}
    return [
        (r"/admin/?", AdminPageHandler, args),
        (r"/admin/api/bundles/upload", BundleUploadHandler, args),
        (r"/admin/api/(.*)", AdminAPIHandler, args),
    ]


def _pits_on_hosts(layout: Layout, app: tornado.web.Application, public: list[Any]) -> None:
    """`--pits-domain`: each pits at its own host, served as FPVTrackside serves its root; the
    relay's own name keeps its own routes and the admin (unless it has an origin of its own),
    and sends pits paths on to the pits' host."""
    assert layout.hosts is not None
    args: dict[str, Any] = {"relay": layout.relay}
    domain = re.escape(layout.hosts.pits_domain)
    catch_all = (r".*", NotFound, args)
    app.add_handlers(
        DNS_LABEL.pattern + r"\." + domain,
        [
            (RACE_PAGE, RacePageHandler, args),
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
        own = [rule for rule in public if rule[1] not in (DataHandler, RacePageHandler)]
        app.add_handlers(domain, [*moved, *own, *_admin_rules(layout), catch_all])


def _admin_on_host(layout: Layout, app: tornado.web.Application) -> None:
    """The admin's routes on `--admin-host` only; every other path there is a 404."""
    assert layout.config.admin_host is not None
    catch_all = (r".*", NotFound, {"relay": layout.relay})
    app.add_handlers(re.escape(layout.config.admin_host), [*_admin_rules(layout), catch_all])
