"""Helpers for tests that run the real parts on loopback: waiting, keys, a whole system."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import tornado.httpclient
import tornado.httpserver
import tornado.netutil
import tornado.web
from logcheck import SECRETS

from cloud.app import CloudRelay
from cloud.config import CloudConfig
from cloud.keys import KeySet, keygen
from pits_appliance.agent import Agent
from pits_appliance.config import AgentConfig


async def wait_for(
    predicate: Callable[[], Any] | Callable[[], Awaitable[Any]],
    *,
    timeout: float = 10.0,
    interval: float = 0.01,
    what: str = "condition",
) -> Any:
    """Poll until `predicate` is truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(interval)


@contextlib.asynccontextmanager
async def serving(handler: type[tornado.web.RequestHandler]) -> AsyncIterator[str]:
    """Serve every path with one handler on a loopback port; yields the base URL.

    For the peers a test plays itself: a hostile origin on the venue LAN, a portal, a relay
    from the future.
    """
    sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
    server = tornado.httpserver.HTTPServer(tornado.web.Application([(r"/.*", handler)]))
    server.add_sockets(sockets)
    try:
        yield f"http://127.0.0.1:{sockets[0].getsockname()[1]}"
    finally:
        server.stop()
        await server.close_all_connections()


def free_port() -> int:
    """A loopback port nobody listens on now (for programs that must be told one)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_keys(directory: Path, kid: str = "k1") -> tuple[Path, KeySet]:
    """A fresh key set; its secrets are registered so that the log check looks for them."""
    path = directory / "jwks.json"
    keygen(path, kid)
    for key in json.loads(path.read_text())["keys"]:
        SECRETS.add(key["k"])
    return path, KeySet.load(path)


class FakeClock:
    """A monotonic clock that moves only when told to."""

    def __init__(self, start: float = 1000.0):
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class System:
    """A simulator, a relay and an agent on loopback, with handles on all three."""

    def __init__(self, tmp: Path, sim: Any, *, pits_id: str = "pits-1"):
        self.tmp = tmp
        self.sim = sim
        self.pits_id = pits_id
        self.jwks, self.keys = make_keys(tmp)
        self.token_file = tmp / "token"
        # Longer than --renew-before, so that no renewal happens unless a test asks for one.
        self.token_file.write_text(self.keys.issue(sub=pits_id, role="pits", ttl=90 * 86400))
        self.relay: CloudRelay | None = None
        self.agent: Agent | None = None
        self.relay_port = 0
        self.http = tornado.httpclient.AsyncHTTPClient(force_instance=True, max_clients=64)

    def relay_config(self, **overrides: Any) -> CloudConfig:
        # No miss budget unless a test asks for one: one test client plays every spectator.
        base = CloudConfig(
            host="127.0.0.1", port=self.relay_port, jwks=self.jwks, client_miss_rate=None
        )
        return replace(base, **overrides)

    def agent_config(self, **overrides: Any) -> AgentConfig:
        base = AgentConfig(
            cloud_url=f"http://127.0.0.1:{self.relay_port}",
            token_file=self.token_file,
            fpvtrackside=self.sim.url,
            status_host="127.0.0.1",
            status_port=0,
            reconnect_base=0.05,
            reconnect_cap=0.5,
            origin_check_interval=30.0,
        )
        return replace(base, **overrides)

    async def start_relay(
        self, *, clock: Callable[[], float] | None = None, **overrides: Any
    ) -> CloudRelay:
        config = self.relay_config(**overrides)
        self.relay = CloudRelay(config) if clock is None else CloudRelay(config, clock=clock)
        self.relay_port = await self.relay.start()
        return self.relay

    async def stop_relay(self) -> None:
        if self.relay is not None:
            await self.relay.stop()
            self.relay = None

    async def start_agent(self, *, wait: bool = True, **overrides: Any) -> Agent:
        self.agent = Agent(self.agent_config(**overrides))
        await self.agent.start()
        if wait:
            await self.connected()
            # The agent's first look at FPVTrackside (its page, then the event's name) is done,
            # so that it does not show up in what a test counts at the origin.
            agent = self.agent
            await wait_for(lambda: agent.state.origin_checked, what="the first origin check")
        return self.agent

    async def stop_agent(self) -> None:
        if self.agent is not None:
            await self.agent.stop()
            self.agent = None

    async def connected(self, timeout: float = 10.0) -> None:
        def up() -> bool:
            return bool(
                self.relay is not None
                and self.relay.registry.get(self.pits_id) is not None
                and self.agent is not None
                and self.agent.state.ws_connected
            )

        await wait_for(up, timeout=timeout, what="the agent to connect")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.relay_port}"

    async def get(self, path: str, **kwargs: Any) -> tornado.httpclient.HTTPResponse:
        kwargs.setdefault("raise_error", False)
        kwargs.setdefault("request_timeout", 20.0)
        return await self.http.fetch(self.url + path, **kwargs)

    async def close(self) -> None:
        await self.stop_agent()
        await self.stop_relay()
        self.http.close()
