"""Live feeds across replicas sharing a real Redis: the replica holding the box numbers the
events, every replica delivers them to its own subscribers and keeps its own ring; a replica
that starts late knows where things stand; Redis down never stops a replica's own feeds."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from cloud import feed as feed_module
from cloud import feed_replicas
from cloud.app import CloudRelay
from pitlink_testkit.fpvtrackside import Simulator
from pitlink_testkit.pushbox import Box, close_boxes, connect_box
from pitlink_testkit.sse import Subscriber, subscribe
from pitlink_testkit.system import System
from pitlink_testkit.waiting import wait_for
from wire.canonical import prepare_body

PITS = "club"
RACE = "/events/e1/r1/Race.json"
LIVE = f"/pits/{PITS}/pitlink/live"


async def start_replica(s: System, redis_url: str, node: str) -> CloudRelay:
    config = s.relay_config(
        port=0,
        redis_url=redis_url,
        node_id=node,
        client_rate=None,
        pits_fetch_rate=None,
        ping_interval=0.5,  # the relay ticks ten times as often: signs of life, states
    )
    relay = CloudRelay(config)
    await relay.start()
    await wait_for(lambda: relay.cluster.up, what=f"replica {node} to reach Redis")
    return relay


@dataclass
class Pair:
    s: System
    a: CloudRelay
    b: CloudRelay
    box: Box
    redis_url: str

    async def feed(self, relay: CloudRelay, **kwargs) -> Subscriber:
        return await subscribe(relay.port, LIVE, **kwargs)


@pytest.fixture
async def pair(tmp_path, sim: Simulator, redis_server, monkeypatch) -> AsyncIterator[Pair]:
    monkeypatch.setattr(feed_module, "ALIVE_FOR_S", 1.5)
    monkeypatch.setattr(feed_replicas, "ALIVE_EVERY_S", 0.3)
    s = System(tmp_path, sim)
    a = await start_replica(s, redis_server.url, "A")
    b = await start_replica(s, redis_server.url, "B")
    box = await connect_box(f"http://127.0.0.1:{a.port}", s.keys, PITS)
    await wait_for(lambda: a.registry.get(PITS) is not None, what="the box on A")
    yield Pair(s, a, b, box, redis_server.url)
    await close_boxes()
    await b.stop()
    await a.stop()
    s.http.close()


async def test_a_change_reaches_subscribers_on_every_replica_with_the_same_ids(
    pair: Pair,
) -> None:
    on_a, on_b = await pair.feed(pair.a), await pair.feed(pair.b)
    try:
        # B may have heard of the box before its subscriber came, or not: either way it knows.
        await on_b.wait(
            "B to know the box", lambda x: x.of("pits") and x.of("pits")[-1].data["connected"]
        )
        await pair.box.watching([RACE], race=RACE)
        etag = await pair.box.change(RACE, b'{"lap": 1}')
        got_a, got_b = await on_a.wait_event("change"), await on_b.wait_event("change")
        assert got_a == got_b and got_b.data["etag"] == etag
        assert on_b.of("race")[-1] == on_a.of("race")[-1]
        # The body is on B too: from the shared cache, never from the box.
        body, _ = prepare_body(RACE, b'{"lap": 1}')
        got = await pair.s.http.fetch(f"http://127.0.0.1:{pair.b.port}/pits/{PITS}{RACE}")
        assert got.body == body and got.headers["ETag"] == etag
        assert pair.box.fetched == []
        # B had an older copy: the change makes it go, and the new one is served.
        second = await pair.box.change(RACE, b'{"lap": 2}')
        await on_b.wait_event("change", 2)
        got = await pair.s.http.fetch(f"http://127.0.0.1:{pair.b.port}/pits/{PITS}{RACE}")
        assert got.headers["ETag"] == second
        fpvt = {"type": "RaceStart", "seq": 4, "ts": "t", "round": 1, "race": 1, "raceType": "R"}
        await pair.box.event(fpvt)
        assert (await on_b.wait_event("fpvtrackside")).data == fpvt
    finally:
        await on_a.close()
        await on_b.close()


async def test_resume_on_another_replica_replays_from_its_own_ring(pair: Pair) -> None:
    on_b = await pair.feed(pair.b)
    await pair.box.watching([RACE], race=RACE)
    await pair.box.change(RACE, b'{"lap": 1}')
    await on_b.wait_event("change")
    seen = on_b.last_id
    await on_b.close()
    missed = await pair.box.change(RACE, b'{"lap": 2}')
    channel_b = pair.b.live.feed.channels[PITS]
    await wait_for(lambda: channel_b.n == pair.a.live.feed.channels[PITS].n, what="B to hear it")
    again = await pair.feed(pair.b, last_id=seen)
    try:
        change = await again.wait_event("change")
        assert change.data["etag"] == missed and [e.kind for e in again.events] == ["change"]
    finally:
        await again.close()


async def test_a_replica_that_starts_late_knows_where_things_stand(
    pair: Pair, redis_server
) -> None:
    await pair.box.watching([RACE], race=RACE)
    etag = await pair.box.change(RACE, b'{"lap": 1}')
    channel = pair.a.live.feed.channels[PITS]
    await wait_for(lambda: channel.n == 3, what="the change on A")
    c = await start_replica(pair.s, redis_server.url, "C")
    try:
        # A saves a pits' state at most once a second: an earlier one (the box connected, no
        # change yet) may be there first.
        async def saved() -> bool:
            raw = await c.cluster.redis.client.get(f"pitlink:feed:{PITS}")
            return bool(raw) and json.loads(raw)["n"] == 3

        await wait_for(saved, what="A to save the state with the change")
        sub = await pair.feed(c)
        try:
            await sub.wait_event("change")
            assert [e.kind for e in sub.events] == ["pits", "race", "change"]
            assert sub.events[0].data["connected"] is True
            assert sub.of("race")[0].data == {"path": RACE}
            assert sub.of("change")[0].data["etag"] == etag
            assert {e.id for e in sub.events} == {f"{channel.epoch}-3"}
        finally:
            await sub.close()  # a failure above must not leave its socket to a later test
    finally:
        await c.stop()


async def test_redis_down_keeps_a_replicas_own_feeds_and_says_offline_elsewhere(
    pair: Pair, redis_server
) -> None:
    on_a, on_b = await pair.feed(pair.a), await pair.feed(pair.b)
    try:
        await on_b.wait(
            "B to know the box", lambda x: x.of("pits") and x.of("pits")[-1].data["connected"]
        )
        redis_server.stop()
        await wait_for(lambda: not pair.a.cluster.up, what="Redis down on A")
        await pair.box.watching([RACE], race=RACE)
        await pair.box.change(RACE, b'{"lap": 1}')
        await on_a.wait_event("change")  # A's own subscribers go on
        offline = await on_b.wait(
            "B to say offline", lambda x: not x.of("pits")[-1].data["connected"]
        )
        assert offline
        assert on_b.of("change") == []
        redis_server.start()
        await wait_for(
            lambda: pair.a.cluster.up and pair.b.cluster.up, timeout=20, what="Redis back"
        )
        await pair.box.change(RACE, b'{"lap": 2}')
        # B hears the box again; it missed events, so nobody resumes across the gap there.
        await on_b.wait_event("change", timeout=20)
        assert pair.b.live.feed.channels[PITS].connected
        assert on_b.of("pits")[-1].data["connected"] is True  # told it is back
    finally:
        await on_a.close()
        await on_b.close()
