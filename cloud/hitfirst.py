"""The public listener's first look at each request: a fresh cache hit is answered at once
(cloud.hits), a live feed subscription is started (cloud.feed_http), everything else goes to
the application.

Below RequestHandler on purpose: a hit needs no handler, route or access line, only its
prepared response. Everything Hits declines goes to the application unchanged, but for its
Host, written once here the way every part of the relay reads it (cloud.hosts.same_host).
"""

from __future__ import annotations

from typing import Any

import tornado.httputil
import tornado.web

from cloud.feed_http import FeedGate, FeedRequest
from cloud.hits import Hit, Hits
from cloud.hosts import same_host


class HitFirst(tornado.httputil.HTTPServerConnectionDelegate):
    """The public listener's delegate: fresh hits here, the rest to `app`."""

    def __init__(
        self,
        hits: Hits,
        app: tornado.web.Application,
        watch: Any,
        feeds: FeedGate | None = None,
    ):
        self.hits = hits
        self.app = app
        self.watch = watch  # cloud.http_base.Stalls.watch: a hit's write has a deadline too
        self.feeds = feeds

    def start_request(
        self, server_conn: object, request_conn: tornado.httputil.HTTPConnection
    ) -> tornado.httputil.HTTPMessageDelegate:
        return _HitOrApp(self, server_conn, request_conn)

    def on_close(self, server_conn: object) -> None:
        self.app.on_close(server_conn)


class _HitOrApp(tornado.httputil.HTTPMessageDelegate):
    def __init__(
        self, parent: HitFirst, server_conn: object, request_conn: tornado.httputil.HTTPConnection
    ):
        self.parent = parent
        self.server_conn = server_conn
        self.request_conn = request_conn
        self.hit: Hit | None = None
        self.feed: FeedRequest | None = None
        self.app: tornado.httputil.HTTPMessageDelegate | None = None

    def headers_received(
        self,
        start_line: tornado.httputil.RequestStartLine | tornado.httputil.ResponseStartLine,
        headers: tornado.httputil.HTTPHeaders,
    ) -> Any:
        assert isinstance(start_line, tornado.httputil.RequestStartLine)
        host = headers.get("Host")
        if host is not None:
            # `club-b.relay.example.` is `club-b.relay.example`: Tornado's host rules compare
            # names as they are, and must not see another name than the rest of the relay.
            same = same_host(host)
            if same != host:
                headers["Host"] = same
        context = getattr(self.request_conn, "context", None)  # HTTP1Connection's: the peer
        method, path, version = start_line.method, start_line.path, start_line.version
        peer = getattr(context, "remote_ip", "")
        feeds = self.parent.feeds
        if feeds is not None:
            self.feed = feeds.match(method, path, version, headers, peer)
            if self.feed is not None:
                return None
        self.hit = self.parent.hits.answer(method, path, version, headers, peer)
        if self.hit is not None:
            return None
        self.app = self.parent.app.start_request(self.server_conn, self.request_conn)
        return self.app.headers_received(start_line, headers)

    def data_received(self, chunk: bytes) -> Any:
        if self.app is not None:
            return self.app.data_received(chunk)
        return None

    def finish(self) -> None:
        # Written only once the request has been read, as RequestHandler does: a response
        # finished before that would make Tornado close the connection after it.
        if self.app is not None:
            self.app.finish()
            return
        if self.feed is not None:
            assert self.parent.feeds is not None
            self.parent.feeds.begin(self.feed, self.request_conn)
            return
        assert self.hit is not None
        # One pre-encoded block, which HTTP1Connection.write takes in place of write_headers
        # (documented, and what a hit needs: the constant headers were formatted once).
        written = self.request_conn.write(self.hit.data)
        self.parent.watch(written, self.request_conn, "a cache hit")
        self.request_conn.finish()

    def on_connection_close(self) -> None:
        if self.app is not None:
            self.app.on_connection_close()
