"""One host name per pits (`--pits-domain`): which pits a request's Host names, and what its
path means there.

FPVTrackside's own page loads its scripts from absolute paths (`/httpfiles/Accessor.js`) and
moves the address bar with `history.pushState` to root paths (`/Rounds`). Under
`/pits/<id>/` those land on the relay's root, which serves only the active pits. With
`--pits-domain relay.example.com`, pits `club-42` is served at `club-42.relay.example.com` as
FPVTrackside serves its own root, so its page works unchanged, and each pits is an origin of
its own. The admin lives on the relay's own name (or `--admin-host`), on no pits' origin.

Pure: no sockets, no Tornado. The Host header is the client's to choose, so a name that is not
exactly one DNS label under the domain names no pits.
"""

from __future__ import annotations

import re

# A DNS label as a host name may carry it (RFC 1123), lowercase: browsers lowercase host
# names, so a pits id with a capital letter could never be asked for by its own name.
DNS_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
# A path FPVTrackside's page leaves in the address bar with pushState: one segment, no dot.
PAGE_PATH = re.compile(r"/[^/.]+/?")


def is_dns_label(pits_id: str) -> bool:
    return DNS_LABEL.fullmatch(pits_id) is not None


def not_a_label_reason(pits_id: str) -> str:
    """Why a pits cannot connect to a relay with `--pits-domain`: for its close frame."""
    shown = pits_id[:64]
    return (
        f"pits id {shown!r} is not a DNS label (lowercase letters, digits and inner hyphens, "
        "63 at most): this relay serves each pits at a host name of its own"
    )[:120]


_WITH_PORT = re.compile(r"(.+):(\d+)")


def same_host(host: str) -> str:
    """A Host header with the final dot of its name dropped (`club-b.relay.example.:443` is
    `club-b.relay.example:443`): the same name to DNS, and so to the relay. The public
    listener writes every request's Host this way before anything reads it."""
    found = _WITH_PORT.fullmatch(host)
    name, port = (found.group(1), ":" + found.group(2)) if found else (host, "")
    if not name.endswith(".") or name.startswith("["):
        return host
    return name.rstrip(".") + port


def host_name(host: str | None) -> str:
    """The name in a Host header, lowercased, without its port or a final dot, as Tornado reads
    it for its host rules (`HTTPServerRequest.host_name`) once the listener has written the
    Host (same_host), so that the hit path and the application always agree on which pits a
    request is for."""
    name = (host or "127.0.0.1").lower()
    found = _WITH_PORT.fullmatch(name)
    name = found.group(1) if found else name
    return name if name.startswith("[") else name.rstrip(".")


class HostRouting:
    """Which pits a host name is, under `pits_domain`, and where the admin answers."""

    def __init__(self, pits_domain: str, admin_host: str | None = None):
        self.pits_domain = pits_domain.strip().lower().rstrip(".")
        self.admin_host = admin_host
        self._suffix = "." + self.pits_domain

    def pits_of(self, host: str | None) -> str | None:
        """The pits whose own host `host` is, or None (the relay's own name, or another)."""
        name = host_name(host)
        if not name.endswith(self._suffix):
            return None
        label = name[: -len(self._suffix)]
        if not is_dns_label(label) or name == self.admin_host:
            return None
        return label

    def is_under(self, host: str | None) -> bool:
        """A name under the pits domain: a pits' own host, or a name that can be no pits'
        (`a.b.<domain>`, `under_score.<domain>`), which must never fall through to the relay's
        own routes (they serve the active pits)."""
        return host_name(host).endswith(self._suffix)

    def is_relay_host(self, host: str | None) -> bool:
        """The relay's own name: the admin answers here unless it has a host of its own."""
        return host_name(host) == self.pits_domain

    @staticmethod
    def fpvtrackside_path(path: str) -> str:
        """The FPVTrackside path a normalized path on a pits' host asks for.

        A single segment without an extension (`/Rounds`, where the page's pushState left the
        address bar) is FPVTrackside's page, as FPVTrackside itself answers an unknown path:
        it is fetched as `/`, so no allowlist is wider for it.
        """
        return "/" if PAGE_PATH.fullmatch(path) else path

    def refusal(self, pits_id: str) -> str | None:
        """Why a pits cannot connect to this relay, or None: its id must be a host name of its
        own, and not the admin's (`--admin-host admin.<domain>` takes the label `admin`)."""
        if not is_dns_label(pits_id):
            return not_a_label_reason(pits_id)
        if self.host_of(pits_id) == self.admin_host:
            return (
                f"pits id {pits_id!r} is taken: {self.admin_host} is this relay's admin page, "
                "so the pits could never be reached at it"
            )[:120]
        return None

    def host_of(self, pits_id: str) -> str | None:
        """A pits' own host name; None for an id that cannot be one."""
        return f"{pits_id}.{self.pits_domain}" if is_dns_label(pits_id) else None
