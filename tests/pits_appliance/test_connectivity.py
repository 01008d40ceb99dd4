"""The uplink classifier, the check schedule and the portal API parsing, without sockets."""

from __future__ import annotations

import json

import pytest

from pits_appliance.connectivity import (
    MAX_PORTAL_URL,
    Probe,
    Schedule,
    Verdict,
    captive_api_from_networkd,
    classify,
    combine,
    https_upgrade,
    judge,
    parse_captive_api,
    portal_link,
)
from pits_appliance.watchdog import probe_urls


@pytest.mark.parametrize(
    ("probe", "state", "portal"),
    [
        (Probe(status=204), "full", None),
        (Probe(status=200, body_length=0), "full", None),
        (Probe(status=200, body_length=1), "full", None),
        (Probe(status=200, body_length=2), "portal", None),
        (Probe(status=200, body_length=5000), "portal", None),
        (
            Probe(status=302, location="http://portal.example/login"),
            "portal",
            "http://portal.example/login",
        ),
        (Probe(status=307, location="https://wifi.example/"), "portal", "https://wifi.example/"),
        (Probe(status=302), "portal", None),
        (Probe(status=301, location=""), "portal", None),
        (Probe(status=404), "limited", None),
        (Probe(status=503), "limited", None),
        (Probe(failure="dns", detail="DNS: Name or service not known"), "none", None),
        (Probe(failure="no_route"), "none", None),
        (Probe(failure="timeout"), "limited", None),
        (Probe(failure="refused"), "limited", None),
        (Probe(failure="tls"), "limited", None),
        (Probe(failure="error"), "limited", None),
    ],
)
def test_classify(probe: Probe, state: str, portal: str | None) -> None:
    verdict = classify(probe)
    assert verdict.state == state
    assert verdict.portal_url == portal


def test_classify_keeps_the_reason() -> None:
    assert (
        "Name or service"
        in classify(Probe(failure="dns", detail="DNS: Name or service not known")).detail
    )
    assert classify(Probe(status=302)).detail == "302 without a Location"


FULL = Verdict(state="full")
PORTAL = Verdict(state="portal", portal_url="http://p/")
LIMITED = Verdict(state="limited")
NONE = Verdict(state="none")


@pytest.mark.parametrize(
    ("http", "https", "expected"),
    [
        (FULL, None, FULL),
        (PORTAL, None, PORTAL),
        (PORTAL, FULL, FULL),  # HTTPS got through with the relay's certificate: no portal
        (FULL, LIMITED, FULL),  # no TLS on the probe's port, but the way out is open
        (PORTAL, LIMITED, PORTAL),  # the portal intercepts HTTP and breaks HTTPS
        (LIMITED, NONE, LIMITED),
        (NONE, NONE, NONE),
        (FULL, PORTAL, PORTAL),
    ],
)
def test_combine_http_and_https(http: Verdict, https: Verdict | None, expected: Verdict) -> None:
    assert combine(http, https) == expected


def test_schedule_full_then_backoff_from_one_second() -> None:
    s = Schedule(interval=60.0)
    assert s.after("full") == 60.0
    assert [s.after("portal") for _ in range(8)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert s.after("full") == 60.0
    assert s.after("none") == 1  # starts over after a full


def test_schedule_short_interval() -> None:
    s = Schedule(interval=0.5)
    assert [s.after("limited") for _ in range(3)] == [0.5, 0.5, 0.5]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            b'{"captive": true, "user-portal-url": "https://login.example/"}',
            Verdict(
                state="portal",
                portal_url="https://login.example/",
                detail="the network's captive portal API says so",
            ),
        ),
        (
            b'{"captive": true}',
            Verdict(
                state="portal", portal_url=None, detail="the network's captive portal API says so"
            ),
        ),
        (
            b'{"captive": true, "user-portal-url": "javascript:alert(1)"}',
            Verdict(
                state="portal", portal_url=None, detail="the network's captive portal API says so"
            ),
        ),
        (b'{"captive": false, "user-portal-url": "https://login.example/"}', None),
        (b'{"captive": "yes"}', None),
        (b"[]", None),
        (b"<html>", None),
        (b"\xff", None),
        (b"[" * 100_000, None),  # before: RecursionError out of the portal check
        (b'{"captive": true, "x": ' + b"[" * 900 + b"]" * 900 + b"}", None),
        (b'{"captive": true, "x": "' + b"x" * 70_000 + b'"}', None),
    ],
)
def test_parse_captive_api(body: bytes, expected: Verdict | None) -> None:
    assert parse_captive_api(body) == expected


def test_captive_api_uri_from_networkd_state() -> None:
    text = "# This is private data.\nADMIN_STATE=configured\nCAPTIVE_PORTAL=https://portal.example/api\n"
    assert captive_api_from_networkd(text) == "https://portal.example/api"
    assert (
        captive_api_from_networkd("CAPTIVE_PORTAL=http://plain.example/") is None
    )  # RFC 8908: HTTPS only
    assert captive_api_from_networkd("ADMIN_STATE=configured\n") is None


@pytest.mark.parametrize(
    ("cloud", "http", "https"),
    [
        ("http://127.0.0.1:8000", "http://127.0.0.1:8000/generate_204", None),
        ("ws://relay.example:8000/", "http://relay.example:8000/generate_204", None),
        (
            "https://relay.example",
            "http://relay.example/generate_204",
            "https://relay.example/generate_204",
        ),
        (
            "wss://relay.example:8443",
            "http://relay.example/generate_204",
            "https://relay.example:8443/generate_204",
        ),
        (
            "https://[2001:db8::1]:443",
            "http://[2001:db8::1]/generate_204",
            "https://[2001:db8::1]:443/generate_204",
        ),
    ],
)
def test_probe_urls(cloud: str, http: str, https: str | None) -> None:
    assert probe_urls(cloud) == (http, https)


# -- the portal's address becomes a link on the status page: only a plain web address may -------

LONG = "http://portal.example/login?" + "x" * 5000
BAD_PORTAL_URLS = [
    "javascript:alert(1)",
    "JavaScript:alert(document.cookie)",
    " javascript:alert(1)",
    "java\tscript:alert(1)",
    "data:text/html,<script>alert(1)</script>",
    "vbscript:msgbox(1)",
    "file:///etc/passwd",
    "/login",
    "login.html",
    "//portal.example/login",
    "http://",
    "http:///login",
    "http:\\\\portal.example\\login",
    "http://portal.example:99999/",
    "http://[::1/",
    "http://portal.example/a b",
    LONG,
]


@pytest.mark.parametrize("url", BAD_PORTAL_URLS)
def test_a_redirect_to_anything_but_a_web_address_shows_no_link(url: str) -> None:
    verdict = classify(Probe(status=302, location=url))
    assert verdict.state == "portal"
    assert verdict.portal_url is None
    assert verdict.detail == "redirected (302)"
    assert portal_link(url) is None


@pytest.mark.parametrize("url", BAD_PORTAL_URLS)
def test_the_portal_api_cannot_name_anything_but_a_web_address(url: str) -> None:
    body = json.dumps({"captive": True, "user-portal-url": url}).encode()
    verdict = parse_captive_api(body)
    assert verdict is not None and verdict.state == "portal"
    assert verdict.portal_url is None


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.1/login?x=1",
        "https://wifi.venue.example/",
        "HTTPS://Wifi.Venue.Example:8443/portal#terms",
        "http://[2001:db8::1]:8080/login",
        "http://portal.example/" + "x" * (MAX_PORTAL_URL - 22),
    ],
)
def test_plain_web_addresses_are_kept(url: str) -> None:
    assert len(url) <= MAX_PORTAL_URL
    assert portal_link(url) == url
    assert classify(Probe(status=307, location=url)).portal_url == url
    api = parse_captive_api(json.dumps({"captive": True, "user-portal-url": url}).encode())
    assert api is not None and api.portal_url == url


def test_a_non_string_portal_url_is_none() -> None:
    body = b'{"captive": true, "user-portal-url": ["http://x/"]}'
    verdict = parse_captive_api(body)
    assert verdict is not None and verdict.portal_url is None


def test_the_agent_state_never_holds_a_bad_portal_url() -> None:
    from pits_appliance.state import AgentState

    state = AgentState()
    state.portal_url = "javascript:alert(1)"
    assert state.portal_url is None
    state.portal_url = "http://10.0.0.1/login"
    assert state.portal_url == "http://10.0.0.1/login"
    assert AgentState(portal_url="data:,x").portal_url is None


FULL = Verdict(state="full")
PORTAL = Verdict(state="portal", portal_url="http://login.venue/")
LIMITED = Verdict(state="limited", detail="connection refused")
NONE = Verdict(state="none", detail="DNS: Name or service not known")


@pytest.mark.parametrize(
    ("relay", "elsewhere", "expected"),
    [
        (FULL, None, FULL),
        (FULL, NONE, FULL),  # the relay's own check is what matters
        (NONE, None, NONE),  # no second check configured: as before
        (NONE, NONE, NONE),  # nothing answers: the Internet is not there
        (LIMITED, NONE, LIMITED),
        (NONE, FULL, Verdict(state="full", relay="unreachable", detail=NONE.detail)),
        (LIMITED, FULL, Verdict(state="full", relay="unreachable", detail=LIMITED.detail)),
        (PORTAL, PORTAL, PORTAL),  # a portal intercepts both
        (NONE, PORTAL, PORTAL),
        (LIMITED, PORTAL, PORTAL),
    ],
)
def test_a_second_check_tells_the_relay_from_the_internet(
    relay: Verdict, elsewhere: Verdict | None, expected: Verdict
) -> None:
    assert judge(relay, elsewhere) == expected


@pytest.mark.parametrize(
    ("probe", "upgrade"),
    [
        (Probe(status=301, location="https://relay.example/generate_204"), True),
        (Probe(status=308, location="https://RELAY.example.:8443/generate_204"), True),
        (Probe(status=302, location="https://portal.example/login"), False),
        (Probe(status=301, location="http://relay.example/generate_204"), False),
        (Probe(status=301), False),
        (Probe(status=200, location="https://relay.example/"), False),
    ],
)
def test_a_redirect_to_https_on_the_relays_host_is_not_a_portal(
    probe: Probe, upgrade: bool
) -> None:
    assert https_upgrade(probe, "http://relay.example:8080") is upgrade
