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


async def test_resume_after_a_cut_replays_what_was_missed(relay: System) -> None:
    box = await pushing_box(relay)
    sub = await feed(relay)
    await box.watching([RACE], race=RACE)
    await box.change(RACE, b'{"lap": 1}')
    await sub.wait_event("change")
    seen = sub.last_id
    await sub.close()
    # Cut: two changes happen meanwhile.
    second = await box.change(RACE, b'{"lap": 2}')
    third = await box.change(RACE, b'{"lap": 3}')
    channel = relay.relay.live.feed.channels[PITS]
    await wait_for(lambda: channel.n == 5, what="both changes")
    again = await feed(relay, last_id=seen)
    try:
        await again.wait_event("change", 2)
        assert [e.data["etag"] for e in again.events] == [second, third]  # nothing else
        epoch = seen.split("-")[0]
        assert [e.id for e in again.events] == [f"{epoch}-4", f"{epoch}-5"]
    finally:
        await again.close()
    # The same through the query, as a page that cannot set the header does.
    by_query = await feed(relay, f"{LIVE}?lastEventId={seen}")
    try:
        await by_query.wait_event("change", 2)
        assert [e.kind for e in by_query.events] == ["change", "change"]
    finally:
        await by_query.close()


@pytest.mark.parametrize("last_id", ["garbage", "1-1", "ffffffffffffffff-999", "x" * 500])
async def test_resume_from_an_unknown_id_gives_the_snapshot(relay: System, last_id: str) -> None:
    box = await pushing_box(relay)
    await box.watching([RACE, RESULTS], race=RACE)
    race = await box.change(RACE, b'{"lap": 1}')
    results = await box.change(RESULTS, b"[]")
    channel = relay.relay.live.feed.channels[PITS]
    await wait_for(lambda: channel.n == 4, what="the changes")
    sub = await feed(relay, last_id=last_id)
    try:
        await sub.wait_event("change", 2)
        assert [e.kind for e in sub.events] == ["pits", "race", "change", "change"]
        assert {e.data["path"]: e.data["etag"] for e in sub.of("change")} == {
            RACE: race,
            RESULTS: results,
        }
        assert {e.id for e in sub.events} == {f"{channel.epoch}-4"}
    finally:
        await sub.close()


async def test_the_feed_says_when_the_box_goes_and_comes_back(relay: System) -> None:
    box = await pushing_box(relay)
    sub = await feed(relay)
    try:
        first = await sub.wait_event("pits")
        await box.close()
        gone = await sub.wait_event("pits", 2)
        assert gone.data["connected"] is False and gone.data["since"] >= first.data["since"]
        assert gone.id.split("-")[0] == first.id.split("-")[0]
        await pushing_box(relay, push=False)
        back = await sub.wait_event("pits", 3)
        assert back.data["connected"] is True and back.data["pushing"] is False
        assert int(back.id.split("-")[0], 16) > int(first.id.split("-")[0], 16)
        assert back.id.endswith("-1")
    finally:
        await sub.close()


async def test_keep_alive_comments_keep_a_quiet_feed_open(tmp_path: Path, sim: Simulator) -> None:
    s = System(tmp_path, sim)
    await s.start_relay(feed_heartbeat=0.05)
    sub = await feed(s)
    try:
        await sub.wait("two keep-alive comments", lambda x: x.comments.count("keep-alive") >= 2)
    finally:
        await sub.close()
        await s.close()


async def test_an_http_1_0_feed_ends_with_its_connection(relay: System) -> None:
    sub = await feed(relay, version="HTTP/1.0")
    try:
        assert sub.status == 200 and "transfer-encoding" not in sub.headers
        assert sub.headers["connection"] == "close"
        await sub.wait_event("race")
    finally:
        await sub.close()


@pytest.mark.parametrize("admin_host", [None, "admin.localhost"])
async def test_the_feed_on_a_pits_host(tmp_path: Path, sim: Simulator, admin_host) -> None:
    """`--pits-domain`: at `/pitlink/live` on the pits' own host. On the relay's own name,
    `/pits/<id>/pitlink/live` is sent on to it as every pits path is (without an admin host),
    or served there (with one); `/pitlink` on a pits' host is never FPVTrackside's page."""
    s = System(tmp_path, sim)
    await s.start_relay(client_rate=None, pits_domain="localhost", admin_host=admin_host)
    port = s.relay_port
    try:
        box = await pushing_box(s)
        sub = await subscribe(port, "/pitlink/live", host=f"{PITS}.localhost:{port}")
        await box.watching([RACE], race=RACE)
        etag = await box.change(RACE, b"{}")
        assert (await sub.wait_event("change")).data["etag"] == etag
        assert sub.of("pits")[0].data["pitsId"] == PITS
        await sub.close()
        if admin_host is None:
            on_relay = await s.get(
                f"/pits/{PITS}/pitlink/live?lastEventId=a-1",
                headers={"Host": f"localhost:{port}"},
                follow_redirects=False,
            )
            assert on_relay.code == 308
            assert on_relay.headers["Location"] == (
                f"http://{PITS}.localhost:{port}/pitlink/live?lastEventId=a-1"
            )
        else:
            served = await subscribe(port, LIVE, host=f"localhost:{port}")
            assert (await served.wait_event("change")).data["etag"] == etag
            await served.close()
        for path in ("/pitlink", "/pitlink/", "/pitlink/nothing"):
            got = await s.get(path, headers={"Host": f"{PITS}.localhost:{port}"}, method="GET")
            assert got.code in (403, 404), path
        assert box.fetched == []
        # Another pits' host names another feed; the admin's host has none.
        other = await subscribe(port, "/pitlink/live", host=f"other.localhost:{port}")
        assert (await other.wait_event("pits")).data["pitsId"] == "other"
        await other.close()
        if admin_host is not None:
            admin = await s.get("/pits/club/pitlink/live", headers={"Host": admin_host})
            assert admin.code == 404
    finally:
        await close_boxes()
        await s.close()
