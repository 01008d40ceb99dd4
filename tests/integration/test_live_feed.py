"""The live feed and what a box pushes, through a real relay: the test plays the box over a real
WebSocket (pitlink_testkit.pushbox) and the spectators over raw sockets (pitlink_testkit.sse).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cloud.routing import RELAY_SPACE
from pitlink_testkit.fpvtrackside import Simulator
from pitlink_testkit.pushbox import Box, close_boxes, connect_box
from pitlink_testkit.sse import Subscriber, subscribe
from pitlink_testkit.system import System
from pitlink_testkit.waiting import wait_for
from wire.canonical import prepare_body

PITS = "club"
RACE = "/events/e1/r1/Race.json"
RESULTS = "/events/e1/Results.json"
LIVE = f"/pits/{PITS}{RELAY_SPACE}/live"


@pytest.fixture
async def relay(tmp_path: Path, sim: Simulator) -> AsyncIterator[System]:
    """A relay and no agent: the tests play the boxes."""
    s = System(tmp_path, sim)
    await s.start_relay(client_rate=None)
    yield s
    await close_boxes()
    await s.close()


async def pushing_box(s: System, pits_id: str = PITS, **kwargs) -> Box:
    box = await connect_box(s.url, s.keys, pits_id, **kwargs)
    relay = s.relay
    assert relay is not None
    await wait_for(lambda: relay.registry.get(pits_id) is not None, what=f"{pits_id} connected")
    return box


async def feed(s: System, path: str = LIVE, **kwargs) -> Subscriber:
    sub = await subscribe(s.relay_port, path, **kwargs)
    return sub


async def test_a_pushed_change_reaches_the_feed_and_is_a_hit(relay: System) -> None:
    box = await pushing_box(relay)
    sub = await feed(relay)
    try:
        assert sub.status == 200
        assert sub.headers["content-type"] == "text/event-stream; charset=utf-8"
        assert sub.headers["cache-control"] == "no-store"
        assert sub.headers["x-accel-buffering"] == "no"
        assert sub.headers["access-control-allow-origin"] == "*"
        pits = await sub.wait_event("pits")
        assert pits.data["pitsId"] == PITS
        assert pits.data["connected"] is True and pits.data["pushing"] is True
        assert (await sub.wait_event("race")).data == {"path": None}
        assert sub.retry == 1000

        await box.watching([RACE, RESULTS], race=RACE)
        assert (await sub.wait_event("race", 2)).data == {"path": RACE}
        body = b'{"Laps": [1, 2, 3]}'
        etag = await box.change(RACE, body)
        change = await sub.wait_event("change")
        sent, _ = prepare_body(RACE, body)
        assert change.data == {"path": RACE, "etag": etag, "size": len(sent)}
        epoch, n = change.id.split("-")
        assert int(n) == 3 and int(epoch, 16) > 0

        got = await relay.get(f"/pits/{PITS}{RACE}")
        assert got.code == 200 and got.body == sent
        assert got.headers["X-Pitlink-Cache"] == "HIT" and got.headers["ETag"] == etag
        assert box.fetched == []  # never a wait for the box
        metrics = relay.relay.metrics
        assert metrics.push_frames.labels("change", "taken")._value.get() == 1
        assert metrics.feed_events.labels("change")._value.get() == 1
    finally:
        await sub.close()
        await box.close()


async def test_an_fpvtrackside_event_goes_to_the_feed_cleaned(relay: System) -> None:
    box = await pushing_box(relay)
    sub = await feed(relay)
    try:
        await sub.wait_event("race")
        event = {
            "type": "Hello",
            "seq": 1,
            "ts": "2026-05-01T10:00:00.000Z",
            "fpvtVersion": "2.0.99",
            "platform": "Windows",
            "paths": {"data": "C:\\Users\\race\\FPVTrackside"},
        }
        await box.event(event)
        got = await sub.wait_event("fpvtrackside")
        assert got.data == {k: v for k, v in event.items() if k != "paths"}
    finally:
        await sub.close()
        await box.close()


async def test_the_feed_of_a_pits_never_seen_says_so(relay: System) -> None:
    sub = await feed(relay, "/pits/nobody/pitlink/live")
    try:
        pits = await sub.wait_event("pits")
        assert pits.data == {
            "pitsId": "nobody",
            "connected": False,
            "since": None,
            "pushing": False,
        }
        assert pits.id is None
    finally:
        await sub.close()


async def test_the_relays_own_paths_are_never_asked_of_a_pits(relay: System) -> None:
    box = await pushing_box(relay, files={"/pitlink/live": b"not the feed"})
    try:
        for path in ("/pitlink/live", "/pitlink", "/pitlink/race", "/pit%6Cink/live"):
            got = await relay.get(f"/pits/{PITS}{path}", method="HEAD")
            assert got.code in (403, 404), path
        got = await relay.get(f"/pits/{PITS}/pit%6Cink/live")
        assert got.code == 403
        assert "relay's own" in json.loads(got.body)["error"]["message"]
        assert box.fetched == []
    finally:
        await box.close()
