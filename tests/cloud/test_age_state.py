"""What `<pits base>/pitlink/age` says of a box (cloud.age_state): connected or since when it
is gone, and since when the relay serves old copies of it."""

from __future__ import annotations

from conftest import Connect

from cloud.age_state import STALE_WINDOW_S, BoxAge, StaleAnswers
from cloud.feed import Channel
from cloud.registry import Registry
from pitlink_testkit.clock import FakeClock
from wire import ErrorCode


def box_age(registry: Registry, wall: FakeClock, channels: dict[str, Channel]) -> BoxAge:
    return BoxAge(
        registry=registry,
        channels=channels.get,
        stale=StaleAnswers(wall=wall),
        poll=0.5,
        wall=wall,
    )


def test_a_stale_run_starts_with_the_copys_age_and_ends_with_a_fresh_answer() -> None:
    wall = FakeClock(1_700_000_000.0)
    stale = StaleAnswers(wall=wall)
    assert stale.since("p1") is None
    stale.saw("p1", cache="STALE", reason=ErrorCode.ORIGIN_UNREACHABLE, age=30.0)
    assert stale.since("p1") == 1_700_000_000.0 - 30.0
    wall.advance(5.0)
    stale.saw("p1", cache="STALE", reason=ErrorCode.TIMEOUT, age=35.0)
    assert stale.since("p1") == 1_700_000_000.0 - 30.0  # the same run
    stale.saw("p1", cache="REVALIDATED", reason=None, age=0.0)
    assert stale.since("p1") is None


def test_a_stale_run_ends_by_itself_when_no_stale_answer_comes() -> None:
    wall = FakeClock(1_700_000_000.0)
    stale = StaleAnswers(wall=wall)
    stale.saw("p1", cache="STALE", reason=ErrorCode.UNAVAILABLE, age=1.0)
    wall.advance(STALE_WINDOW_S)
    assert stale.since("p1") is not None
    wall.advance(0.01)
    assert stale.since("p1") is None  # fresh copies from pushes or fast hits since
    stale.saw("p1", cache="STALE", reason=ErrorCode.UNAVAILABLE, age=2.0)
    assert stale.since("p1") == wall.now - 2.0  # a new run


def test_a_clients_own_budget_is_not_the_boxs_fault() -> None:
    stale = StaleAnswers(wall=FakeClock())
    stale.saw("p1", cache="STALE", reason=ErrorCode.BUSY, age=3.0)
    assert stale.since("p1") is None


def test_stale_runs_are_bounded() -> None:
    stale = StaleAnswers(wall=FakeClock(), bound=3)
    for n in range(5):
        stale.saw(f"p{n}", cache="STALE", reason=ErrorCode.TIMEOUT, age=0.0)
    assert [stale.since(f"p{n}") is not None for n in range(5)] == [False, False, True, True, True]


def test_a_box_connected_then_gone(registry: Registry, connect: Connect, clock: FakeClock) -> None:
    wall = FakeClock(1_700_000_100.0)
    age = box_age(registry, wall, {})
    never = age.describe("p1")
    assert never == {
        "pitsId": "p1",
        "connected": False,
        "since": None,
        "staleSince": None,
        "now": wall.now,
        "poll": 0.5,
    }
    conn, _ = connect("p1")
    age.stale.saw("p1", cache="STALE", reason=ErrorCode.ORIGIN_UNREACHABLE, age=4.0)
    up = age.describe("p1")
    assert up["connected"] is True and up["since"] == 1_700_000_000.0
    assert up["staleSince"] == wall.now - 4.0
    clock.advance(2.0)
    conn.closed("connection lost")
    down = age.describe("p1")
    # When it was last heard from: its hello, 2 s before the link was found gone.
    assert down["connected"] is False and down["since"] == 1_700_000_000.0 - 2.0
    assert down["staleSince"] is None  # offline says it all


def test_a_box_another_replica_holds(registry: Registry) -> None:
    wall = FakeClock(1_700_000_100.0)
    channel = Channel("p2")
    age = box_age(registry, wall, {"p2": channel})
    assert age.describe("p2")["connected"] is False  # nothing heard yet
    channel.connected = True  # the holder's sign of life, heard by a replica started late
    assert age.describe("p2")["connected"] is True
    channel.apply("pits", {"connected": True, "since": 1_700_000_050.0})
    assert age.describe("p2")["connected"] is True
    channel.apply("pits", {"connected": False, "since": 1_700_000_090.0})
    state = age.describe("p2")
    assert (state["connected"], state["since"]) == (False, 1_700_000_090.0)
