"""The box's wall clock, which a Raspberry Pi cannot keep across a power cut.

A Pi has no battery-backed clock, and NTP is often blocked until a captive portal is passed, yet
every certificate check needs the right time. So:

- the image's build time is a floor (systemd raises the clock to /usr/lib/clock-epoch at boot);
- the last known time is kept in the state directory (`clock`), restored at boot before
  anything checks a certificate (the image's pitlink-clock.service), and written back here
  while the box runs;
- while NTP has not synchronised, the relay's HTTP `Date` (from the connectivity probe) tells
  the time: a clock behind it is moved forward, never back, since the `Date` of a plain HTTP
  answer is only as trustworthy as the network that carried it.

Pure but for `set_time` and the files it is given, so the decisions are tested without a clock.
"""

from __future__ import annotations

import email.utils
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from wire.errors import DamagedError
from wire.files import write_private
from wire.untrusted import read_bounded

log = logging.getLogger("pitlink.pits.clock")

NTP_SYNCED = Path("/run/systemd/timesync/synchronized")  # systemd-timesyncd's flag
TOLERANCE_S = 120.0  # a clock this close to the relay's is right
SAVE_EVERY_S = 600.0
MAX_SAVED_BYTES = 1024  # the saved clock is one number and a newline

Status = Literal["unknown", "ntp", "agrees", "set", "wrong"]


def parse_date(value: str | None) -> float | None:
    """An HTTP `Date` header (RFC 9110 IMF-fixdate, or the obsolete forms) as a unix time."""
    if not value or len(value) > 100:
        return None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return when.timestamp()


def read_saved(path: Path | None) -> float | None:
    """The time saved in the state directory, if there is one (a unix time, in seconds)."""
    if path is None:
        return None
    try:
        when = float(read_bounded(path, MAX_SAVED_BYTES).decode("ascii").split()[0])
    except (OSError, DamagedError, ValueError, IndexError):
        return None
    return when if math.isfinite(when) else None


class WallClock:
    """What the box knows of its clock, and what it does about it."""

    def __init__(
        self,
        *,
        saved: Path | None = None,
        may_set: bool = False,
        ntp_flag: Path = NTP_SYNCED,
        now: Callable[[], float] = time.time,
        set_time: Callable[[float], None] | None = None,
    ):
        self.saved = saved
        self.may_set = may_set
        self.ntp_flag = ntp_flag
        self.now = now
        self.set_time = set_time or _set_system_time
        self.status: Status = "unknown"
        self.skew: float | None = None  # the relay's time minus ours, when last seen
        self.set_at: float | None = None
        self._saved_at: float | None = None

    def ntp_synced(self) -> bool:
        return self.ntp_flag.exists()

    def observe(self, date_header: str | None) -> Status:
        """The relay answered with this `Date`: is our clock right, and if not, fix it."""
        if self.ntp_synced():
            self.status = "ntp"
            return self.status
        relay = parse_date(date_header)
        if relay is None:
            return self.status
        now = self.now()
        self.skew = relay - now
        if abs(self.skew) <= TOLERANCE_S:
            if self.status != "set":
                self.status = "agrees"
            return self.status
        if self.skew > 0 and self.may_set:
            try:
                self.set_time(relay)
            except OSError as exc:
                log.warning("cannot set the clock", extra={"error": str(exc)})
                self.status = "wrong"
                return self.status
            log.warning(
                "clock set forward from the relay's Date",
                extra={"from": round(now), "to": round(relay), "skew_s": round(self.skew)},
            )
            self.status, self.set_at, self.skew = "set", relay, 0.0
            self.save(force=True)
            return self.status
        self.status = "wrong"
        return self.status

    def save(self, *, force: bool = False) -> None:
        """Keep the time for the next boot (every SAVE_EVERY_S, or now when forced)."""
        if self.saved is None or self.status in ("unknown", "wrong"):
            return
        now = self.now()
        if not force and self._saved_at is not None and now - self._saved_at < SAVE_EVERY_S:
            return
        if now <= (read_saved(self.saved) or 0.0):
            return  # never write a time earlier than the one kept
        try:
            write_private(self.saved, f"{int(now)}\n")
        except OSError as exc:
            log.warning("cannot keep the time", extra={"error": str(exc)})
            return
        self._saved_at = now


def _set_system_time(when: float) -> None:
    time.clock_settime(time.CLOCK_REALTIME, when)
