"""`pits-agent`: run the agent until SIGINT or SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Mapping, Sequence

import tornado.netutil

from pits_appliance import ConfigError, __version__, lognoise
from pits_appliance.config import SETTINGS, AgentConfig, load_config
from pits_appliance.metrics import AgentMetrics
from pits_appliance.state import AgentState
from wire import jsonlog
from wire.settings import lenient

log = logging.getLogger("pitlink.pits.agent")


class BrokenSettings:
    """Stands in for the agent when the settings cannot be used: the page shows why."""

    link = None

    def __init__(self, message: str):
        self.state = AgentState(config_error=message, sw_version=__version__)
        self.metrics = AgentMetrics()

    def set_paused(self, paused: bool) -> None:
        pass


def _lenient(argv: Sequence[str], env: Mapping[str, str]) -> tuple[str, int, float]:
    """Status address and error hold from flags or environment, whatever else is broken."""
    got = lenient(SETTINGS, ("status_host", "status_port", "error_hold"), argv, env)
    return got["status_host"], got["status_port"], got["error_hold"]


async def _wait_for_signal(timeout: float | None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await asyncio.wait_for(stop.wait(), timeout)
    except TimeoutError:
        pass


def under_systemd(env: Mapping[str, str]) -> bool:
    """Whether systemd runs us as a service (it sets INVOCATION_ID for each service run)."""
    return bool(env.get("INVOCATION_ID") or env.get("NOTIFY_SOCKET"))


async def _show_settings_error(message: str, argv: Sequence[str]) -> int:
    """Under systemd, serve the status page with the error for a while, then exit so that
    systemd starts us again; at a terminal, exit at once (the one line said it all)."""
    host, port, hold = _lenient(argv, os.environ)
    if hold <= 0 or not under_systemd(os.environ):
        return 2
    try:
        sockets = tornado.netutil.bind_sockets(port, host)
    except OSError:
        return 2
    shown = "the box's address" if host in ("0.0.0.0", "::", "") else host
    print(
        f"pits-agent: shown on http://{shown}:{port}/ for {hold:g} s", file=sys.stderr, flush=True
    )
    from pits_appliance.server import StatusServer
    from pits_appliance.status import make_status_app

    server = StatusServer(make_status_app(BrokenSettings(message)))
    server.add_sockets(sockets)
    await _wait_for_signal(hold)
    server.stop()
    return 2


def _print_pits_id(config: AgentConfig) -> int:
    """For the image's boot scripts (the hostname is pitlink-<short id>)."""
    from pits_appliance.tokens import pits_id_from_token

    try:
        if config.pits_id:
            pits_id = config.pits_id
        else:
            token = config.token or config.token_file.read_text(encoding="utf-8").strip()
            pits_id = pits_id_from_token(token)
    except (ConfigError, OSError) as exc:
        print(f"pits-agent: {exc}", file=sys.stderr)
        return 2
    print(pits_id)
    return 0


async def _run(argv: Sequence[str]) -> int:
    from pits_appliance.agent import Agent

    try:
        config = load_config(argv)
    except ConfigError as exc:
        print(f"pits-agent: {exc}", file=sys.stderr, flush=True)
        return await _show_settings_error(str(exc), argv)
    if config.print_pits_id:
        return _print_pits_id(config)
    jsonlog.setup(config.log_level)
    lognoise.install()
    try:
        agent = Agent(config)
    except ConfigError as exc:
        print(f"pits-agent: {exc}", file=sys.stderr, flush=True)
        return await _show_settings_error(str(exc), argv)
    try:
        await agent.start()
    except ConfigError as exc:
        print(f"pits-agent: {exc}", file=sys.stderr, flush=True)
        await agent.stop()
        return await _show_settings_error(str(exc), argv)
    await _wait_for_signal(None)
    await agent.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    try:
        code = asyncio.run(_run(sys.argv[1:] if argv is None else argv))
    except OSError as exc:
        print(f"pits-agent: {exc}", file=sys.stderr)
        sys.exit(1)
    sys.exit(code)
