"""Who a request comes from, behind proxies: its client for the limits (an IPv6 client is its
network), and the scheme and host the public asked for. What a proxy says counts only from a
proxy the operator named."""

from __future__ import annotations

import pytest

from cloud.clients import (
    Clients,
    Origin,
    PublicAddress,
    parse_networks,
    parse_public_url,
    public_host,
)

TRUSTED = parse_networks(["127.0.0.1", "10.0.0.0/8", "::1"])
CLIENTS = Clients(TRUSTED)


@pytest.mark.parametrize(
    ("remote", "header", "expected"),
    [
        ("203.0.113.5", None, "203.0.113.5"),
        ("203.0.113.5", "198.51.100.1", "203.0.113.5"),  # untrusted peer: header ignored
        ("127.0.0.1", "198.51.100.1", "198.51.100.1"),
        ("127.0.0.1", "198.51.100.1, 10.1.2.3", "198.51.100.1"),  # through two proxies
        ("127.0.0.1", "6.6.6.6, 198.51.100.1", "198.51.100.1"),  # client-written left part
        ("127.0.0.1", "not-an-ip", "127.0.0.1"),
        ("127.0.0.1", "", "127.0.0.1"),
        ("::1", "2001:db8::1", "2001:db8::1"),
        ("127.0.0.1", "10.0.0.1, 10.0.0.2", "10.0.0.1"),  # all trusted: the leftmost
        ("::ffff:127.0.0.1", "198.51.100.1", "198.51.100.1"),  # a dual-stack socket's view
    ],
)
def test_the_client_address(remote: str, header: str | None, expected: str) -> None:
    assert CLIENTS.address(remote, header) == expected


@pytest.mark.parametrize(
    ("remote", "expected"),
    [
        ("203.0.113.5", "203.0.113.5"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:bbbb:cccc:dddd:eeee", "2001:db8:1:2::/64"),  # the same host
        ("2001:db8:1:3::1", "2001:db8:1:3::/64"),  # the next /64: another client
        ("::ffff:203.0.113.5", "203.0.113.5"),
        ("not-an-address", "not-an-address"),
    ],
)
def test_an_ipv6_client_is_its_64(remote: str, expected: str) -> None:
    assert CLIENTS.key(remote, None) == expected


def test_the_prefix_is_a_setting() -> None:
    assert Clients(ipv6_prefix=48).key("2001:db8:1:2::1", None) == "2001:db8:1::/48"
    assert Clients(ipv6_prefix=128).key("2001:db8::1", None) == "2001:db8::1/128"
    assert Clients(TRUSTED).key("::1", "2001:db8:9:9::7") == "2001:db8:9:9::/64"
    with pytest.raises(ValueError):
        Clients(ipv6_prefix=129)


def test_parse_networks_refuses_garbage() -> None:
    with pytest.raises(ValueError):
        parse_networks(["not-a-network"])


@pytest.mark.parametrize(
    ("value", "host"),
    [
        ("Relay.Example.com", "relay.example.com"),
        ("relay.example.com.", "relay.example.com"),
        ("relay.example.com.:8443", "relay.example.com:8443"),
        ("[::1]:8080", "[::1]:8080"),
        ("relay.example.com:99999", None),
        ("relay.example.com/evil", None),
        ("user@relay.example.com", None),
        ("a b", None),
        ("relay.example.com, other.example", None),
        ("<script>", None),
        ("", None),
        (None, None),
        ("x" * 300, None),
    ],
)
def test_a_host_is_fit_to_build_an_address_from_or_none(
    value: str | None, host: str | None
) -> None:
    assert public_host(value) == host


@pytest.mark.parametrize(
    ("text", "origin"),
    [
        ("https://relay.example.com", Origin("https", "relay.example.com")),
        ("https://relay.example.com/", Origin("https", "relay.example.com")),
        ("HTTPS://Relay.Example.com:443", Origin("https", "relay.example.com")),
        ("https://relay.example.com:8443", Origin("https", "relay.example.com:8443")),
        ("http://127.0.0.1:8000", Origin("http", "127.0.0.1:8000")),
    ],
)
def test_the_public_url(text: str, origin: Origin) -> None:
    assert parse_public_url(text) == origin


@pytest.mark.parametrize(
    "text",
    ["relay.example.com", "ftp://relay.example.com", "https://relay.example.com/path", "https://"],
)
def test_a_public_url_that_is_not_one_is_refused_in_words(text: str) -> None:
    with pytest.raises(ValueError, match=r"is not an address like https://relay\.example\.com"):
        parse_public_url(text)


def test_the_public_address_is_the_setting_whatever_the_request_says() -> None:
    public = PublicAddress(parse_public_url("https://relay.example.com"), CLIENTS)
    origin = public.origin(
        scheme="http",
        host="evil.example",
        peer="127.0.0.1",
        forwarded_proto="http",
        forwarded_host="evil.example",
    )
    assert origin == Origin("https", "relay.example.com")
    assert origin.url("/x") == "https://relay.example.com/x"


def test_a_trusted_proxy_says_the_scheme_and_host() -> None:
    public = PublicAddress(None, CLIENTS)
    behind = public.origin(
        scheme="http", host="127.0.0.1:8001", peer="127.0.0.1", forwarded_proto="https",
        forwarded_host="relay.example.com",
    )  # fmt: skip
    assert behind == Origin("https", "relay.example.com")
    # The first of a list: what the first proxy was asked.
    chained = public.origin(
        scheme="http", host="x", peer="10.0.0.2", forwarded_proto="https, http",
        forwarded_host="relay.example.com:8443, inner",
    )  # fmt: skip
    assert chained == Origin("https", "relay.example.com:8443")
    assert chained.port == ":8443"


def test_anyone_else_cannot_choose_the_scheme_or_host() -> None:
    public = PublicAddress(None, CLIENTS)
    direct = public.origin(
        scheme="http", host="relay.example.com", peer="203.0.113.5", forwarded_proto="https",
        forwarded_host="evil.example",
    )  # fmt: skip
    assert direct == Origin("http", "relay.example.com")
    garbage = public.origin(
        scheme="http", host="relay.example.com", peer="127.0.0.1", forwarded_proto="gopher",
        forwarded_host="evil.example/path",
    )  # fmt: skip
    assert garbage == Origin("http", "relay.example.com")
