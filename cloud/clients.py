"""Who a request comes from, as far as the relay may believe: its client, and what it asked for.

Behind a proxy the relay's peer is the proxy. What the proxy says of the client (its address in
`X-Forwarded-For`, the scheme and host it was asked for in `X-Forwarded-Proto` and
`X-Forwarded-Host`) is believed only when the peer is one of `--trusted-proxy`: anyone else
could write those headers themselves.

A client, for the per-client limits, is an IPv4 address or an IPv6 network (a /64 by default):
one host is routinely given a whole /64 and may send from any address in it, so keying the
limits by the exact address would make one host thousands of clients.

Pure: no sockets, no Tornado.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

SCHEMES = frozenset({"http", "https"})
# A host as a URL may carry it: a name or IPv4 address (a final dot allowed), or a bracketed
# IPv6 address; then perhaps a port.
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
HOST = re.compile(
    rf"(?P<name>{_LABEL}(?:\.{_LABEL})*\.?|\[[0-9a-f:.]{{2,45}}\])(?::(?P<port>[0-9]{{1,5}}))?"
)


def parse_networks(items: Iterable[str]) -> tuple[Network, ...]:
    """Addresses or CIDR ranges, e.g. `127.0.0.1`, `10.0.0.0/8`, `::1`."""
    return tuple(ipaddress.ip_network(item.strip(), strict=False) for item in items if item.strip())


def _address(text: str) -> Address | None:
    try:
        ip = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped  # a dual-stack socket's view of an IPv4 client
    return ip


def public_host(value: str | None) -> str | None:
    """A Host (or X-Forwarded-Host) value fit to build an address from: lowercased, without a
    final dot; None for anything else (a path, a user, spaces, a list)."""
    if not value or len(value) > 260:
        return None
    found = HOST.fullmatch(value.strip().lower())
    if found is None:
        return None
    name, port = found["name"].rstrip("."), found["port"]
    if port is not None and not 0 < int(port) < 65536:
        return None
    return f"{name}:{port}" if port else name


class Clients:
    """The trusted proxies, and what a request's peer and headers say of its client."""

    def __init__(self, trusted: tuple[Network, ...] = (), *, ipv6_prefix: int = 64):
        if not 0 <= ipv6_prefix <= 128:
            raise ValueError("the IPv6 prefix length is 0 to 128")
        self.trusted = trusted
        self.ipv6_prefix = ipv6_prefix

    def is_trusted(self, peer: str) -> bool:
        ip = _address(peer)
        return ip is not None and any(ip in net for net in self.trusted)

    def address(self, peer: str, forwarded_for: str | None) -> str:
        """The client's address: `X-Forwarded-For` counts only when it came from a trusted proxy.

        Walking the header from the right, the first address that is not a trusted proxy is
        the client; anything to its left could have been written by the client itself.
        """
        if not forwarded_for or not self.is_trusted(peer):
            return peer
        hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
        for hop in reversed(hops):
            if not self.is_trusted(hop):
                ip = _address(hop)
                return peer if ip is None else str(ip)
        return hops[0] if hops else peer

    def key(self, peer: str, forwarded_for: str | None) -> str:
        """Whose budget a request spends: the client's IPv4 address, or its IPv6 network."""
        address = self.address(peer, forwarded_for)
        ip = _address(address)
        if ip is None:
            return address
        if isinstance(ip, ipaddress.IPv6Address):
            return str(ipaddress.IPv6Network((ip, self.ipv6_prefix), strict=False))
        return str(ip)

    def forwarded(self, peer: str, value: str | None) -> str | None:
        """A proxy's `X-Forwarded-*` value, believed only from a trusted proxy: its first entry
        (the one the first proxy wrote), or None."""
        if not value or not self.is_trusted(peer):
            return None
        return value.split(",", 1)[0].strip() or None


@dataclass(frozen=True)
class Origin:
    """The scheme and host (with its port, if not the default) the public reaches the relay by."""

    scheme: str
    host: str

    @property
    def port(self) -> str:
        """`:8443`, or "" for the scheme's default."""
        name = self.host.rpartition("]")[2] if self.host.startswith("[") else self.host
        _, colon, digits = name.rpartition(":")
        return f":{digits}" if colon else ""

    def url(self, path: str = "/") -> str:
        return f"{self.scheme}://{self.host}{path}"


def parse_public_url(text: str) -> Origin:
    """`--public-url https://relay.example.com[:port]`: a scheme and a host, nothing else."""
    scheme, sep, rest = text.strip().partition("://")
    host = public_host(rest.rstrip("/")) if sep else None
    if scheme.lower() not in SCHEMES or host is None or "/" in rest.rstrip("/"):
        raise ValueError(
            f"{text[:80]!r} is not an address like https://relay.example.com (a scheme and a "
            "host, with a port if not the default, and no path)"
        )
    port = Origin(scheme.lower(), host).port
    default = {"http": ":80", "https": ":443"}[scheme.lower()]
    if port == default:
        host = host[: -len(port)]
    return Origin(scheme.lower(), host)


class PublicAddress:
    """How the public reaches the relay, for every absolute address it writes (redirects to a
    pits' own host, the front page, the admin page's links).

    `--public-url` says it once. Without it, a trusted proxy's `X-Forwarded-Proto` and
    `X-Forwarded-Host` say it, and else the request itself (its scheme, its Host).
    """

    def __init__(self, public: Origin | None, clients: Clients):
        self.public = public
        self.clients = clients

    def origin(
        self,
        *,
        scheme: str,
        host: str | None,
        peer: str,
        forwarded_proto: str | None = None,
        forwarded_host: str | None = None,
    ) -> Origin:
        if self.public is not None:
            return self.public
        proto = (self.clients.forwarded(peer, forwarded_proto) or "").lower()
        seen_host = public_host(self.clients.forwarded(peer, forwarded_host))
        return Origin(
            proto if proto in SCHEMES else scheme if scheme in SCHEMES else "http",
            seen_host or public_host(host) or "localhost",
        )
