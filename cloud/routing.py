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


class Router:
    """`/pits/<id>/<path>` names its pits; `/events/**` and `/httpfiles/**` mean the active one;
    with `hosts` (`--pits-domain`), a pits' own host name names it, and its path is
    FPVTrackside's (cloud.hosts).

    The path is normalized before it gets here; the public allowlist is checked on the
    FPVTrackside path, so neither `/pits/<id>/` nor a pits' host reaches more than the root.
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
        hosts = self.hosts
        on_host = None if hosts is None else hosts.pits_of(host)
        if hosts is not None and on_host is not None:
            pits_id, target = on_host, hosts.fpvtrackside_path(path)
        elif hosts is not None and hosts.is_under(host):
            # A name under the domain that is no pits' own: never the active pits' data.
            raise PathError(ErrorCode.DENIED, "no pits is served at this host name")
        elif path == "/pits" or path.startswith("/pits/"):
            _, _, rest = path.partition("/pits/")
            pits_id, slash, tail = rest.partition("/")
            if not PITS_ID.match(pits_id):
                raise PathError(ErrorCode.BAD_REQUEST, "not a pits id")
            target = "/" + tail if slash else "/"
        else:
            pits_id = self.active.current(self.live())
            target = path
        if not self.allowlist.allows(target):
            raise PathError(ErrorCode.DENIED, "path not allowed")
        return pits_id, target
