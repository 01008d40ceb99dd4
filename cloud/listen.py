"""The relay's listening sockets and HTTP servers."""

from __future__ import annotations

import errno
import socket

import tornado.httpserver
import tornado.httputil
import tornado.netutil

from cloud.config import CloudConfig
from wire.settings import SettingsError


def bind(port: int, host: str) -> list[socket.socket]:
    """Listen, or say in one line why not (the port is taken, the address is not ours)."""
    try:
        return tornado.netutil.bind_sockets(port, host)
    except OSError as exc:
        why = {
            errno.EADDRINUSE: "the port is taken (another relay, or another program?)",
            errno.EADDRNOTAVAIL: "that address is not one of this machine's",
            errno.EACCES: "ports below 1024 need privileges: use a higher one behind a proxy",
        }.get(exc.errno or 0, exc.strerror)
        raise SettingsError(f"cannot listen on {host}:{port}: {why}") from None


def http_server(
    app: tornado.httputil.HTTPServerConnectionDelegate, config: CloudConfig
) -> tornado.httpserver.HTTPServer:
    """An HTTP server that lets no client hold a connection open for long with nothing sent."""
    return tornado.httpserver.HTTPServer(
        app,
        xheaders=False,
        idle_connection_timeout=config.idle_timeout,  # also the header deadline
        body_timeout=config.idle_timeout,
        max_header_size=config.max_header_bytes,
        # No request has a body larger than an admin call's few hundred bytes.
        max_body_size=64 * 1024,
    )
