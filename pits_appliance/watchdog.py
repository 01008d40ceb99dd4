"""The connectivity watchdog: probe, classify, recover, and say what it found.

The classification is in `connectivity.py` and the escalation in `recovery.py`, both pure;
this module does the probing and runs the actions.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import shlex
import shutil
import socket
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import tornado.httpclient
import tornado.httputil
import tornado.iostream
from tornado.simple_httpclient import HTTPTimeoutError

from pits_appliance.clock import WallClock
from pits_appliance.config import AgentConfig
from pits_appliance.connectivity import (
    STATES,
    Probe,
    Schedule,
    Verdict,
    captive_api_from_networkd,
    classify,
    combine,
    https_upgrade,
    judge,
    parse_captive_api,
)
from pits_appliance.httpclient import HTTPClient
from pits_appliance.metrics import AgentMetrics
from pits_appliance.recovery import RECONNECT, RERESOLVE, RESTART_NETWORK, Recovery
from pits_appliance.state import AgentState
from wire.errors import DamagedError
from wire.untrusted import read_bounded

log = logging.getLogger("pitlink.pits.watchdog")

PROBE_TIMEOUT = 5.0
NETWORKD_LINKS = Path("/run/systemd/netif/links")


def probe_urls(cloud_url: str) -> tuple[str, str | None]:
    """The HTTP probe URL, and the HTTPS one when the relay is reached over TLS."""
    parts = urlsplit(cloud_url)
    secure = parts.scheme in ("https", "wss")
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    http_netloc = host if secure else parts.netloc
    http = urlunsplit(("http", http_netloc, "/generate_204", "", ""))
    https = urlunsplit(("https", parts.netloc, "/generate_204", "", "")) if secure else None
    return http, https


def _failure(exc: BaseException) -> Probe:
    if isinstance(exc, socket.gaierror):
        return Probe(failure="dns", detail=f"DNS: {exc.strerror or exc}")
    if isinstance(exc, HTTPTimeoutError | asyncio.TimeoutError | TimeoutError):
        return Probe(failure="timeout", detail="no answer in time")
    if isinstance(exc, ssl.SSLError):
        return Probe(failure="tls", detail=f"TLS: {exc}")
    if isinstance(exc, ConnectionRefusedError):
        return Probe(failure="refused", detail="connection refused")
    if isinstance(exc, OSError) and exc.errno in (
        errno.ENETUNREACH,
        errno.EHOSTUNREACH,
        errno.EADDRNOTAVAIL,
        errno.ENETDOWN,
    ):
        return Probe(failure="no_route", detail=f"no route: {exc.strerror}")
    return Probe(failure="error", detail=f"{type(exc).__name__}: {exc}")


class _Cap(tornado.httputil.HTTPInputError):
    pass


async def probe(
    client: HTTPClient,
    url: str,
    tls: ssl.SSLContext | None = None,
) -> Probe:
    """GET the URL without following redirects, reading at most a little of the body."""
    size = 0

    def on_chunk(chunk: bytes) -> None:
        nonlocal size
        size += len(chunk)
        if size > 65536:
            raise _Cap("enough of the page")

    request = tornado.httpclient.HTTPRequest(
        url,
        follow_redirects=False,
        connect_timeout=PROBE_TIMEOUT,
        request_timeout=PROBE_TIMEOUT,
        streaming_callback=on_chunk,
        headers={"Cache-Control": "no-cache"},
        ssl_options=tls,
    )
    try:
        response = await client.fetch(request, raise_error=False)
    except tornado.httpclient.HTTPClientError as exc:
        if size > 65536:
            return Probe(status=200, body_length=size)
        return _failure(exc)
    except Exception as exc:
        return _failure(exc)
    return Probe(
        status=response.code,
        location=response.headers.get("Location"),
        body_length=size,
        date=response.headers.get("Date"),
    )


def captive_api_uri(links: Path = NETWORKD_LINKS) -> str | None:
    """The RFC 8910 captive portal API URI, where systemd-networkd exposes one."""
    try:
        files = sorted(links.iterdir())
    except OSError:
        return None
    for file in files:
        try:
            # networkd's own file, but what it holds came from the venue's DHCP server.
            uri = captive_api_from_networkd(
                read_bounded(file, 64 * 1024).decode("utf-8", "replace")
            )
        except (OSError, DamagedError):
            continue
        if uri:
            return uri
    return None


class Watchdog:
    """Checks connectivity on a schedule and escalates recovery while the link is down."""

    def __init__(
        self,
        *,
        config: AgentConfig,
        state: AgentState,
        metrics: AgentMetrics,
        reconnect: Callable[[], None],
        dial: Callable[[], None],
        wall_clock: WallClock | None = None,
        tls: ssl.SSLContext | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.config = config
        self.wall_clock = wall_clock or WallClock()
        self.tls = tls
        self.state = state
        self.metrics = metrics
        self.reconnect = reconnect  # drop the link, even one in its handshake, and dial again
        self.dial = dial  # dial now if the link is waiting to
        self.clock = clock
        self.schedule = Schedule(self.config.check_interval)
        self.recovery = Recovery(allow_network_restart=self.config.allow_network_restart)
        self.http_url, self.https_url = probe_urls(self.config.cloud_url)
        self.client = HTTPClient(max_clients=4)
        self.checks = 0
        self._wake = asyncio.Event()

    def check_now(self) -> None:
        self._wake.set()

    async def check(self) -> Verdict:
        """Probe (HTTP and HTTPS in parallel) and ask the portal API where there is one."""
        probes = [probe(self.client, self.http_url)]
        if self.https_url:
            probes.append(probe(self.client, self.https_url, self.tls))
        results = await asyncio.gather(*probes)
        await self._check_the_time(results)
        verdict = combine(classify(results[0]), classify(results[1]) if len(results) > 1 else None)
        if self.https_url is None and https_upgrade(results[0], self.config.cloud_url):
            # The relay's front answered, asking for https: the Internet is there.
            return Verdict(state="full", relay="https", detail=f"redirected ({results[0].status})")
        elsewhere = self.config.internet_check_url
        if verdict.state != "full" and elsewhere:
            verdict = judge(verdict, classify(await probe(self.client, elsewhere)))
        api = self.config.captive_portal_api or captive_api_uri()
        if api and verdict.state != "full":
            try:
                answer = await self.client.fetch(
                    api,
                    headers={"Accept": "application/captive+json"},
                    request_timeout=PROBE_TIMEOUT,
                    raise_error=False,
                )
                from_api = parse_captive_api(answer.body or b"")
                if from_api is not None:
                    verdict = Verdict(
                        state="portal",
                        portal_url=from_api.portal_url or verdict.portal_url,
                        detail=from_api.detail,
                    )
            except Exception as exc:
                log.info("captive portal API did not answer", extra={"error": str(exc)})
        return verdict

    async def _check_the_time(self, results: list[Probe]) -> None:
        """The relay's `Date` says what time it is. When its certificate is "not yet valid"
        (our clock is behind), the `Date` is read over TLS without checking the certificate:
        it is only as trustworthy as a plain HTTP one, which is why the clock only moves
        forward (see pits_appliance.clock)."""
        date = next((r.date for r in results if r.date), None)
        if date is None and self.https_url and any("not yet valid" in r.detail for r in results):
            with contextlib.suppress(Exception):
                answer = await self.client.fetch(
                    self.https_url,
                    validate_cert=False,
                    follow_redirects=False,
                    request_timeout=PROBE_TIMEOUT,
                    raise_error=False,
                )
                date = answer.headers.get("Date")
        self.state.set("clock", self.wall_clock.observe(date))
        self.state.clock_skew = self.wall_clock.skew

    def record(self, verdict: Verdict) -> None:
        state = self.state
        before, relay_before = state.connectivity, state.relay_trouble
        state.set("connectivity", verdict.state)
        state.portal_url = verdict.portal_url
        state.connectivity_detail = verdict.detail
        state.relay_trouble = verdict.relay
        for name in STATES:
            self.metrics.connectivity.labels(name).set(1 if name == verdict.state else 0)
        if before != verdict.state or relay_before != verdict.relay:
            log.info(
                "connectivity changed",
                extra={
                    "from": before,
                    "to": verdict.state,
                    "relay": verdict.relay,
                    "portal": verdict.portal_url,
                    "detail": verdict.detail,
                },
            )
            if verdict.state == "full" and not state.ws_connected:
                # The way out is open again (a portal let us through): dial now. Not a
                # reconnect: the link may be in its handshake (the first check often ends
                # there, at start), and dropping that would only cost a connection.
                self.dial()

    async def act(self, action: str) -> None:
        if action == RESTART_NETWORK and self.state.relay_trouble:
            # Other sites answer: the network is fine, restarting it would only cut the box off.
            log.info("recovery step skipped: the Internet answers", extra={"action": action})
            return
        self.state.recovery_action = action
        self.state.recovery_at = time.time()
        log.warning("recovery step", extra={"action": action})
        if action == RECONNECT:
            self.reconnect()
        elif action == RERESOLVE:
            if shutil.which("resolvectl"):
                await self._run(["resolvectl", "flush-caches"])
            self.reconnect()  # the next dial resolves the relay's name afresh
        elif action == RESTART_NETWORK:
            await self._run(shlex.split(self.config.network_restart_command))

    async def _run(self, argv: list[str]) -> None:
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
            )
            _, err = await asyncio.wait_for(proc.communicate(), 60)
        except (OSError, TimeoutError) as exc:
            log.error("recovery command failed", extra={"command": argv[0], "error": str(exc)})
            return
        if proc.returncode:
            log.error(
                "recovery command failed",
                extra={
                    "command": argv[0],
                    "code": proc.returncode,
                    "error": err.decode(errors="replace")[:300],
                },
            )

    async def run(self) -> None:
        while True:
            self.checks += 1
            verdict = await self.check()
            self.record(verdict)
            for action in self.recovery.observe(self.state.ws_connected, self.clock()):
                await self.act(action)
            self.wall_clock.save()
            # A relay in trouble is checked again soon, as if the Internet were not there.
            delay = self.schedule.after("limited" if verdict.relay else verdict.state)
            if not self.state.ws_connected:
                delay = min(delay, self.recovery_tick)
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), delay)
            except TimeoutError:
                pass

    @property
    def recovery_tick(self) -> float:
        """While the link is down, look at least this often so recovery steps come on time."""
        return min(10.0, self.config.check_interval)

    async def close(self) -> None:
        """Close the client, once the probes still running (a cancelled check's too) end."""
        await self.client.close()
