"""Offline boxes and refused boxes: kept a day, bounded, and nothing a box chose unbounded."""

from __future__ import annotations

from cloud.offline import KEEP_S, MAX_TEXT, Departure, Offline, Refused, clip


def gone(pits_id: str, at: float, error: str = "closed by the box (1001)") -> Departure:
    return Departure(pits_id=pits_id, since=at - 60, last_seen=at, error=error)


def test_an_offline_box_is_listed_for_a_day_then_forgotten() -> None:
    offline = Offline()
    offline.note(gone("a", 1000.0))
    offline.note(gone("b", 2000.0))
    assert [d.pits_id for d in offline.recent(2000.0)] == ["b", "a"]  # latest seen first
    assert offline.get("a", 1000.0 + KEEP_S) is not None
    assert [d.pits_id for d in offline.recent(1000.0 + KEEP_S + 1)] == ["b"]
    assert offline.get("a", 1000.0 + KEEP_S + 1) is None
    assert offline.recent(2000.0 + KEEP_S + 1) == []
    assert len(offline) == 0


def test_offline_boxes_are_bounded_the_oldest_goes_first() -> None:
    offline = Offline(bound=3)
    for i in range(5):
        offline.note(gone(f"p{i}", 100.0 + i))
    assert [d.pits_id for d in offline.recent(200.0)] == ["p4", "p3", "p2"]
    offline.back("p3")
    assert [d.pits_id for d in offline.recent(200.0)] == ["p4", "p2"]
    row = offline.recent(200.0)[0].describe(200.0)
    assert row == {
        "pitsId": "p4",
        "state": "offline",
        "since": 44.0,
        "lastSeenAt": 104.0,
        "lastSeenS": 96.0,
        "lastError": "closed by the box (1001)",
    }


def test_refusals_are_counted_by_claimed_id_reason_and_address() -> None:
    refused = Refused()
    for t in (10.0, 11.0, 12.0):
        refused.note(claimed="club-1", kid="k1", reason="expired", address="192.0.2.7", now=t)
    refused.note(claimed="club-2", kid="k9", reason="unknown_key", address="192.0.2.8", now=13.0)
    [other, expired] = refused.recent(20.0)
    assert other.claimed_pits_id == "club-2"
    assert expired.describe(20.0) == {
        "claimedPitsId": "club-1",
        "verified": False,
        "kid": "k1",
        "reason": "expired",
        "address": "192.0.2.7",
        "firstAt": 10.0,
        "lastAt": 12.0,
        "lastS": 8.0,
        "count": 3,
    }
    assert [r.claimed_pits_id for r in refused.recent(12.0 + KEEP_S + 0.5)] == ["club-2"]


def test_refusals_are_bounded_and_what_a_box_chose_is_clipped() -> None:
    refused = Refused(bound=4)
    for i in range(10):
        refused.note(claimed=f"p{i}", kid=None, reason="expired", address="198.51.100.1", now=i)
    assert [r.claimed_pits_id for r in refused.recent(10.0)] == ["p9", "p8", "p7", "p6"]
    long = refused.note(
        claimed="x" * 10_000 + "\n\x1b[31m", kid="k" * 500, reason="r", address="a", now=11.0
    )
    assert long.claimed_pits_id is not None and len(long.claimed_pits_id) == MAX_TEXT
    assert long.kid is not None and len(long.kid) == 64
    assert clip("a\nb\x1bc") == "a?b?c"
