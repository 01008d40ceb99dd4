"""Tornado's HTTP client, made safe to cancel: the agent's HTTP requests to the Internet (probes,
update bundles) go through it; the WebSocket's dial is CloudLink's own to settle, and requests
to FPVTrackside are the origin's own (pits_appliance.keepalive, which closes its sockets itself).

A tornado fetch cannot be cancelled. Cancelling the task that awaits it (the agent's stop, a
withdrawn update) cancels only its future: the request runs on, and when it then fails (the
server goes away, its timeout passes) tornado logs "Exception after Future was cancelled" at
ERROR, its socket open until then. So here a cancelled fetch runs to its end without an
orphaned future to fail, and `close` waits (a little) for the fetches still running, so that
their sockets are closed while the loop runs rather than left to the garbage collector (as
CloudLink.settle does for the links the box closed).
"""

from __future__ import annotations

import asyncio
from typing import Any

import tornado.httpclient

# How long close waits for the fetches still running (the agent stops in about this at worst).
SETTLE_S = 2.0


class HTTPClient:
    """A tornado AsyncHTTPClient of its own (settings as for it) whose fetches may be cancelled."""

    def __init__(self, **settings: Any):
        self._client = tornado.httpclient.AsyncHTTPClient(force_instance=True, **settings)
        self._running: set[asyncio.Future[tornado.httpclient.HTTPResponse]] = set()

    async def fetch(
        self, request: tornado.httpclient.HTTPRequest | str, **kwargs: Any
    ) -> tornado.httpclient.HTTPResponse:
        """As AsyncHTTPClient.fetch. Cancelled, the request runs on to its end, and what it ends
        with is dropped."""
        running = self._client.fetch(request, **kwargs)
        self._running.add(running)
        running.add_done_callback(self._ended)
        return await asyncio.shield(running)

    def _ended(self, running: asyncio.Future[tornado.httpclient.HTTPResponse]) -> None:
        self._running.discard(running)
        if not running.cancelled():
            # Seen here, so that an error nobody awaits any more is not logged as never
            # retrieved; a caller still waiting gets it all the same, through the shield.
            running.exception()

    @property
    def running(self) -> int:
        """Fetches not finished yet, those whose caller was cancelled included."""
        return len(self._running)

    async def close(self, timeout: float = SETTLE_S) -> None:
        """Wait up to `timeout` for the fetches still running, then close the client."""
        try:
            if self._running:
                await asyncio.wait(set(self._running), timeout=timeout)
        finally:
            self._client.close()
