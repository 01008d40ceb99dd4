"""`pits-agent`: run the agent until SIGINT or SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

from pits_appliance import ConfigError
from pits_appliance.config import load_config
from wire import jsonlog

log = logging.getLogger("pitlink.pits.agent")


async def _run(argv: Sequence[str]) -> int:
    from pits_appliance.agent import Agent

    config = load_config(argv)
    jsonlog.setup(config.log_level)
    agent = Agent(config)
    await agent.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await agent.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    try:
        code = asyncio.run(_run(sys.argv[1:] if argv is None else argv))
    except ConfigError as exc:
        print(f"pits-agent: {exc}", file=sys.stderr)
        sys.exit(2)
    except OSError as exc:
        print(f"pits-agent: {exc}", file=sys.stderr)
        sys.exit(1)
    sys.exit(code)
