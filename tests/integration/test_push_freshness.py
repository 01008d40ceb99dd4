"""What a box's pushes do to the relay's cache, through a real relay whose clock the test moves:
a confirmed copy is a hit past the freshness window, a silent box's copies age into pulling,
an older box (no `push`) is served by pulling exactly as before, and what spectators read is
what the box is asked to watch. The test plays the box (pitlink_testkit.pushbox)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pitlink_testkit.clock import FakeClock
from pitlink_testkit.fpvtrackside import Simulator
from pitlink_testkit.pushbox import Box, close_boxes, connect_box
from pitlink_testkit.sse import subscribe
from pitlink_testkit.system import System
from pitlink_testkit.waiting import wait_for
from wire.canonical import prepare_body
from wire.push import Watch

PITS = "club"
RACE = "/events/e1/r1/Race.json"
PILOTS = "/events/e1/Pilots.json"
FILES = {RACE: b'{"lap": 1}', PILOTS: b"[]"}


class Relay:
    def __init__(self, s: System, clock: FakeClock):
        self.s, self.clock = s, clock

    async def box(self, **kwargs) -> Box:
        box = await connect_box(self.s.url, self.s.keys, PITS, files=FILES, **kwargs)
        relay = self.s.relay
        await wait_for(lambda: relay.registry.get(PITS) is not None, what="the box connected")
        return box

    async def get(self, path: str) -> tuple[str, bytes]:
        got = await self.s.get(f"/pits/{PITS}{path}")
        assert got.code == 200, got.body
        return got.headers["X-Pitlink-Cache"], got.body

    def taken(self, kind: str) -> float:
        return self.s.relay.metrics.push_frames.labels(kind, "taken")._value.get()


@pytest.fixture
async def relay(tmp_path: Path, sim: Simulator) -> AsyncIterator[Relay]:
    """A relay whose clock moves only when the test says (freshness 1 s), and no agent."""
    s = System(tmp_path, sim)
    clock = FakeClock()
    await s.start_relay(clock=clock, client_rate=None, freshness=1.0)
    yield Relay(s, clock)
    await close_boxes()
    await s.close()


async def test_still_keeps_pushed_copies_fresh_and_silence_ages_them_into_pulling(
    relay: Relay,
) -> None:
    box = await relay.box()
    await box.watching([RACE], interval_ms=1000, race=RACE)
    await box.change(RACE, b'{"lap": 2}')
    await wait_for(lambda: relay.taken("change") == 1, what="the change")
    pushed, _ = prepare_body(RACE, b'{"lap": 2}')
    relay.clock.advance(2.5)  # past the 1 s window, within 3 of the box's intervals
    assert await relay.get(RACE) == ("HIT", pushed)
    await box.still()
    await wait_for(lambda: relay.taken("still") == 1, what="the still")
    relay.clock.advance(2.5)
    assert await relay.get(RACE) == ("HIT", pushed)
    assert box.fetched == []
    # The box falls silent (FPVTrackside gone): the copy ages, and the relay asks again.
    relay.clock.advance(1.0)
    cache, body = await relay.get(RACE)
    assert box.fetched == [RACE]
    assert (cache, body) == ("MISS", prepare_body(RACE, FILES[RACE])[0])


async def test_an_older_box_is_served_by_pulling_as_before(relay: Relay) -> None:
    box = await relay.box(push=False)
    sub = await subscribe(relay.s.relay_port, f"/pits/{PITS}/pitlink/live")
    try:
        pits = await sub.wait_event("pits")
        assert pits.data["connected"] is True and pits.data["pushing"] is False
        assert await relay.get(RACE) == ("MISS", prepare_body(RACE, FILES[RACE])[0])
        assert (await relay.get(RACE))[0] == "HIT"
        relay.clock.advance(1.5)
        assert (await relay.get(RACE))[0] == "REVALIDATED"
        assert box.fetched == [RACE, RACE]
        relay.clock.advance(2)
        relay.s.relay.live.tick()
        assert box.watches == []  # never asked to watch
    finally:
        await sub.close()


async def test_what_spectators_read_is_what_the_box_is_asked_to_watch(relay: Relay) -> None:
    box = await relay.box()
    await relay.get(RACE)
    relay.clock.advance(0.1)
    await relay.get(PILOTS)
    relay.s.relay.live.tick()
    await wait_for(lambda: box.watches, what="a watch")
    assert box.watches == [Watch(paths=(PILOTS, RACE), interval_ms=1000)]
    await relay.get(RACE)  # hits and misses alike; the same set: nothing new
    relay.clock.advance(1)
    relay.s.relay.live.tick()
    relay.clock.advance(61)  # nobody read them for a minute: forgotten
    relay.s.relay.live.tick()
    await wait_for(lambda: len(box.watches) == 2, what="the second watch")
    assert box.watches[1] == Watch(paths=(), interval_ms=1000)
