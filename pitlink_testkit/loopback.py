"""Loopback ports: one that nobody listens on, and one that serves a handler a test plays."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator

import tornado.httpserver
import tornado.netutil
import tornado.web


def free_port() -> int:
    """A loopback port nobody listens on now, for a program that must be told its port.

    Parts started in the test's own process listen on port 0 instead and say which port they
    got; only a separate process, or a port that must stay the same across restarts, needs this.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
