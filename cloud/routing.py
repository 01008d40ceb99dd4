"""Which pits and which FPVTrackside path a public path means."""

from __future__ import annotations

import re
from collections.abc import Callable

from cloud.active import ActivePits
from cloud.admin import PublicAllowlist
from wire import ErrorCode
from wire.errors import PathError

PITS_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class Router:
    """`/pits/<id>/<path>` names its pits; `/events/**` and `/httpfiles/**` mean the active one.

    The path is normalized before it gets here; the public allowlist is checked on the
    FPVTrackside path, so `/pits/<id>/` cannot reach more than the root can.
    """

    def __init__(
        self,
        *,
        active: ActivePits,
        allowlist: PublicAllowlist,
        live: Callable[[], list[str]],
    ):
        self.active = active
        self.allowlist = allowlist
        self.live = live

    def route(self, path: str) -> tuple[str, str]:
        """(pits id, FPVTrackside path), or ProtocolError (400, 403, or 503 for no active)."""
        if path == "/pits" or path.startswith("/pits/"):
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
