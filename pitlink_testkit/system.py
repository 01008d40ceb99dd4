"""The whole chain on loopback: the simulator, a relay and an agent, in the test's event loop."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import tornado.httpclient

from cloud.app import CloudRelay
from cloud.config import CloudConfig
from pitlink_testkit.fpvtrackside import Simulator
from pitlink_testkit.keys import make_keys
from pitlink_testkit.waiting import wait_for
from pits_appliance.agent import Agent
from pits_appliance.config import AgentConfig


class System:
    """A simulator, a relay and an agent on loopback, with handles on all three."""

    status_pin = "428571"  # the PIN the agent's status page asks for before its buttons act

    def __init__(self, tmp: Path, sim: Simulator, *, pits_id: str = "pits-1"):
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

    def sibling(self, sim: Simulator, pits_id: str) -> System:
        """Another pits on this system's relay (its agent not started), with a token from the
        same keys, in a folder of its own."""
        folder = self.tmp / pits_id
        folder.mkdir()
        other = System(folder, sim, pits_id=pits_id)
        other.jwks, other.keys = self.jwks, self.keys
        other.token_file.write_text(self.keys.issue(sub=pits_id, role="pits", ttl=86400))
        other.relay, other.relay_port = self.relay, self.relay_port
        return other

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
            status_pin=self.status_pin,
            internet_check_url=None,  # tests never ask the Internet; those that need it say where
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

    @property
    def status_url(self) -> str:
        assert self.agent is not None
        return f"http://127.0.0.1:{self.agent.status_port}"

    async def unlock(self, pin: str | None = None) -> dict[str, str]:
        """The headers the status page presses its buttons with: its own, and the session
        cookie the box gives for its PIN (`pin`, else the one the agent was given)."""
        headers = {"Origin": self.status_url, "X-Pitlink-Action": "1"}
        got = await self.http.fetch(
            self.status_url + "/api/pin",
            method="POST",
            body=json.dumps({"pin": pin or self.status_pin}),
            headers={**headers, "Content-Type": "application/json"},
        )
        return {**headers, "Cookie": got.headers["Set-Cookie"].split(";", 1)[0]}

    async def press(self, action: str) -> tornado.httpclient.HTTPResponse:
        """Press a status page button (`pause`, `resume`, `reconnect`, `install`) as the page
        does, with the PIN."""
        headers = await self.unlock()
        return await self.http.fetch(
            f"{self.status_url}/api/{action}",
            method="POST",
            body=b"",
            headers=headers,
            raise_error=False,
        )

    async def close(self) -> None:
        await self.stop_agent()
        await self.stop_relay()
        self.http.close()
