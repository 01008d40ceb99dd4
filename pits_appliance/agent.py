"""The agent as one object: origin, executor, cloud link and status server, with a lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time

import jwt
import tornado.httpserver
import tornado.netutil

from pits_appliance import ConfigError
from pits_appliance.config import AgentConfig
from pits_appliance.executor import Executor
from pits_appliance.link import CloudLink
from pits_appliance.metrics import AgentMetrics
from pits_appliance.origin import Origin
from pits_appliance.state import AgentState
from pits_appliance.status import make_status_app
from wire import ProtocolError
from wire.paths import Allowlist

log = logging.getLogger("pitlink.pits.agent")

EVENT_RE = re.compile(rb'new EventManager\("events/([a-z0-9-]+)"')


def pits_id_from_token(token: str) -> str:
    """The token's subject, read without verifying (only the relay holds the key)."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        raise ConfigError("the token is not a valid token: ask for a new one") from None
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub:
        raise ConfigError("the token names no pits id")
    return sub


class Agent:
    """Everything that runs on the pits box."""

    def __init__(self, config: AgentConfig):
        self.config = config
        self.state = AgentState()
        self.metrics = AgentMetrics()
        self.origin = Origin(
            config.fpvtrackside,
            max_body_bytes=config.max_body_bytes,
            concurrency=config.origin_concurrency,
        )
        self.executor = Executor(
            self.origin, Allowlist(config.allowlist), fetch_timeout=config.fetch_timeout
        )
        self.link = CloudLink(
            config=config, executor=self.executor, state=self.state, metrics=self.metrics
        )
        self.status_port: int | None = None
        self._server: tornado.httpserver.HTTPServer | None = None
        self._tasks: list[asyncio.Task[None]] = []

    def _resolve_pits_id(self) -> str:
        if self.config.pits_id:
            return self.config.pits_id
        try:
            token = self.config.token_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(
                f"cannot read the token file {self.config.token_file}: {exc.strerror}"
            ) from None
        return pits_id_from_token(token)

    async def start(self) -> None:
        """Serve the status page, then start dialing the relay and watching FPVTrackside."""
        self.state.pits_id = self._resolve_pits_id()
        sockets = tornado.netutil.bind_sockets(self.config.status_port, self.config.status_host)
        self._server = tornado.httpserver.HTTPServer(make_status_app(self))
        self._server.add_sockets(sockets)
        self.status_port = sockets[0].getsockname()[1]
        self._tasks = [
            asyncio.ensure_future(self.link.run()),
            asyncio.ensure_future(self._watch_origin()),
        ]
        log.info(
            "agent started",
            extra={
                "pits_id": self.state.pits_id,
                "status_port": self.status_port,
                "relay": self.config.cloud_url,
            },
        )

    async def _watch_origin(self) -> None:
        """Check now and then that FPVTrackside answers, and which event it has open."""
        while True:
            await self.check_origin()
            await asyncio.sleep(self.config.origin_check_interval)

    async def check_origin(self) -> None:
        try:
            reply = await self.origin.get("/", self.config.fetch_timeout)
        except ProtocolError as exc:
            self.state.set("origin_reachable", False)
            self.state.origin_error = exc.message
        else:
            self.state.set("origin_reachable", reply.status == 200)
            match = EVENT_RE.search(reply.body)
            self.state.set("origin_event", match.group(1).decode() if match else None)
            self.state.origin_error = None if reply.status == 200 else f"HTTP {reply.status}"
        self.state.origin_checked = time.time()

    async def stop(self) -> None:
        self.link.stop()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._server is not None:
            self._server.stop()
            await self._server.close_all_connections()
        self.origin.close()
        log.info("agent stopped")
