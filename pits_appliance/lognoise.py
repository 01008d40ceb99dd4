"""Tornado's own warning of each failed TLS handshake, at most once a minute in the box's log.

A box that cannot verify its relay's certificate (a private CA without CLOUD_CA) fails the
handshake at every dial and every connectivity check, and tornado's iostream logs each one as
`SSL Error on <fd> <peer>: ...`. The box's own line says what to do (pits_appliance.dialing,
logged when the reason changes); these repeat it in tornado's words, so one a minute is kept,
with the count of those held back, and a RAM-backed journal does not fill with them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from wire.budget import Throttle

TORNADO = logging.getLogger("tornado.general")
EVERY_S = 60.0


class TLSNoise(logging.Filter):
    """Passes one `SSL Error` record per `every` seconds (with `held_back`); the rest as is."""

    def __init__(self, every: float = EVERY_S, clock: Callable[[], float] = time.monotonic):
        super().__init__()
        self.clock = clock
        self.throttle = Throttle(every)

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith("SSL Error"):
            return True
        held = self.throttle.allow("ssl", self.clock())
        if held is None:
            return False
        record.held_back = held
        return True


def install(every: float = EVERY_S) -> TLSNoise:
    """Throttle tornado's TLS warnings in this process (the agent's, from its command line)."""
    noise = TLSNoise(every)
    TORNADO.addFilter(noise)
    return noise
