"""The agent's local HTTP server: `/healthz` and `/metrics` for now, on the status port."""

from __future__ import annotations

from typing import TYPE_CHECKING

import tornado.web

if TYPE_CHECKING:
    from pits_appliance.agent import Agent


class _Base(tornado.web.RequestHandler):
    def initialize(self, agent: Agent) -> None:
        self.agent = agent

    def set_default_headers(self) -> None:
        self.set_header("Cache-Control", "no-store")


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


def make_status_app(agent: Agent) -> tornado.web.Application:
    args = {"agent": agent}
    return tornado.web.Application(
        [(r"/healthz", HealthHandler, args), (r"/metrics", MetricsHandler, args)]
    )
