"""Two relay replicas sharing a real Redis: one pits, spectators on either replica."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import tornado.httpclient
import tornado.websocket

from cloud.app import CloudRelay
from pitlink_testkit.fpvtrackside import Simulator
from pitlink_testkit.system import System
from pitlink_testkit.waiting import wait_for
from wire import CloseCode
from wire import messages as m
from wire.backoff import Backoff


@dataclass
class Pair:
    s: System
    a: CloudRelay
    b: CloudRelay

    def url(self, relay: CloudRelay, path: str) -> str:
        return f"http://127.0.0.1:{relay.port}{path}"

    async def get(self, relay: CloudRelay, path: str, **kwargs) -> tornado.httpclient.HTTPResponse:
        kwargs.setdefault("raise_error", False)
        kwargs.setdefault("request_timeout", 30)
        return await self.s.http.fetch(self.url(relay, path), **kwargs)


async def start_replica(s: System, redis_url: str, node: str, **overrides) -> CloudRelay:
    settings = {"client_rate": None, "pits_fetch_rate": None, "freshness": 0.0, **overrides}
    config = s.relay_config(port=0, redis_url=redis_url, node_id=node, **settings)
    relay = CloudRelay(config)
    await relay.start()
    await wait_for(lambda: relay.cluster.up, what=f"replica {node} to reach Redis")
    return relay


@pytest.fixture
async def pair(tmp_path, sim: Simulator, redis_server) -> AsyncIterator[Pair]:
    s = System(tmp_path, sim)
    a = await start_replica(s, redis_server.url, "A")
    b = await start_replica(s, redis_server.url, "B")
    s.relay, s.relay_port = a, a.port
    # The box pulls only: these tests count the fetches spectators cause (pushing across
    # replicas: tests/cluster/test_live_replicas.py).
    await s.start_agent(no_push=True)
    await wait_for(lambda: b.cluster.holder(s.pits_id), what="the holder key")
    assert await b.cluster.holder(s.pits_id) == "A"
    yield Pair(s, a, b)
    await s.stop_agent()
    await b.stop()
    await a.stop()
    s.http.close()


async def test_spectator_on_the_other_replica_gets_the_body_then_304s(pair: Pair) -> None:
    path = f"/pits/{pair.s.pits_id}{pair.s.sim.event_path}/Pilots.json"
    direct = await pair.get(pair.a, path)
    first = await pair.get(pair.b, path)
    assert first.code == 200
    assert first.body == direct.body
    assert first.headers["ETag"] == direct.headers["ETag"]
    # Freshness 0: the shared copy A wrote is due for revalidation, which only A can do.
    assert pair.b.metrics.forwarded._value.get() == 1
    assert pair.a.metrics.served_for_replicas._value.get() == 1
    again = await pair.get(pair.b, path)
    assert again.code == 200 and again.body == direct.body
    assert again.headers["X-Pitlink-Cache"] in ("REVALIDATED", "HIT")
    not_modified = await pair.get(pair.b, path, headers={"If-None-Match": first.headers["ETag"]})
    assert not_modified.code == 304
    # Something only the holder can answer: an uncached path, forwarded to A.
    fresh = f"/pits/{pair.s.pits_id}/httpfiles/Channels.json"
    got = await pair.get(pair.b, fresh)
    assert got.code == 200
    # Freshness 0: each of B's four requests was answered through A.
    assert pair.b.metrics.forwarded._value.get() == 4
    assert pair.a.metrics.served_for_replicas._value.get() == 4


async def test_500_requests_over_two_replicas_make_one_fetch(pair: Pair) -> None:
    sim = pair.s.sim
    path = f"{sim.event_path}/Rounds.json"
    sim.hold = asyncio.Event()
    client = tornado.httpclient.AsyncHTTPClient(force_instance=True, max_clients=500)
    try:
        requests = [
            asyncio.ensure_future(
                client.fetch(
                    pair.url(pair.a if i % 2 else pair.b, f"/pits/{pair.s.pits_id}{path}"),
                    request_timeout=60,
                )
            )
            for i in range(500)
        ]
        await wait_for(
            lambda: pair.a.serving.waiting + pair.b.serving.waiting >= 500,
            timeout=60,
            what="all waiting",
        )
        sim.hold.set()
        responses = await asyncio.gather(*requests)
    finally:
        sim.hold.set()
        client.close()
    assert {r.code for r in responses} == {200}
    assert len({r.body for r in responses}) == 1
    assert [p for _, p in sim.request_log if p == path] == [path]
    assert pair.a.metrics.fetches._value.get() == 1  # one WebSocket fetch, on the holder


async def test_shared_cache_warms_a_new_replica(pair: Pair, redis_server) -> None:
    path = f"/pits/{pair.s.pits_id}{pair.s.sim.event_path}/Event.json"
    pair.a.serving.freshness.default = 60.0
    assert (await pair.get(pair.a, path)).code == 200
    c = await start_replica(pair.s, redis_server.url, "C", freshness=60.0)
    try:
        before = len(pair.s.sim.request_log)
        got = await pair.get(c, path)
        assert got.code == 200
        assert got.headers["X-Pitlink-Cache"] == "HIT"
        assert len(pair.s.sim.request_log) == before  # nothing went to the pits
    finally:
        await c.stop()


async def test_newer_connection_on_another_replica_takes_over(pair: Pair) -> None:
    # The replaced agent dials again; let it wait, so that it cannot take the pits back to A
    # before the holder is read.
    pair.s.agent.link.backoff = Backoff(base=60.0, cap=60.0, rand=lambda: 1.0)
    old = pair.a.registry.get(pair.s.pits_id)
    token = pair.s.token_file.read_text().strip()
    request = tornado.httpclient.HTTPRequest(
        f"ws://127.0.0.1:{pair.b.port}/control?role=pits&version=1",
        headers={"Authorization": f"Bearer {token}"},
    )
    ws = await tornado.websocket.websocket_connect(request)
    try:
        m.decode(await ws.read_message(), sender="cloud")
        await ws.write_message(
            m.encode(
                m.PitsHello(protocol_version=1, pits_id=pair.s.pits_id, sw_version="t"), now_ms=0
            )
        )
        await wait_for(lambda: old.state == "closed", what="the old connection to be closed")
        assert pair.s.agent.state.close_code == CloseCode.REPLACED
        assert await pair.a.cluster.holder(pair.s.pits_id) == "B"
    finally:
        ws.close()


async def test_admin_sees_and_acts_across_replicas(pair: Pair) -> None:
    token = pair.s.keys.issue(sub="alice", role="admin", ttl=600)
    headers = {"Authorization": f"Bearer {token}"}

    async def rows() -> list:
        got = await pair.get(pair.b, "/admin/api/connections", headers=headers)
        return json.loads(got.body)["connections"]

    await wait_for(rows, what="B to list A's connection")
    (row,) = await rows()
    assert (row["pitsId"], row["node"]) == (pair.s.pits_id, "A")
    sessions = pair.s.agent.link.sessions
    got = await pair.get(
        pair.b,
        f"/admin/api/pits/{pair.s.pits_id}/reconnect",
        method="POST",
        body="{}",
        headers=headers,
    )
    assert got.code == 200
    await wait_for(lambda: pair.s.agent.link.sessions > sessions, what="the reconnect on A")
    assert pair.s.agent.state.close_code == CloseCode.RECONNECT


async def test_redis_down_degrades_and_recovers(pair: Pair, redis_server, sim: Simulator) -> None:
    s = pair.s
    # A second pits on B, so each replica holds one.
    second = s.sibling(sim, "pits-2")
    second.relay, second.relay_port = pair.b, pair.b.port
    await second.start_agent(no_push=True)
    try:
        on_a = f"/pits/{s.pits_id}/httpfiles/Channels.json"
        on_b = "/pits/pits-2/httpfiles/Channels.json"
        assert (await pair.get(pair.b, on_a)).code == 200  # cached on B, through A
        redis_server.stop()
        await wait_for(lambda: not pair.a.cluster.up and not pair.b.cluster.up, what="Redis down")
        ready = json.loads((await pair.get(pair.b, "/readyz")).body)
        assert ready["redis"] == "down"
        metrics = (await pair.get(pair.b, "/metrics")).body
        assert b"pitlink_redis_up 0.0" in metrics
        # Each replica still serves its own pits...
        assert (await pair.get(pair.a, on_a)).code == 200
        assert (await pair.get(pair.b, on_b)).code == 200
        # ...and B's copy of A's pits is served stale rather than refused.
        stale = await pair.get(pair.b, on_a)
        assert stale.code == 200 and stale.headers["X-Pitlink-Cache"] == "STALE"
        redis_server.start()
        await wait_for(
            lambda: pair.a.cluster.up and pair.b.cluster.up, timeout=20, what="Redis back"
        )
        await wait_for(lambda: pair.b.cluster.holder(s.pits_id), timeout=20, what="holder again")

        async def forwarded_again() -> bool:
            got = await pair.get(pair.b, on_a)
            return got.code == 200 and got.headers["X-Pitlink-Cache"] != "STALE"

        await wait_for(forwarded_again, timeout=20, what="cross-replica fetches to resume")
    finally:
        await second.stop_agent()


async def test_rate_limits_are_shared(pair: Pair) -> None:
    for relay in (pair.a, pair.b):
        relay.client_limits.local.rate, relay.client_limits.local.burst = 0.5, 2.0
    path = f"/pits/{pair.s.pits_id}/httpfiles/Channels.json"
    assert (await pair.get(pair.a, path)).code == 200
    assert (await pair.get(pair.b, path)).code == 200
    third = await pair.get(pair.a, path)  # the third from this address, on either replica
    assert third.code == 429
    assert int(third.headers["Retry-After"]) >= 1


async def test_graceful_shutdown_hands_the_pits_over(pair: Pair) -> None:
    """SIGTERM's work: stop listening, answer what is in flight, then 4000 to the pits."""
    s = pair.s
    s.agent.link.relays.append(f"http://127.0.0.1:{pair.b.port}")
    sim = s.sim
    sim.hold = asyncio.Event()
    pending = asyncio.ensure_future(pair.get(pair.a, f"/pits/{s.pits_id}/httpfiles/Channels.json"))
    await wait_for(lambda: sim.queued + sim.in_flight >= 1, what="a request in flight")
    shutting = asyncio.ensure_future(pair.a.shutdown(grace=30))
    await wait_for(lambda: pair.a.drain.draining, what="draining")
    with pytest.raises(ConnectionRefusedError):  # not listening any more
        await pair.get(pair.a, "/readyz")
    assert pair.a.readiness()["ready"] is False
    assert not shutting.done()  # waiting for the request in flight
    sim.hold.set()
    got = await pending
    assert got.code == 200
    await shutting
    await wait_for(
        lambda: s.agent.state.ws_connected and s.agent.state.relay_url.endswith(str(pair.b.port)),
        what="the pits on B",
    )
    assert s.agent.state.close_code == CloseCode.RECONNECT


@pytest.mark.provokes_error(
    "tornado.access",
    r"^503 GET /httpfiles/Channels\.json ",
    why="the pits chosen on B is not connected; A follows: its root paths are 503",
)
async def test_every_replica_serves_the_root_paths_of_the_pits_adopted_on_one(pair: Pair) -> None:
    await wait_for(lambda: pair.b.active.pits_id == pair.s.pits_id, what="B to learn it")
    assert (pair.a.active.how, pair.b.active.how) == ("first", "first")
    got = await pair.get(pair.b, "/httpfiles/Channels.json")  # the pits is connected to A
    assert got.code == 200
    token = pair.s.keys.issue(sub="ops", role="admin", ttl=600)
    await pair.get(
        pair.b,
        "/admin/api/active",
        method="POST",
        body='{"pitsId": "club-x"}',
        headers={"Authorization": f"Bearer {token}"},
    )
    await wait_for(lambda: pair.a.active.pits_id == "club-x", what="A to take B's choice")
    assert pair.a.active.chosen == "club-x"
    assert (await pair.get(pair.a, "/httpfiles/Channels.json")).code == 503


async def test_what_was_never_found_expires_quickly_in_redis(pair: Pair, redis_server) -> None:
    import redis.asyncio as aioredis

    sim = pair.s.sim
    missing = f"{sim.event_path}/Results.json"  # no such file yet: FPVTrackside's empty 200
    real = f"{sim.event_path}/Pilots.json"
    for path in (missing, real):
        assert (await pair.get(pair.a, f"/pits/{pair.s.pits_id}{path}")).code == 200
    client = aioredis.from_url(redis_server.url)
    try:

        async def ttl(path: str) -> int:
            return int(await client.ttl(f"pitlink:cache:{pair.s.pits_id}:{path}"))

        assert 0 < await ttl(missing) <= 60
        assert await ttl(real) > 600
    finally:
        await client.aclose()


async def test_redis_without_maxmemory_is_warned_about_at_start(
    tmp_path, sim, caplog, redis_factory
) -> None:
    caplog.set_level(logging.WARNING, logger="pitlink.cloud.cluster")
    unbounded = redis_factory(maxmemory=None)
    s = System(tmp_path, sim)
    try:
        relay = await start_replica(s, unbounded.url, "U")
        await relay.stop()
        warned = [r for r in caplog.records if "maxmemory" in r.getMessage()]
        assert warned and warned[0].maxmemory == "0"
    finally:
        s.http.close()


async def test_bounded_redis_is_not_warned_about(pair: Pair, caplog) -> None:
    started = caplog.get_records("setup")  # the replicas started in the fixture
    assert any(r.getMessage() == "relay listening" for r in started)
    assert not [r for r in started if "maxmemory" in r.getMessage()]


async def test_damaged_values_in_redis_are_skipped_not_raised(pair: Pair, caplog) -> None:
    """JSON from Redis goes through wire.untrusted like a file: a damaged value hides itself."""
    from cloud.shared import BROADCAST, P

    caplog.set_level(logging.WARNING, logger="pitlink.cloud.cluster")
    token = pair.s.keys.issue(sub="alice", role="admin", ttl=600)
    headers = {"Authorization": f"Bearer {token}"}
    client = pair.b.cluster.redis.client
    deep = b"[" * 100_000
    await client.set(f"{P}conns:X", deep, ex=60)
    await client.set(f"{P}conns:Y", b'{"not": "a list"}', ex=60)
    await client.set(f"{P}conns:Z", b"[" * 900 + b"]" * 900, ex=60)
    await client.set(f"{P}active", deep)
    for data in (deep, b'{"t": "takeover", "pits": ' + b"[" * 900 + b"]" * 900 + b"}", b"\xff"):
        await client.publish(BROADCAST, data)

    async def rows() -> list:
        got = await pair.get(pair.b, "/admin/api/connections", headers=headers)
        assert got.code == 200, got.body
        return json.loads(got.body)["connections"]

    await wait_for(rows, what="B to list A's connection")
    for _ in range(3):
        assert [(r["pitsId"], r["node"]) for r in await rows()] == [(pair.s.pits_id, "A")]
    await pair.b.cluster.load_active()
    damaged = [r for r in caplog.records if r.getMessage().startswith("a replica's connections")]
    assert sorted(r.key.rsplit(":", 1)[1] for r in damaged) == ["X", "Y", "Z"]  # once each
    # The replicas' listeners live on: an admin action from B still reaches A's connection.
    sessions = pair.s.agent.link.sessions
    got = await pair.get(
        pair.b,
        f"/admin/api/pits/{pair.s.pits_id}/reconnect",
        method="POST",
        body="{}",
        headers=headers,
    )
    assert got.code == 200
    await wait_for(lambda: pair.s.agent.link.sessions > sessions, what="the reconnect on A")
