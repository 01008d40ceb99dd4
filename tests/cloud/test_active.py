"""The active pits is chosen once and never changes by itself."""

from __future__ import annotations

import pytest

from cloud.active import ActivePits
from wire import ErrorCode, ProtocolError


def test_the_first_pits_to_connect_is_adopted_and_kept() -> None:
    active = ActivePits()
    assert active.offer(["club-1"]) is True
    assert (active.current(["club-1"]), active.how, active.chosen) == ("club-1", "first", None)
    # club-1 drops and another club's box connects: the root paths still mean club-1.
    assert active.offer(["club-2"]) is False
    assert active.current(["club-2"]) == "club-1"
    assert active.current([]) == "club-1"


def test_none_adopted_when_several_connect_before_a_choice() -> None:
    active = ActivePits()
    assert active.offer(["a", "b"]) is False
    with pytest.raises(ProtocolError) as caught:
        active.current(["a", "b"])
    assert caught.value.code == ErrorCode.UNAVAILABLE
    assert "several" in caught.value.message
    with pytest.raises(ProtocolError, match="no pits is connected"):
        ActivePits().current([])


def test_a_flag_is_never_replaced_by_a_connection() -> None:
    active = ActivePits("club-9")
    assert active.offer(["club-1"]) is False
    assert (active.current(["club-1"]), active.chosen, active.how) == ("club-9", "club-9", "flag")


def test_an_admin_chooses_and_can_ask_for_automatic_again() -> None:
    active = ActivePits()
    active.offer(["a"])
    active.choose("b", ["a", "b"])
    assert (active.current(["a", "b"]), active.chosen, active.how) == ("b", "b", "admin")
    active.choose(None, ["a"])  # automatic: the one connected now is adopted anew
    assert (active.current(["a"]), active.how) == ("a", "first")
    active.choose(None, ["a", "b"])  # automatic with several: none until one is chosen
    assert active.pits_id is None
    active.choose(None, [])  # automatic with none: the next to connect
    assert active.offer(["c"]) and active.current(["c"]) == "c"
