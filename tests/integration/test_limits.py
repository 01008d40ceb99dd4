"""Every limit crossed: pits concurrency, the relay's queue, body caps, deadlines, rates."""

from __future__ import annotations

import asyncio
import json
import socket
import time
import tracemalloc

import pytest
import tornado.httpclient

from pitlink_testkit.clock import FakeClock
from pitlink_testkit.fpvtrackside import Simulator
from pitlink_testkit.system import System
from pitlink_testkit.waiting import wait_for
from wire import ErrorCode, ProtocolError
from wire.messages import Fetch

MIB = 1024 * 1024


def error_code(response: tornado.httpclient.HTTPResponse) -> str:
    return json.loads(response.body)["error"]["code"]


async def test_pits_answers_busy_past_its_command_cap_and_spares_the_origin(
    tmp_path, sim: Simulator
) -> None:
    s = System(tmp_path, sim)
    await s.start_relay(per_conn_concurrency=64, client_rate=None, pits_fetch_rate=None)
    await s.start_agent(no_push=True)  # 8 commands, 2 origin requests at a time (the defaults)
    try:
        sim.hold = asyncio.Event()
        conn = s.relay.registry.get(s.pits_id)
        fetches = [
            asyncio.ensure_future(
                conn.fetch(
                    Fetch(method="GET", path=f"{sim.event_path}/Missing{i}.json", timeout_ms=30000),
                    60,
                )
            )
            for i in range(20)
        ]
        # The 12 past the cap are refused at once, while the 8 are still held at the origin.
        await wait_for(lambda: sum(f.done() for f in fetches) == 12, what="12 BUSY answers")
        refused = [f for f in fetches if f.done()]
        for f in refused:
            with pytest.raises(ProtocolError) as caught:
                f.result()
            assert caught.value.code is ErrorCode.BUSY
        assert sim.queued + sim.in_flight == 2  # the agent's origin pool, not 8
        sim.hold.set()
        served = await asyncio.gather(*[f for f in fetches if f not in refused])
        assert [r.status for r in served] == [200] * 8
        assert all(r.body == b"[]" for r in served)
        assert sim.max_open <= 2
        assert sim.max_in_flight == 1
    finally:
        if sim.hold is not None:
            sim.hold.set()
        await s.close()


async def test_identical_fetches_share_one_origin_request(system: System) -> None:
    sim = system.sim
    sim.hold = asyncio.Event()
    conn = system.relay.registry.get(system.pits_id)
    path = f"{sim.event_path}/Pilots.json"
    fetch = Fetch(method="GET", path=path, timeout_ms=30000)
    # Straight down the socket (the relay would coalesce these itself).
    flights = [asyncio.ensure_future(conn.fetch(fetch, 60)) for _ in range(5)]
    await wait_for(lambda: sim.in_flight == 1, what="the first to reach the origin")
    sim.hold.set()
    replies = await asyncio.gather(*flights)
    assert {r.status for r in replies} == {200}
    assert [p for _, p in sim.request_log if p == path] == [path]


@pytest.mark.provokes_error(
    "tornado.access",
    r"^503 GET /pits/pits-1/events/.*/Missing\d+\.json ",
    why="past the queue's bound, requests are shed at once with 503",
)
async def test_relay_queue_sheds_load_and_readyz_flips(system: System) -> None:
    sim = system.sim
    sim.hold = asyncio.Event()
    client = tornado.httpclient.AsyncHTTPClient(force_instance=True, max_clients=200)
    try:
        requests = [
            asyncio.ensure_future(
                client.fetch(
                    f"{system.url}/pits/{system.pits_id}{sim.event_path}/Missing{i}.json",
                    raise_error=False,
                    request_timeout=60,
                )
            )
            for i in range(200)
        ]
        # 8 in flight, 64 queued, the other 128 shed at once with 503 and Retry-After.
        await wait_for(lambda: sum(r.done() for r in requests) == 128, timeout=30, what="shedding")
        shed = [r.result() for r in requests if r.done()]
        assert {r.code for r in shed} == {503}
        assert {error_code(r) for r in shed} == {"BUSY"}
        assert all(r.headers["Retry-After"] == "1" for r in shed)
        conn = system.relay.registry.get(system.pits_id)
        assert (conn.in_flight, conn.queued) == (8, 64)
        ready = await system.get("/readyz")
        assert ready.code == 503
        assert json.loads(ready.body)["maxQueue"] == 64
        assert system.relay.metrics.shed._value.get() == 128
        sim.hold.set()
        rest = await asyncio.gather(*[r for r in requests if not r.done()])
        assert {r.code for r in rest} == {200}
        ready = await system.get("/readyz")
        assert ready.code == 200
    finally:
        sim.hold.set()
        client.close()


@pytest.mark.provokes_error(
    "tornado.access",
    r"^502 GET /pits/pits-1/events/.*/Huge\.json ",
    why="an origin file over the size limit is TOO_LARGE: 502",
)
async def test_huge_origin_file_is_too_large_without_holding_it(system: System) -> None:
    sim = system.sim
    path = f"{sim.event_path}/Huge.json"
    sim.huge[path] = 9 * MIB
    got = await system.get(f"/pits/{system.pits_id}{path}")
    assert got.code == 502
    assert error_code(got) == "TOO_LARGE"
    # Far past the cap, the agent still holds no more than the cap.
    sim.huge[path] = 64 * MIB
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        got = await system.get(f"/pits/{system.pits_id}{path}")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert error_code(got) == "TOO_LARGE"
    assert peak < 8 * MIB + 4 * MIB, f"peak {peak / MIB:.1f} MiB while refusing a 64 MiB body"


@pytest.mark.provokes_error(
    "tornado.access",
    r"^504 GET /pits/pits-1/httpfiles/Channels\.json ",
    why="an origin that never answers is 504 at the fetch timeout",
)
async def test_origin_that_never_answers_is_504(tmp_path, sim: Simulator) -> None:
    s = System(tmp_path, sim)
    await s.start_relay(fetch_timeout=30.0)
    await s.start_agent(no_push=True, fetch_timeout=0.3)
    try:
        sim.hold = asyncio.Event()
        started = time.monotonic()
        got = await s.get(f"/pits/{s.pits_id}/httpfiles/Channels.json")
        assert got.code == 504
        assert error_code(got) == "TIMEOUT"
        assert time.monotonic() - started < 10
    finally:
        sim.hold.set()
        await s.close()


@pytest.mark.provokes_error(
    "tornado.access",
    r"^504 GET /pits/pits-1/httpfiles/Channels\.json ",
    why="the relay's own deadline ends the request first: 504",
)
async def test_relay_deadline_caps_the_request(tmp_path, sim: Simulator) -> None:
    s = System(tmp_path, sim)
    await s.start_relay(fetch_timeout=0.3)
    await s.start_agent(no_push=True)
    try:
        sim.hold = asyncio.Event()
        got = await s.get(f"/pits/{s.pits_id}/httpfiles/Channels.json")
        assert got.code == 504
        assert error_code(got) == "TIMEOUT"
    finally:
        sim.hold.set()
        await s.close()


class ResettingOrigin:
    """Accepts each connection and resets it at once, counting the attempts."""

    def __init__(self) -> None:
        self.accepted = 0
        self.server: asyncio.base_events.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._reset, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _reset(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        await reader.read(1)  # the request has started
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        writer.close()

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


async def test_origin_that_resets_is_retried_once_then_unreachable(
    tmp_path, sim: Simulator
) -> None:
    origin = ResettingOrigin()
    url = await origin.start()
    s = System(tmp_path, sim)
    await s.start_relay()
    await s.start_agent(no_push=True, fpvtrackside=url)
    try:
        # The agent's own origin check at start tries (and retries) first: let it finish.
        await wait_for(lambda: s.agent.state.origin_checked is not None, what="origin check")
        before = origin.accepted
        conn = s.relay.registry.get(s.pits_id)
        with pytest.raises(ProtocolError) as caught:
            await conn.fetch(Fetch(method="GET", path="/httpfiles/x.json", timeout_ms=5000), 10)
        assert caught.value.code is ErrorCode.ORIGIN_UNREACHABLE
        assert origin.accepted - before == 2
    finally:
        await s.close()
        await origin.stop()


async def test_client_rate_limit_answers_429_and_recovers(tmp_path, sim: Simulator) -> None:
    clock = FakeClock()
    s = System(tmp_path, sim)
    await s.start_relay(clock=clock, client_rate=1.0, client_burst=2.0, freshness=60.0)
    await s.start_agent(no_push=True)
    path = f"/pits/{s.pits_id}/httpfiles/Channels.json"
    try:
        assert (await s.get(path)).code == 200
        assert (await s.get(path)).code == 200
        limited = await s.get(path)
        assert limited.code == 429
        assert limited.headers["Retry-After"] == "1"
        assert error_code(limited) == "BUSY"
        assert s.relay.metrics.rate_limited.labels("client")._value.get() == 1
        clock.advance(1.0)
        assert (await s.get(path)).code == 200
    finally:
        await s.close()


async def test_forwarded_for_counts_only_from_trusted_proxies(tmp_path, sim: Simulator) -> None:
    clock = FakeClock()
    s = System(tmp_path, sim)
    path = f"/pits/{s.pits_id}/httpfiles/Channels.json"
    await s.start_relay(clock=clock, client_rate=1.0, client_burst=1.0, freshness=60.0)
    await s.start_agent(no_push=True)
    try:
        # Not trusted: the header is ignored, so both "clients" share loopback's bucket.
        assert (await s.get(path, headers={"X-Forwarded-For": "192.0.2.1"})).code == 200
        assert (await s.get(path, headers={"X-Forwarded-For": "192.0.2.2"})).code == 429
    finally:
        await s.close()
    (tmp_path / "trusted").mkdir()
    s = System(tmp_path / "trusted", sim)
    await s.start_relay(
        clock=clock, client_rate=1.0, client_burst=1.0, freshness=60.0, trusted_proxy=("127.0.0.1",)
    )
    await s.start_agent(no_push=True)
    try:
        assert (await s.get(path, headers={"X-Forwarded-For": "192.0.2.1"})).code == 200
        assert (await s.get(path, headers={"X-Forwarded-For": "192.0.2.2"})).code == 200
        assert (await s.get(path, headers={"X-Forwarded-For": "192.0.2.1"})).code == 429
        # A client cannot pick its own address by writing the header itself.
        spoofed = await s.get(path, headers={"X-Forwarded-For": "198.51.100.9, 192.0.2.2"})
        assert spoofed.code == 429
    finally:
        await s.close()


async def test_pits_fetch_rate_limit_serves_stale_or_429(tmp_path, sim: Simulator) -> None:
    clock = FakeClock()
    s = System(tmp_path, sim)
    await s.start_relay(clock=clock, pits_fetch_rate=1.0, pits_fetch_burst=1.0, freshness=0.0)
    await s.start_agent(no_push=True)
    try:
        cached = f"/pits/{s.pits_id}/httpfiles/Channels.json"
        assert (await s.get(cached)).code == 200  # takes the one token
        stale = await s.get(cached)
        assert stale.code == 200
        assert stale.headers["X-Pitlink-Cache"] == "STALE"
        other = await s.get(f"/pits/{s.pits_id}{sim.event_path}/Event.json")
        assert other.code == 429
        assert other.headers["Retry-After"] == "1"
        clock.advance(1.0)
        assert (await s.get(f"/pits/{s.pits_id}{sim.event_path}/Event.json")).code == 200
        assert s.relay.metrics.rate_limited.labels("pits")._value.get() == 2
    finally:
        await s.close()


async def test_per_path_ttl_keeps_slow_endpoints_cached(tmp_path, sim: Simulator) -> None:
    s = System(tmp_path, sim)
    await s.start_relay(freshness=0.0, ttl=(("/events/*/Results.json", 30.0),))
    await s.start_agent(no_push=True)  # what is counted is what spectators cause
    try:
        results = f"/pits/{s.pits_id}{sim.event_path}/Results.json"
        pilots = f"/pits/{s.pits_id}{sim.event_path}/Pilots.json"
        assert (await s.get(results)).headers["X-Pitlink-Cache"] == "MISS"
        second = await s.get(results)
        assert second.headers["X-Pitlink-Cache"] == "HIT"
        assert second.headers["Cache-Control"] in ("public, max-age=30", "public, max-age=29")
        assert (await s.get(pilots)).headers["X-Pitlink-Cache"] == "MISS"
        assert (await s.get(pilots)).headers["X-Pitlink-Cache"] == "REVALIDATED"
    finally:
        await s.close()


async def test_spectators_asking_for_random_paths_cannot_spend_the_pits_budget(
    tmp_path, sim: Simulator
) -> None:
    """Each random path cost a fetch (FPVTrackside answers them with an empty 200)."""
    clock = FakeClock()
    s = System(tmp_path, sim)
    await s.start_relay(
        clock=clock,
        client_rate=None,
        client_miss_rate=5.0,
        client_miss_burst=20.0,
        pits_fetch_rate=100.0,
        pits_fetch_burst=200.0,
        trusted_proxy=("127.0.0.1",),
    )
    await s.start_agent(no_push=True)  # what is counted is what spectators cause
    try:
        before = sim.requests_total
        attackers = ["192.0.2.1", "192.0.2.2", "192.0.2.3"]
        codes: list[int] = []
        for i in range(100):
            for ip in attackers:
                path = f"/pits/{s.pits_id}{sim.event_path}/nothing-{ip}-{i}.json"
                got = await s.get(path, headers={"X-Forwarded-For": ip})
                codes.append(got.code)
        assert codes.count(200) == 3 * 20  # each attacker's burst, then nothing
        assert set(codes) == {200, 429}
        assert sim.requests_total - before == 3 * 20
        assert s.relay.metrics.rate_limited.labels("miss")._value.get() == 3 * 80
        # The pits still has its budget for everybody else.
        real = f"/pits/{s.pits_id}{sim.event_path}/Pilots.json"
        assert (await s.get(real, headers={"X-Forwarded-For": "198.51.100.7"})).code == 200
        # And asking again for a path already fetched costs nothing within the window.
        seen = f"/pits/{s.pits_id}{sim.event_path}/nothing-192.0.2.1-0.json"
        again = await s.get(seen, headers={"X-Forwarded-For": "192.0.2.1"})
        assert (again.code, again.headers["X-Pitlink-Cache"]) == (200, "HIT")
    finally:
        await s.close()
