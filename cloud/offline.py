"""Boxes no longer connected, and boxes refused at the door: what the operator must still see.

A box whose link ends stays listed (on the front page and the admin page) as offline for a day,
with when it was last heard from and why its link ended, so a stale page never looks live and
a box that vanished is not simply forgotten. A box whose token is refused is listed with the
pits id its token claims (not verified: the token was refused), its key id, the reason, from
where and how often. Both are kept in memory, bounded: the oldest goes first.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

KEEP_S = 86400.0  # a box offline for longer than a day is no longer listed
MAX_OFFLINE = 1024  # boxes listed as offline, at most
MAX_REFUSED = 256  # (claimed pits id, reason, address) kinds of refusal listed, at most
MAX_TEXT = 200  # characters kept of anything a box chose (its claimed id, a close reason)


def clip(text: object, limit: int = MAX_TEXT) -> str:
    """A string a box chose, cut to a bound and stripped of control characters."""
    value = str(text)[:limit]
    return "".join(ch if ch.isprintable() else "?" for ch in value)


@dataclass(frozen=True, kw_only=True)
class Departure:
    """How a box's link ended: when it was connected from and last heard from (Unix seconds),
    and why (`error`: the close code and reason, a ping timeout, a lost socket...)."""

    pits_id: str
    since: float
    last_seen: float
    error: str

    def describe(self, now: float) -> dict[str, Any]:
        return {
            "pitsId": self.pits_id,
            "state": "offline",
            "since": self.since,
            "lastSeenAt": self.last_seen,
            "lastSeenS": round(max(0.0, now - self.last_seen), 1),
            "lastError": self.error,
        }


class Offline:
    """The boxes that were connected here in the last `keep` seconds and are no longer."""

    def __init__(self, *, keep: float = KEEP_S, bound: int = MAX_OFFLINE):
        self.keep = keep
        self.bound = bound
        self._gone: OrderedDict[str, Departure] = OrderedDict()

    def note(self, departure: Departure) -> None:
        self._gone.pop(departure.pits_id, None)
        self._gone[departure.pits_id] = departure
        while len(self._gone) > self.bound:
            self._gone.popitem(last=False)

    def back(self, pits_id: str) -> None:
        """The box connected again: no longer offline."""
        self._gone.pop(pits_id, None)

    def get(self, pits_id: str, now: float) -> Departure | None:
        gone = self._gone.get(pits_id)
        return gone if gone is not None and now - gone.last_seen <= self.keep else None

    def recent(self, now: float) -> list[Departure]:
        """Those offline for less than `keep`, the most recently seen first."""
        while self._gone:
            oldest = next(iter(self._gone.values()))
            if now - oldest.last_seen <= self.keep:
                break
            self._gone.popitem(last=False)
        return sorted(self._gone.values(), key=lambda d: -d.last_seen)

    def __len__(self) -> int:
        return len(self._gone)


@dataclass
class Refusal:
    """One kind of refused control connection: the same claimed pits, reason and address."""

    claimed_pits_id: str | None
    kid: str | None
    reason: str
    address: str
    first: float
    last: float
    count: int = 1

    def describe(self, now: float) -> dict[str, Any]:
        return {
            "claimedPitsId": self.claimed_pits_id,
            "verified": False,
            "kid": self.kid,
            "reason": self.reason,
            "address": self.address,
            "firstAt": self.first,
            "lastAt": self.last,
            "lastS": round(max(0.0, now - self.last), 1),
            "count": self.count,
        }


class Refused:
    """Boxes refused at `/control` in the last `keep` seconds, by claimed id, reason, address."""

    def __init__(self, *, keep: float = KEEP_S, bound: int = MAX_REFUSED):
        self.keep = keep
        self.bound = bound
        self._seen: OrderedDict[tuple[str | None, str, str], Refusal] = OrderedDict()

    def note(
        self, *, claimed: str | None, kid: str | None, reason: str, address: str, now: float
    ) -> Refusal:
        claimed = None if claimed is None else clip(claimed)
        kid = None if kid is None else clip(kid, 64)
        key = (claimed, clip(reason, 64), clip(address, 64))
        seen = self._seen.pop(key, None)
        if seen is None:
            seen = Refusal(claimed, kid, key[1], key[2], first=now, last=now, count=0)
        seen.count += 1
        seen.last = now
        seen.kid = kid
        self._seen[key] = seen
        while len(self._seen) > self.bound:
            self._seen.popitem(last=False)
        return seen

    def recent(self, now: float) -> list[Refusal]:
        """Those refused in the last `keep` seconds, the latest first."""
        while self._seen:
            oldest = next(iter(self._seen.values()))
            if now - oldest.last <= self.keep:
                break
            self._seen.popitem(last=False)
        return sorted(self._seen.values(), key=lambda r: -r.last)

    def __len__(self) -> int:
        return len(self._seen)
