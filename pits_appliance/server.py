"""The status port's HTTP server, hardened for a LAN that anybody can join.

Anyone on the pits network reaches the status port, so nothing they do to it may cost the box
more than a bounded share of its descriptors, memory or log:

- slow clients: a request's header must arrive within `IDLE_TIMEOUT` (tornado's idle timeout
  is also its header timeout), its body within `BODY_TIMEOUT`; headers over 8 KiB close the
  connection;
- many clients: at most `ConnectionCap.limit` connections at once, and `per_address` from one
  address; past a cap the oldest connection that has waited for a request longer than a
  second makes room, or else the newcomer is closed at once (its descriptor lives an instant);
- a full descriptor table (EMFILE and friends): the accept loop pauses instead of spinning,
  and says so in at most one line a second, with the count of lines it held back.

Who may ask (the Host check against DNS rebinding) is decided here too, as pure functions the
handlers in `status.py` call.
"""

from __future__ import annotations

import errno
import ipaddress
import itertools
import logging
import re
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import tornado.httpserver
import tornado.httputil
import tornado.iostream
from tornado.ioloop import IOLoop

from wire.budget import Throttle

log = logging.getLogger("pitlink.pits.status")

IDLE_TIMEOUT = 10.0
BODY_TIMEOUT = 10.0
MAX_HEADER_SIZE = 8 * 1024
MAX_BODY_SIZE = 64 * 1024  # the actions have no body at all
MAX_BUFFER_SIZE = 256 * 1024
ACCEPT_BATCH = 128  # as tornado: accept at most this many per wake-up, then let others run
RESOURCE_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


# -- how many connections ---------------------------------------------------------------------


@dataclass
class _Held:
    address: str
    waiting_since: float | None  # when it began waiting for a request; None while serving one


class ConnectionCap:
    """Which connections the status port holds; pure, the time is passed in.

    `admit(address, now)` returns the new connection's key (None: close it at once) and the
    key of a held connection to close to make room (or None). Only a connection that has been
    waiting for a request longer than `grace` seconds is closed for a newcomer: one being
    served never is, and a newcomer has `grace` to send its request before it can be.
    """

    def __init__(self, limit: int = 64, *, per_address: int = 16, grace: float = 1.0):
        self.limit = limit
        self.per_address = per_address
        self.grace = grace
        self._held: dict[int, _Held] = {}
        self._per: Counter[str] = Counter()
        self._keys = itertools.count(1)

    def __len__(self) -> int:
        return len(self._held)

    def admit(self, address: str, now: float) -> tuple[int | None, int | None]:
        evict = None
        if self._per[address] >= self.per_address:
            evict = self._oldest_waiting(now, address)
            if evict is None:
                return None, None
        elif len(self._held) >= self.limit:
            evict = self._oldest_waiting(now, None)
            if evict is None:
                return None, None
        if evict is not None:
            self.release(evict)
        key = next(self._keys)
        self._held[key] = _Held(address, now)
        self._per[address] += 1
        return key, evict

    def serving(self, key: int) -> None:
        """A request's header arrived on this connection."""
        held = self._held.get(key)
        if held is not None:
            held.waiting_since = None

    def waiting(self, key: int, now: float) -> None:
        """This connection now waits for its next request."""
        held = self._held.get(key)
        if held is not None:
            held.waiting_since = now

    def release(self, key: int) -> None:
        held = self._held.pop(key, None)
        if held is not None:
            self._per[held.address] -= 1
            if self._per[held.address] <= 0:
                del self._per[held.address]

    def _oldest_waiting(self, now: float, address: str | None) -> int | None:
        oldest: tuple[float, int] | None = None
        for key, held in self._held.items():
            since = held.waiting_since
            if since is None or now - since < self.grace:
                continue
            if address is not None and held.address != address:
                continue
            if oldest is None or since < oldest[0]:
                oldest = (since, key)
        return None if oldest is None else oldest[1]


class AcceptGuard:
    """What to do when accept() fails: pause (doubling while it goes on), and log rarely.

    `failed(err, now)` returns the pause and, when a line should be logged, how many were
    held back since the last one (else None). `succeeded()` resets the pause.
    """

    def __init__(self, *, first_pause: float = 0.05, max_pause: float = 1.0, every: float = 1.0):
        self.first_pause = first_pause
        self.max_pause = max_pause
        self._pause = first_pause
        self._throttle = Throttle(every)

    def failed(self, err: int | None, now: float) -> tuple[float, int | None]:
        pause = self._pause
        self._pause = min(self.max_pause, pause * 2)
        return pause, self._throttle.allow(f"accept-{err}", now)

    def succeeded(self) -> None:
        self._pause = self.first_pause


def peer_of(address: Any) -> str:
    """Whose share a connection counts against: its IPv4 address, or its IPv6 /64 (one host
    may use a whole /64)."""
    ip = _address(str(address[0])) if isinstance(address, tuple) and address else None
    if ip is None:
        return ""
    if isinstance(ip, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


# -- who may ask --------------------------------------------------------------------------------


def short_id(pits_id: str) -> str:
    """The image's short id (see image/rootfs/usr/lib/pitlink/pitlink-hostname): the first 8
    characters, lower-cased, anything but a-z and 0-9 a dash, no dashes at the end."""
    short = "".join(c if re.fullmatch(r"[a-z0-9]", c) else "-" for c in pits_id[:8].lower())
    return short.rstrip("-")


# A Host header: a bracketed IPv6 address (with a zone, perhaps) or a name or IPv4 address,
# then perhaps a port.
_HOST = re.compile(r"(?:\[(?P<v6>[0-9a-f:.]+(?:%[\w.-]+)?)\]|(?P<name>[^\[\]:/@\s]+))(?::\d{1,5})?")


def _split_host(host: str) -> str | None:
    """The name or address in a Host header, lower-cased, without port, brackets or final dot."""
    if len(host) > 300:
        return None
    match = _HOST.fullmatch(host.strip().lower())
    if match is None:
        return None
    name = match.group("v6") or match.group("name").rstrip(".")
    return name or None


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


LAN_SUFFIXES = frozenset(
    {"local", "lan", "home", "home.arpa", "localdomain", "internal", "fritz.box", "box"}
)


def host_allowed(
    host: str | None, *, local_address: str | None, pits_id: str, hostname: str
) -> bool:
    """Whether a request's Host names this box, so that it cannot come from DNS rebinding.

    The box's own names are `localhost`, `pitlink-<short id>` and its host name, bare or with a
    home network's suffix (`.local`, `.lan`, `.home`, ...); its addresses are the loopback ones
    and the local address the request arrived on (the server socket's own address for that
    connection).
    """
    if host is None:
        return False
    name = _split_host(host)
    if name is None:
        return False
    ip = _address(name)
    if ip is not None:
        if ip.is_loopback:
            return True
        local = _address(local_address) if local_address else None
        return local is not None and ip == local
    bases = {hostname.strip().lower().rstrip(".")}
    short = short_id(pits_id)
    if short:
        bases.add(f"pitlink-{short}")
    bases.discard("")
    if name == "localhost" or name in bases:
        return True
    # A router that registers its DHCP clients in its own DNS serves the box under one of the
    # usual home-network suffixes: those are the box's names too, a stranger's domain is not.
    base, _, suffix = name.partition(".")
    return base in bases and suffix in LAN_SUFFIXES


def same_origin(
    origin: str | None, fetch_site: str | None, *, host: str | None, scheme: str
) -> bool:
    """Whether a POST comes from the status page itself, by its `Origin` or `Sec-Fetch-Site`.

    At least one must say same-origin, and neither may say otherwise: an `Origin` must be
    `<scheme>://<Host>` (default port or not), a `Sec-Fetch-Site` must be `same-origin`.
    """
    if fetch_site is not None and fetch_site.strip().lower() != "same-origin":
        return False
    if origin is None:
        return fetch_site is not None
    if host is None:
        return False
    try:
        o = urlsplit(origin.strip())
        h = urlsplit(f"{scheme}://{host.strip()}")
        default = {"http": 80, "https": 443}.get(scheme)
        return (
            o.scheme.lower() == scheme
            and o.hostname is not None
            and o.hostname == h.hostname
            and (o.port or default) == (h.port or default)
            and o.path in ("", "/")
            and not o.query
            and not o.username
        )
    except ValueError:
        return False


def local_address(request: tornado.httputil.HTTPServerRequest) -> str | None:
    """The server socket's own address for the connection a request came on."""
    stream = getattr(request.connection, "stream", None)
    sock = getattr(stream, "socket", None)
    if sock is None:
        return None
    try:
        return str(sock.getsockname()[0])
    except (OSError, IndexError):
        return None


# -- the server ---------------------------------------------------------------------------------


class _Tracking(tornado.httputil.HTTPMessageDelegate):
    """Tells the cap when a request's header has arrived; otherwise the application's own."""

    def __init__(self, inner: tornado.httputil.HTTPMessageDelegate, on_headers: Callable[[], None]):
        self.inner = inner
        self.on_headers = on_headers

    def headers_received(
        self,
        start_line: tornado.httputil.RequestStartLine | tornado.httputil.ResponseStartLine,
        headers: tornado.httputil.HTTPHeaders,
    ) -> Any:
        self.on_headers()
        return self.inner.headers_received(start_line, headers)

    def data_received(self, chunk: bytes) -> Any:
        return self.inner.data_received(chunk)

    def finish(self) -> None:
        self.inner.finish()

    def on_connection_close(self) -> None:
        self.inner.on_connection_close()


class _Acceptor:
    """Accepts connections on one listening socket; on accept errors it pauses, never spins."""

    def __init__(
        self,
        sock: socket.socket,
        on_connection: Callable[[socket.socket, Any], None],
        guard: AcceptGuard,
        clock: Callable[[], float],
    ):
        self.sock = sock
        self.on_connection = on_connection
        self.guard = guard
        self.clock = clock
        self.loop = IOLoop.current()
        self._timer: object | None = None
        self._listening = False

    def start(self) -> None:
        self._timer = None
        self.loop.add_handler(self.sock, self._ready, IOLoop.READ)
        self._listening = True

    def stop(self) -> None:
        if self._listening:
            self.loop.remove_handler(self.sock)
            self._listening = False
        if self._timer is not None:
            self.loop.remove_timeout(self._timer)
            self._timer = None
        self.sock.close()

    def _ready(self, fd: Any, events: int) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, address = self.sock.accept()
            except BlockingIOError:
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:
                self._pause(exc)
                return
            self.guard.succeeded()
            self.on_connection(conn, address)

    def _pause(self, exc: OSError) -> None:
        pause, held = self.guard.failed(exc.errno, self.clock())
        if held is not None:
            name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
            log.warning(
                "status port cannot accept connections; pausing",
                extra={
                    "error": name,
                    "resource": exc.errno in RESOURCE_ERRORS,
                    "pause_s": pause,
                    "held_back": held,
                },
            )
        self.loop.remove_handler(self.sock)
        self._listening = False
        self._timer = self.loop.call_later(pause, self.start)


class StatusServer(tornado.httpserver.HTTPServer):
    """Tornado's HTTP server with the status port's limits (see the module's docstring)."""

    def initialize(  # type: ignore[override]
        self,
        request_callback: tornado.httputil.HTTPServerConnectionDelegate,
        *,
        cap: ConnectionCap | None = None,
        clock: Callable[[], float] = time.monotonic,
        idle_connection_timeout: float = IDLE_TIMEOUT,
        body_timeout: float = BODY_TIMEOUT,
        max_header_size: int = MAX_HEADER_SIZE,
    ) -> None:
        super().initialize(
            request_callback,
            idle_connection_timeout=idle_connection_timeout,
            body_timeout=body_timeout,
            max_header_size=max_header_size,
            max_body_size=MAX_BODY_SIZE,
            max_buffer_size=MAX_BUFFER_SIZE,
        )
        self.cap = cap if cap is not None else ConnectionCap()
        self.clock = clock
        self.guard = AcceptGuard()
        self._throttle = Throttle(1.0)
        self._acceptors: list[_Acceptor] = []
        self._streams: dict[int, tornado.iostream.IOStream] = {}
        self._keys: dict[tornado.iostream.IOStream, int] = {}

    def add_sockets(self, sockets: Iterable[socket.socket]) -> None:
        for sock in sockets:
            acceptor = _Acceptor(sock, self._accepted, self.guard, self.clock)
            self._acceptors.append(acceptor)
            acceptor.start()

    def stop(self) -> None:
        for acceptor in self._acceptors:
            acceptor.stop()
        self._acceptors = []
        super().stop()

    def _accepted(self, conn: socket.socket, address: Any) -> None:
        now = self.clock()
        key, evict = self.cap.admit(peer_of(address), now)
        if evict is not None:
            self._note("closed an idle connection to make room", now)
            stream = self._streams.pop(evict, None)
            if stream is not None:
                self._keys.pop(stream, None)
                stream.close()
        if key is None:
            conn.close()
            self._note("status port full: closed a new connection", now)
            return
        try:
            stream = tornado.iostream.IOStream(
                conn, max_buffer_size=MAX_BUFFER_SIZE, read_chunk_size=self.read_chunk_size
            )
        except OSError:
            self.cap.release(key)
            conn.close()
            return
        self._streams[key] = stream
        self._keys[stream] = key
        self.handle_stream(stream, address)

    def _note(self, event: str, now: float) -> None:
        held = self._throttle.allow(event, now)
        if held is not None:
            log.warning(event, extra={"held_back": held, "connections": len(self.cap)})

    def start_request(
        self, server_conn: object, request_conn: tornado.httputil.HTTPConnection
    ) -> tornado.httputil.HTTPMessageDelegate:
        delegate = super().start_request(server_conn, request_conn)
        key = self._keys.get(getattr(server_conn, "stream", None))  # type: ignore[arg-type]
        if key is None:
            return delegate
        held: int = key
        self.cap.waiting(held, self.clock())
        return _Tracking(delegate, lambda: self.cap.serving(held))

    def on_close(self, server_conn: object) -> None:
        super().on_close(server_conn)
        stream = getattr(server_conn, "stream", None)
        key = self._keys.pop(stream, None) if stream is not None else None
        if key is not None:
            self._streams.pop(key, None)
            self.cap.release(key)
