"""Which headers may cross the relay.

Hop-by-hop headers (RFC 9110 section 7.6.1) describe one connection and never cross a proxy.
The relay carries only what a cached copy needs: ETag and Content-Type.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)

# The only origin headers a `response` payload carries.
RELAYED = ("ETag", "Content-Type")


def hop_by_hop(headers: Iterable[tuple[str, str]]) -> frozenset[str]:
    """The hop-by-hop names of a message: the fixed set plus those its Connection header lists."""
    names = set(HOP_BY_HOP)
    for name, value in headers:
        if name.lower() == "connection":
            names.update(token.strip().lower() for token in value.split(",") if token.strip())
    return frozenset(names)


def filter_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Drop hop-by-hop headers, including any the Connection header names."""
    pairs = list(headers)
    drop = hop_by_hop(pairs)
    return [(name, value) for name, value in pairs if name.lower() not in drop]


def relayed_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The subset of headers a `response` carries, under their canonical names."""
    lowered = {name.lower(): value for name, value in headers.items()}
    return {name: lowered[name.lower()] for name in RELAYED if name.lower() in lowered}
