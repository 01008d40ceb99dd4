"""One host name per pits (`--pits-domain`): which pits a Host header names, and what a path
means on a pits' own host. The Host header is the client's: every hostile form names no pits."""

from __future__ import annotations

import pytest
import tornado.httputil

from cloud.active import ActivePits
from cloud.admin import PublicAllowlist
from cloud.config import DEFAULT_ALLOWLIST
from cloud.hosts import HostRouting, host_name, is_dns_label, not_a_label_reason, same_host
from cloud.routing import Router
from wire import ErrorCode
from wire.errors import PathError

HOSTS = HostRouting("relay.example.com")


@pytest.mark.parametrize(
    ("host", "pits"),
    [
        ("club-42.relay.example.com", "club-42"),
        ("CLUB-42.Relay.Example.COM", "club-42"),  # host names are not case-sensitive
        ("club-42.relay.example.com:8443", "club-42"),
        ("a.relay.example.com", "a"),
        ("x" * 63 + ".relay.example.com", "x" * 63),
        ("relay.example.com", None),  # the relay's own name
        ("relay.example.com:80", None),
        ("a.b.relay.example.com", None),  # one label only
        ("-club.relay.example.com", None),
        ("club-.relay.example.com", None),
        ("club_42.relay.example.com", None),
        ("x" * 64 + ".relay.example.com", None),
        ("club-42.relay.example.com.", "club-42"),  # a final dot: the same name to DNS
        ("club-42.relay.example.com.:443", "club-42"),
        ("club-42.relay.example.com.evil.org", None),
        ("club-42.relay-example.com", None),
        ("club-42relay.example.com", None),
        (".relay.example.com", None),
        ("club-42.relay.example.com:x", None),
        ("[::1]:8080", None),
        ("127.0.0.1", None),
        ("", None),
        (None, None),
        ("club-42.relay.example.com\r\nX: y", None),
        ("clüb.relay.example.com", None),
    ],
)
def test_the_pits_a_host_names(host: str | None, pits: str | None) -> None:
    assert HOSTS.pits_of(host) == pits


@pytest.mark.parametrize(
    "host", ["relay.example.com", "RELAY.example.com:8080", "a.b.c", "[::1]:80", "x:1:2", "a:b"]
)
def test_the_host_name_is_read_as_tornado_reads_it(host: str) -> None:
    request = tornado.httputil.HTTPServerRequest(
        start_line=tornado.httputil.RequestStartLine("GET", "/", "HTTP/1.1"),
        headers=tornado.httputil.HTTPHeaders({"Host": host}),
    )
    assert host_name(host) == request.host_name


def test_the_admins_own_host_is_never_a_pits() -> None:
    hosts = HostRouting("relay.example.com", admin_host="admin.relay.example.com")
    assert hosts.pits_of("admin.relay.example.com") is None
    assert hosts.pits_of("club-1.relay.example.com") == "club-1"
    assert hosts.is_relay_host("relay.example.com:443")
    assert not hosts.is_relay_host("club-1.relay.example.com")


@pytest.mark.parametrize(
    ("path", "fpvtrackside"),
    [
        ("/", "/"),
        ("/Rounds", "/"),  # where pushState left the address bar: the page
        ("/Rounds/", "/"),
        ("/LapRecords", "/"),
        ("/httpfiles/Accessor.js", "/httpfiles/Accessor.js"),
        ("/events/e1/Race.json", "/events/e1/Race.json"),
        ("/favicon.ico", "/favicon.ico"),  # a file: asked for as it is
        ("/Rounds/x", "/Rounds/x"),
    ],
)
def test_a_path_on_a_pits_host(path: str, fpvtrackside: str) -> None:
    assert HOSTS.fpvtrackside_path(path) == fpvtrackside


@pytest.mark.parametrize(
    ("pits_id", "label"),
    [
        ("club-42", True),
        ("a", True),
        ("7", True),
        ("Club-42", False),  # a browser asks for club-42: it could never be reached
        ("club_42", False),
        ("club.42", False),
        ("-a", False),
        ("a-", False),
        ("x" * 64, False),
        ("", False),
    ],
)
def test_which_ids_are_dns_labels(pits_id: str, label: bool) -> None:
    assert is_dns_label(pits_id) is label


def test_the_reason_a_pits_is_refused_fits_a_close_frame() -> None:
    reason = not_a_label_reason("Club_" + "x" * 500)
    assert "not a DNS label" in reason
    assert len(reason.encode()) <= 123  # a WebSocket close reason's bound


def test_an_id_is_refused_when_it_cannot_be_its_own_host_name() -> None:
    hosts = HostRouting("relay.example.com", admin_host="admin.relay.example.com")
    assert hosts.refusal("club-42") is None
    assert "not a DNS label" in (hosts.refusal("Club_42") or "")
    taken = hosts.refusal("admin") or ""
    assert "admin.relay.example.com is this relay's admin page" in taken
    assert len(taken.encode()) <= 123
    # An admin host elsewhere takes no label of the domain's.
    assert HostRouting("relay.example.com", "ops.example.org").refusal("ops") is None
    assert HOSTS.refusal("admin") is None


@pytest.mark.parametrize(
    ("host", "same"),
    [
        ("club-b.relay.example.", "club-b.relay.example"),
        ("club-b.relay.example.:8443", "club-b.relay.example:8443"),
        ("club-b.relay.example...", "club-b.relay.example"),
        ("club-b.relay.example", "club-b.relay.example"),
        ("[::1]:80", "[::1]:80"),
        ("127.0.0.1.", "127.0.0.1"),
    ],
)
def test_a_final_dot_names_the_same_host(host: str, same: str) -> None:
    assert same_host(host) == same
    assert host_name(host) == host_name(same)


def test_a_name_under_the_domain_is_under_it_whatever_it_is() -> None:
    assert HOSTS.is_under("a.b.relay.example.com")
    assert HOSTS.is_under("under_score.relay.example.com.")
    assert HOSTS.is_under("club-1.relay.example.com:8443")
    assert not HOSTS.is_under("relay.example.com")
    assert not HOSTS.is_under("relay.example.com.evil.org")
    assert not HOSTS.is_under(None)


def router(hosts: HostRouting | None = HOSTS) -> Router:
    return Router(
        active=ActivePits("club-1"),
        allowlist=PublicAllowlist(DEFAULT_ALLOWLIST),
        live=lambda: ["club-1", "club-2"],
        hosts=hosts,
    )


def test_a_pits_host_routes_to_that_pits_and_its_fpvtrackside_path() -> None:
    r = router()
    assert r.route("/", "club-2.relay.example.com") == ("club-2", "/")
    assert r.route("/Rounds", "club-2.relay.example.com") == ("club-2", "/")
    assert r.route("/httpfiles/Channels.json", "club-2.relay.example.com") == (
        "club-2",
        "/httpfiles/Channels.json",
    )
    # Not another pits' path on a pits' host: /pits/... there is FPVTrackside's own path.
    with pytest.raises(PathError) as refused:
        r.route("/pits/club-1/httpfiles/Channels.json", "club-2.relay.example.com")
    assert refused.value.code == ErrorCode.DENIED


def test_the_allowlist_is_no_wider_on_a_pits_host() -> None:
    """What the root refuses, a pits' host refuses (paths are normalized before, for both)."""
    r = router()
    for path in ("/a/b", "/Rounds/x", "/Windows/win.ini"):
        with pytest.raises(PathError) as root:
            r.route(path, None)
        with pytest.raises(PathError) as own:
            r.route(path, "club-2.relay.example.com")
        assert root.value.code == own.value.code == ErrorCode.DENIED


def test_other_hosts_route_as_before() -> None:
    for r in (router(), router(None)):
        assert r.route("/pits/club-2/", "relay.example.com") == ("club-2", "/")
        assert r.route("/events/e1/Race.json", None) == ("club-1", "/events/e1/Race.json")
        assert r.route("/events/e1/Race.json", "relay.example.com.") == (
            "club-1",
            "/events/e1/Race.json",
        )


@pytest.mark.parametrize(
    "host",
    [
        "club-2.relay.example.com.",  # the attack: club-2's name, served the active pits' data
        "club-2.relay.example.com.:443",
    ],
)
def test_a_final_dot_is_the_pits_own_name(host: str) -> None:
    assert router().route("/events/e1/Race.json", host) == ("club-2", "/events/e1/Race.json")


@pytest.mark.parametrize(
    "host",
    ["a.b.relay.example.com", "under_score.relay.example.com", "x" * 64 + ".relay.example.com"],
)
def test_a_name_under_the_domain_that_is_no_pits_is_refused_not_the_active_pits(host: str) -> None:
    with pytest.raises(PathError) as refused:
        router().route("/events/e1/Race.json", host)
    assert refused.value.code == ErrorCode.DENIED
    assert "no pits is served at this host name" in refused.value.message
