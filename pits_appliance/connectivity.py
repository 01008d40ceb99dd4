"""How connected the box is, decided the way operating systems decide it.

Pure: the probe's outcome goes in, a verdict comes out. Like Android, ChromeOS and
NetworkManager, the box asks for a URL known to answer an empty 204 (the relay's
`/generate_204`) and does not follow redirects:

- `full`: a 204, or a 200 with an empty or one-byte body (some transparent proxies do that);
- `portal`: a 3xx (its Location is where to sign in), or a 200 with a page;
- `limited`: DNS works but the probe times out, is refused or fails;
- `none`: no route, no address, or DNS fails.

The relay's check alone cannot tell a dead uplink from a dead relay (or a typo in its name):
when it fails, the box asks a well-known address that is not the relay (INTERNET_CHECK_URL,
by default the one Android asks). When that one answers, the Internet is `full` and the
verdict's `relay` says the trouble is the relay's: `unreachable`, or `https` when the relay's
plain address redirects to https on the same host (CLOUD_URL should say https://). A portal
intercepts both checks, so it is still found.

The portal's address comes from the network (a redirect's Location, the RFC 8908 API) and is
shown on the status page as a link, so only an absolute http or https URL with a host, of at
most `MAX_PORTAL_URL` characters, is kept: anything else (`javascript:`, `data:`, a relative
path) leaves no link, and the page says to open any web page instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

from wire.errors import DamagedError
from wire.untrusted import load_json

State = Literal["full", "portal", "limited", "none", "unknown"]
# The Internet answers but the relay does not (`unreachable`), or it wants https (`https`).
RelayTrouble = Literal["unreachable", "https"]
STATES: tuple[State, ...] = ("full", "portal", "limited", "none", "unknown")

# What a probe attempt ended in, before any HTTP status was seen.
Failure = Literal["dns", "no_route", "timeout", "refused", "tls", "error"]


@dataclass(frozen=True, kw_only=True)
class Probe:
    """One probe's outcome: an HTTP answer, or the failure that prevented one."""

    status: int | None = None
    location: str | None = None
    body_length: int = 0
    failure: Failure | None = None
    detail: str = ""
    date: str | None = None  # the answer's Date header: what time the relay says it is


@dataclass(frozen=True, kw_only=True)
class Verdict:
    """The connectivity state, where the portal is (if any), and a word on why."""

    state: State
    portal_url: str | None = None
    detail: str = ""
    relay: RelayTrouble | None = None


MAX_PORTAL_URL = 2000
MAX_CAPTIVE_API_BYTES = 64 * 1024  # RFC 8908's answer is a few hundred bytes


def portal_link(url: object) -> str | None:
    """`url` if it is fit to be shown as a link: absolute http(s), with a host, not too long."""
    if not isinstance(url, str) or not url or len(url) > MAX_PORTAL_URL:
        return None
    if any(ord(c) <= 0x20 or ord(c) == 0x7F for c in url):
        return None  # browsers drop tabs, newlines and spaces: "java\tscript:" is javascript:
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises ValueError when the port is not a number in range
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return None
    if "\\" in url:
        return None  # a browser reads http:\\evil as http://evil; no portal needs one
    return url


def classify(probe: Probe) -> Verdict:
    """The verdict on one probe."""
    if probe.failure is not None:
        if probe.failure in ("dns", "no_route"):
            return Verdict(state="none", detail=probe.detail or probe.failure)
        return Verdict(state="limited", detail=probe.detail or probe.failure)
    status = probe.status or 0
    if status == 204 or (status == 200 and probe.body_length <= 1):
        return Verdict(state="full")
    if 300 <= status < 400:
        return Verdict(
            state="portal",
            portal_url=portal_link(probe.location),
            detail=f"redirected ({status})" if probe.location else f"{status} without a Location",
        )
    if status == 200:
        return Verdict(state="portal", detail="a page instead of the empty answer")
    return Verdict(state="limited", detail=f"unexpected HTTP {status}")


def combine(http: Verdict, https: Verdict | None) -> Verdict:
    """Join the HTTP and (for a `wss://` relay) HTTPS probes made in parallel.

    A full HTTPS answer cannot come from a portal (it would need the relay's certificate),
    so it wins; otherwise the HTTP probe, which portals do intercept, tells what is wrong.
    """
    if https is None:
        return http
    if https.state == "full":
        return https
    if http.state == "full" and https.state != "portal":
        return http
    order = {"portal": 0, "limited": 1, "none": 2, "full": 3, "unknown": 4}
    return min((http, https), key=lambda v: order[v.state])


REDIRECTS = (301, 302, 307, 308)


def same_host_https(location: str | None, url: str) -> bool:
    """Whether a redirect's `location` is https on `url`'s own host: the relay (its front)
    wants https, which no captive portal does for a host it does not own."""
    if not location:
        return False
    target = urlsplit(location)
    host = (urlsplit(url).hostname or "").rstrip(".").lower()
    return (
        target.scheme.lower() == "https"
        and bool(host)
        and (target.hostname or "").rstrip(".").lower() == host
    )


def https_upgrade(probe: Probe, relay_url: str) -> bool:
    """Whether the relay's plain address redirected the probe to https on the same host."""
    return probe.status in REDIRECTS and same_host_https(probe.location, relay_url)


def judge(relay: Verdict, elsewhere: Verdict | None) -> Verdict:
    """The relay's verdict, weighed against a check of a site that is not the relay (None:
    not asked). A portal intercepts both; other sites answering means the Internet is there
    and the trouble is the relay's (down, or a wrong name in CLOUD_URL)."""
    if relay.state == "full" or elsewhere is None:
        return relay
    if elsewhere.state == "full":
        return Verdict(state="full", relay="unreachable", detail=relay.detail or relay.state)
    if relay.state == "portal" or elsewhere.state != "portal":
        return relay
    return elsewhere


def parse_captive_api(body: bytes) -> Verdict | None:
    """An RFC 8908 captive portal API answer: `{"captive": bool, "user-portal-url": ...}`."""
    try:
        doc = load_json(body, limit=MAX_CAPTIVE_API_BYTES)
    except DamagedError:
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("captive"), bool):
        return None
    if not doc["captive"]:
        return None  # not captive: the probes decide how connected we are
    return Verdict(
        state="portal",
        portal_url=portal_link(doc.get("user-portal-url")),
        detail="the network's captive portal API says so",
    )


def captive_api_from_networkd(text: str) -> str | None:
    """The portal API URI systemd-networkd learned from DHCP (RFC 8910) for one link."""
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "CAPTIVE_PORTAL" and value.strip().startswith("https://"):
            return value.strip()
    return None


class Schedule:
    """When to check again: every `interval` s while full; from 1 s, doubling, while not."""

    def __init__(self, interval: float = 60.0, first: float = 1.0):
        self.interval = interval
        self.first = min(first, interval)
        self._next_short = self.first

    def after(self, state: State) -> float:
        if state == "full":
            self._next_short = self.first
            return self.interval
        delay = self._next_short
        self._next_short = min(self.interval, self._next_short * 2)
        return delay
