"""Which pits and which FPVTrackside path a public path means."""

from __future__ import annotations

import re
from collections.abc import Callable

from cloud.active import ActivePits
from cloud.admin import PublicAllowlist
from cloud.hosts import HostRouting
from wire import ErrorCode
from wire.errors import PathError

PITS_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# Under each pits' base, the relay's own paths: its live feed and live page.
RELAY_SPACE = "/pitlink"


class Router:
    """`/pits/<id>/<path>` names its pits; `/events/**` and `/httpfiles/**` mean the active one;
    with `hosts` (`--pits-domain`), a pits' own host name names it, and its path is
    FPVTrackside's (cloud.hosts).

    The path is normalized before it gets here; the public allowlist is checked on the
    FPVTrackside path, so neither `/pits/<id>/` nor a pits' host reaches more than the root.
    `/pitlink/` under a pits' base is the relay's own (`relay_path`), never a pits' path.
    """

    def __init__(
        self,
        *,
        active: ActivePits,
        allowlist: PublicAllowlist,
        live: Callable[[], list[str]],
        hosts: HostRouting | None = None,
    ):
        self.active = active
        self.allowlist = allowlist
        self.live = live
        self.hosts = hosts

    def route(self, path: str, host: str | None = None) -> tuple[str, str]:
        """(pits id, FPVTrackside path), or ProtocolError (400, 403, or 503 for no active)."""
        pits_id, on_host, tail = self._locate(path, host)
        if is_relay_own(tail):
            raise PathError(ErrorCode.DENIED, f"{RELAY_SPACE}/ is the relay's own, not the pits'")
        target = self.hosts.fpvtrackside_path(tail) if on_host and self.hosts else tail
        if not self.allowlist.allows(target):
            raise PathError(ErrorCode.DENIED, "path not allowed")
        return pits_id, target

    def relay_path(self, path: str, host: str | None = None) -> tuple[str, str] | None:
        """(pits id, path) when a public path is in a pits' `/pitlink/` space (the relay's own:
        its live feed and page, never FPVTrackside's), else None. Only on a pits' own host and
        under `/pits/<id>/`, never at the root (the active pits)."""
        try:
            pits_id, on_host, tail = self._locate(path, host)
        except PathError:
            return None
        if not is_relay_own(tail) or not (on_host or path.startswith("/pits/")):
            return None
        return pits_id, tail

    def _locate(self, path: str, host: str | None) -> tuple[str, bool, str]:
        """(pits id, on its own host, the path at that pits) for a normalized public path."""
        hosts = self.hosts
        on_host = None if hosts is None else hosts.pits_of(host)
        if hosts is not None and on_host is not None:
            return on_host, True, path
        if hosts is not None and hosts.is_under(host):
            # A name under the domain that is no pits' own: never the active pits' data.
            raise PathError(ErrorCode.DENIED, "no pits is served at this host name")
        if path == "/pits" or path.startswith("/pits/"):
            _, _, rest = path.partition("/pits/")
            pits_id, slash, tail = rest.partition("/")
            if not PITS_ID.match(pits_id):
                raise PathError(ErrorCode.BAD_REQUEST, "not a pits id")
            return pits_id, False, "/" + tail if slash else "/"
        return self.active.current(self.live()), False, path


def is_relay_own(path: str) -> bool:
    """A path in the relay's own space of a pits (`/pitlink/...`): never sent to a pits."""
    return path == RELAY_SPACE or path.startswith(RELAY_SPACE + "/")
