"""Serving from the cache and the pits: freshness, revalidation, coalescing, stale copies.

The relay and its connection are the real classes; only the WebSocket under the connection is
a fake that records frames, and the test plays the pits by answering them with `on_text`.
"""

from __future__ import annotations

import asyncio

import pytest
from cloudfakes import FakeTransport, frame, value

from cloud.cache import Cache, Served
from cloud.control import PitsConnection
from cloud.metrics import Metrics
from cloud.ratelimit import RateLimited, RateLimiter
from cloud.registry import Registry
from cloud.relay import NEGATIVE, Freshness, Relay
from pitlink_testkit.clock import FakeClock
from pitlink_testkit.waiting import wait_for
from wire import ErrorCode, ProtocolError
from wire import messages as m
from wire.canonical import etag_of

PATH = "/events/e1/Event.json"
BODY = b'[{"ID":"e1","Name":"Club race"}]'
ETAG = etag_of(BODY)
JSON = "application/json; charset=utf-8"

# -- freshness --------------------------------------------------------------------------------


def test_freshness_default() -> None:
    assert Freshness().ttl(PATH) == 1.0
    assert Freshness(2.5).ttl("/anything") == 2.5
    assert Freshness(0.0).ttl(PATH) == 0.0


def test_freshness_per_pattern_rules() -> None:
    fresh = Freshness(
        1.0, [("/events/*/Results.json", 5), ("/httpfiles/**", 60), ("/events/**", 2)]
    )
    assert fresh.ttl("/events/e1/Results.json") == 5.0
    assert fresh.ttl("/events/e1/r1/Results.json") == 2.0  # `*` is one segment only
    assert fresh.ttl("/events/e1/r1/Race.json") == 2.0
    assert fresh.ttl("/httpfiles/Channels.json") == 60.0
    assert fresh.ttl("/") == 1.0
    assert isinstance(fresh.ttl("/events/e1/Results.json"), float)


def test_freshness_first_matching_rule_wins() -> None:
    broad_first = Freshness(1.0, [("/events/**", 2), ("/events/*/Results.json", 5)])
    assert broad_first.ttl("/events/e1/Results.json") == 2.0
    narrow_first = Freshness(1.0, [("/events/*/Results.json", 5), ("/events/**", 2)])
    assert narrow_first.ttl("/events/e1/Results.json") == 5.0


# -- the relay over one pits connection -------------------------------------------------------


@pytest.fixture
def relay(registry: Registry, metrics: Metrics, clock: FakeClock) -> Relay:
    return Relay(
        registry=registry,
        cache=Cache(),
        metrics=metrics,
        freshness=Freshness(1.0),
        fetch_timeout=5.0,
        clock=clock,
    )


@pytest.fixture
def pits(connect) -> tuple[PitsConnection, FakeTransport]:
    return connect("p1")


async def next_fetch(transport: FakeTransport, n: int) -> m.Frame:
    """The n-th fetch frame the relay sent (1-based), once it has been sent."""
    await wait_for(lambda: len(transport.frames("fetch")) >= n, what=f"fetch frame {n}")
    return transport.frames("fetch")[n - 1]


def answer(conn: PitsConnection, fetch: m.Frame, message: m.Message) -> None:
    conn.on_text(frame(message, fetch.id))


def ok(body: bytes = BODY, etag: str | None = None) -> m.Response:
    return m.Response(status=200, etag=etag or etag_of(body), content_type=JSON, body=body)


async def miss(relay: Relay, pits, path: str = PATH, body: bytes = BODY) -> Served:
    """A first request: the relay fetches and the pits answers 200."""
    conn, transport = pits
    n = len(transport.frames("fetch")) + 1
    task = asyncio.ensure_future(relay.get("p1", path, request_id=f"req-{n}"))
    answer(conn, await next_fetch(transport, n), ok(body))
    return await asyncio.wait_for(task, 2)


def counts(metrics: Metrics) -> dict[str, float]:
    return {
        "hits": value(metrics.cache_hits),
        "misses": value(metrics.cache_misses),
        "revalidations": value(metrics.cache_revalidations),
        "stale": value(metrics.cache_stale),
        "saved": value(metrics.cache_bytes_saved),
    }


async def test_miss_fetches_from_the_pits_and_caches(relay: Relay, pits, metrics) -> None:
    conn, transport = pits
    task = asyncio.ensure_future(relay.get("p1", PATH, request_id="req-abc"))
    fetch = await next_fetch(transport, 1)
    assert fetch.id == "req-abc"  # one grep follows the request into the agent's logs
    assert fetch.message.method == "GET"
    assert fetch.message.path == PATH
    assert fetch.message.if_none_match is None
    assert 0 < fetch.message.timeout_ms <= 5000
    answer(conn, fetch, ok())
    served = await asyncio.wait_for(task, 2)
    assert (served.status, served.cache, served.body, served.etag) == (200, "MISS", BODY, ETAG)
    assert served.fetched_at == relay.clock()
    entry = relay.cache.get(("p1", "GET", PATH))
    assert entry is not None and (entry.body, entry.etag) == (BODY, ETAG)
    assert counts(metrics) == {"hits": 0, "misses": 1, "revalidations": 0, "stale": 0, "saved": 0}


async def test_hit_within_the_window_asks_nobody(
    relay: Relay, pits, clock: FakeClock, metrics
) -> None:
    _, transport = pits
    await miss(relay, pits)
    clock.advance(0.5)
    served = await asyncio.wait_for(relay.get("p1", PATH, request_id="r2"), 2)
    assert (served.cache, served.body, served.etag) == ("HIT", BODY, ETAG)
    clock.advance(0.49)
    assert (await relay.get("p1", PATH, request_id="r3")).cache == "HIT"
    assert len(transport.frames("fetch")) == 1
    assert counts(metrics)["hits"] == 2
    assert counts(metrics)["misses"] == 1


async def test_past_the_window_revalidates_and_a_304_refreshes(
    relay: Relay, pits, clock: FakeClock, metrics
) -> None:
    conn, transport = pits
    await miss(relay, pits)
    clock.advance(1.0)  # the window is 1 s: at exactly 1 s the copy is due
    task = asyncio.ensure_future(relay.get("p1", PATH, request_id="r2"))
    fetch = await next_fetch(transport, 2)
    assert fetch.message.if_none_match == ETAG
    answer(conn, fetch, m.Response(status=304, etag=ETAG))
    served = await asyncio.wait_for(task, 2)
    assert (served.status, served.cache, served.body, served.etag) == (
        200,
        "REVALIDATED",
        BODY,
        ETAG,
    )
    entry = relay.cache.get(("p1", "GET", PATH))
    assert entry is not None and entry.fetched_at == clock.now
    # Each request is counted once, by outcome: the 304 is a revalidation, not a hit.
    assert counts(metrics) == {
        "hits": 0,
        "misses": 1,
        "revalidations": 1,
        "stale": 0,
        "saved": len(BODY),
    }
    # Fresh again from the 304: the next request within the window is a HIT.
    clock.advance(0.5)
    assert (await relay.get("p1", PATH, request_id="r3")).cache == "HIT"
    assert len(transport.frames("fetch")) == 2


async def test_a_changed_body_replaces_the_copy(relay: Relay, pits, clock: FakeClock) -> None:
    conn, transport = pits
    await miss(relay, pits)
    clock.advance(2.0)
    new_body = b'[{"ID":"e1","Name":"Club race, day 2"}]'
    task = asyncio.ensure_future(relay.get("p1", PATH, request_id="r2"))
    answer(conn, await next_fetch(transport, 2), ok(new_body))
    served = await asyncio.wait_for(task, 2)
    assert (served.cache, served.body, served.etag) == ("MISS", new_body, etag_of(new_body))
    entry = relay.cache.get(("p1", "GET", PATH))
    assert entry is not None and entry.body == new_body


async def test_concurrent_requests_make_one_fetch(relay: Relay, pits, metrics) -> None:
    conn, transport = pits
    tasks = [asyncio.ensure_future(relay.get("p1", PATH, request_id=f"req-{i}")) for i in range(20)]
    await wait_for(lambda: relay.waiting == 20, what="all requests waiting on one fetch")
    assert len(transport.frames("fetch")) == 1
    answer(conn, transport.frames("fetch")[0], ok())
    served = await asyncio.wait_for(asyncio.gather(*tasks), 2)
    assert {s.body for s in served} == {BODY}
    assert len(transport.frames("fetch")) == 1
    assert relay.flights == 0
    assert counts(metrics)["misses"] == 20


async def test_coalescing_is_per_path(relay: Relay, pits) -> None:
    conn, transport = pits
    a = [asyncio.ensure_future(relay.get("p1", "/a.json", request_id=f"a{i}")) for i in range(3)]
    b = [asyncio.ensure_future(relay.get("p1", "/b.json", request_id=f"b{i}")) for i in range(3)]
    await wait_for(lambda: relay.waiting == 6, what="all six waiting")
    fetches = transport.frames("fetch")
    assert sorted(f.message.path for f in fetches) == ["/a.json", "/b.json"]
    for f in fetches:
        answer(conn, f, ok(b'["%s"]' % f.message.path.encode()))
    assert {s.body for s in await asyncio.gather(*a)} == {b'["/a.json"]'}
    assert {s.body for s in await asyncio.gather(*b)} == {b'["/b.json"]'}


async def test_a_caller_that_leaves_does_not_cancel_the_fetch(relay: Relay, pits) -> None:
    conn, transport = pits
    leaver = asyncio.ensure_future(relay.get("p1", PATH, request_id="r1"))
    stayer = asyncio.ensure_future(relay.get("p1", PATH, request_id="r2"))
    fetch = await next_fetch(transport, 1)
    await wait_for(lambda: relay.waiting == 2, what="both waiting")
    leaver.cancel()
    answer(conn, fetch, ok())
    assert (await asyncio.wait_for(stayer, 2)).body == BODY
    with pytest.raises(asyncio.CancelledError):
        await leaver


@pytest.mark.parametrize(
    "code",
    [ErrorCode.TIMEOUT, ErrorCode.ORIGIN_UNREACHABLE, ErrorCode.BAD_CONTENT, ErrorCode.BUSY],
)
async def test_error_reply_serves_the_stale_copy(
    relay: Relay, pits, clock: FakeClock, metrics, code: ErrorCode
) -> None:
    conn, transport = pits
    first = await miss(relay, pits)
    clock.advance(3.0)
    task = asyncio.ensure_future(relay.get("p1", PATH, request_id="r2"))
    answer(conn, await next_fetch(transport, 2), m.Error(code=code, message="no good"))
    served = await asyncio.wait_for(task, 2)
    assert (served.status, served.cache, served.body, served.etag) == (200, "STALE", BODY, ETAG)
    assert served.stale_reason == code
    assert served.fetched_at == first.fetched_at  # its age is the truth
    assert counts(metrics)["stale"] == 1
    if code in NEGATIVE:  # an answer about the path: the copy stands in for its window
        again = await relay.get("p1", PATH, request_id="r2b")
        assert (again.cache, again.body) == ("STALE", BODY)
        assert len(transport.frames("fetch")) == 2
        clock.advance(1.0)
    # A stale copy is not made fresh: the next request asks the pits again.
    task = asyncio.ensure_future(relay.get("p1", PATH, request_id="r3"))
    answer(conn, await next_fetch(transport, 3), m.Response(status=304, etag=ETAG))
    assert (await asyncio.wait_for(task, 2)).cache == "REVALIDATED"


async def test_error_reply_without_a_copy_is_raised(relay: Relay, pits, metrics) -> None:
    conn, transport = pits
    task = asyncio.ensure_future(relay.get("p1", PATH, request_id="r1"))
    answer(conn, await next_fetch(transport, 1), m.Error(code=ErrorCode.TIMEOUT, message="slow"))
    with pytest.raises(ProtocolError) as caught:
        await asyncio.wait_for(task, 2)
    assert caught.value.code == ErrorCode.TIMEOUT
    assert len(relay.cache) == 0
    assert relay.flights == 0


async def test_denied_is_never_papered_over_with_a_stale_copy(
    relay: Relay, pits, clock: FakeClock
) -> None:
    conn, transport = pits
    await miss(relay, pits)
    clock.advance(3.0)
    task = asyncio.ensure_future(relay.get("p1", PATH, request_id="r2"))
    answer(conn, await next_fetch(transport, 2), m.Error(code=ErrorCode.DENIED, message="no"))
    with pytest.raises(ProtocolError) as caught:
        await asyncio.wait_for(task, 2)
    assert caught.value.code == ErrorCode.DENIED


async def test_no_pits_connected_is_unavailable(relay: Relay, metrics) -> None:
    with pytest.raises(ProtocolError) as caught:
        await asyncio.wait_for(relay.get("nobody", PATH, request_id="r1"), 2)
    assert caught.value.code == ErrorCode.UNAVAILABLE
    assert relay.flights == 0


async def test_pits_gone_serves_the_stale_copy(relay: Relay, pits, clock: FakeClock) -> None:
    conn, _ = pits
    await miss(relay, pits)
    conn.closed()
    clock.advance(3.0)
    served = await asyncio.wait_for(relay.get("p1", PATH, request_id="r2"), 2)
    assert (served.cache, served.body, served.stale_reason) == (
        "STALE",
        BODY,
        ErrorCode.UNAVAILABLE,
    )


async def test_connection_lost_mid_fetch_fails_at_once(relay: Relay, pits) -> None:
    conn, transport = pits
    task = asyncio.ensure_future(relay.get("p1", PATH, request_id="r1"))
    await next_fetch(transport, 1)
    conn.closed()
    with pytest.raises(ProtocolError) as caught:
        await asyncio.wait_for(task, 1.0)  # well before the 5 s fetch timeout
    assert caught.value.code == ErrorCode.UNAVAILABLE


async def test_body_that_does_not_match_its_etag_is_bad_content(
    relay: Relay, pits, metrics
) -> None:
    conn, transport = pits
    task = asyncio.ensure_future(relay.get("p1", PATH, request_id="r1"))
    answer(conn, await next_fetch(transport, 1), ok(BODY, etag=etag_of(b"[]")))
    with pytest.raises(ProtocolError) as caught:
        await asyncio.wait_for(task, 2)
    assert caught.value.code == ErrorCode.BAD_CONTENT
    assert len(relay.cache) == 0
    assert counts(metrics)["misses"] == 0


async def test_body_that_does_not_match_its_etag_keeps_the_good_copy(
    relay: Relay, pits, clock: FakeClock
) -> None:
    conn, transport = pits
    await miss(relay, pits)
    clock.advance(3.0)
    task = asyncio.ensure_future(relay.get("p1", PATH, request_id="r2"))
    answer(conn, await next_fetch(transport, 2), ok(b"[1,2", etag=etag_of(b"[1,2,3]")))
    served = await asyncio.wait_for(task, 2)
    assert (served.cache, served.body, served.stale_reason) == (
        "STALE",
        BODY,
        ErrorCode.BAD_CONTENT,
    )
    entry = relay.cache.get(("p1", "GET", PATH))
    assert entry is not None and entry.body == BODY


async def test_a_304_with_another_etag_does_not_revalidate(
    relay: Relay, pits, clock: FakeClock, metrics
) -> None:
    conn, transport = pits
    await miss(relay, pits)
    clock.advance(3.0)
    task = asyncio.ensure_future(relay.get("p1", PATH, request_id="r2"))
    answer(conn, await next_fetch(transport, 2), m.Response(status=304, etag=etag_of(b"[9]")))
    served = await asyncio.wait_for(task, 2)
    assert served.cache != "REVALIDATED"
    assert counts(metrics)["revalidations"] == 0
    assert counts(metrics)["saved"] == 0


async def test_requests_for_different_pits_do_not_share(relay: Relay, connect) -> None:
    a_conn, a_t = connect("pa")
    b_conn, b_t = connect("pb")
    ta = asyncio.ensure_future(relay.get("pa", PATH, request_id="ra"))
    tb = asyncio.ensure_future(relay.get("pb", PATH, request_id="rb"))
    answer(a_conn, await next_fetch(a_t, 1), ok(b"[1]"))
    answer(b_conn, await next_fetch(b_t, 1), ok(b"[2]"))
    assert (await ta).body == b"[1]"
    assert (await tb).body == b"[2]"


# -- what spectators asking for what is not there cost ----------------------------------------


async def test_a_negative_answer_is_remembered_for_the_freshness_window(
    relay: Relay, pits, clock: FakeClock, metrics: Metrics
) -> None:
    conn, transport = pits
    path = "/httpfiles/Missing.json"  # FPVTrackside's HTML fallback: BAD_CONTENT at the pits
    task = asyncio.ensure_future(relay.get("p1", path, request_id="r1"))
    answer(conn, await next_fetch(transport, 1), m.Error(code=ErrorCode.BAD_CONTENT, message="no"))
    with pytest.raises(ProtocolError):
        await asyncio.wait_for(task, 2)
    for _ in range(50):  # asked again and again within the window: no fetch
        with pytest.raises(ProtocolError) as caught:
            await relay.get("p1", path, request_id="r")
        assert caught.value.code == ErrorCode.BAD_CONTENT
    assert len(transport.frames("fetch")) == 1
    assert value(metrics.cache_negative) == 50
    clock.advance(1.0)  # the window is over: the pits is asked again
    task = asyncio.ensure_future(relay.get("p1", path, request_id="r2"))
    answer(conn, await next_fetch(transport, 2), ok(b"[]"))
    assert (await asyncio.wait_for(task, 2)).body == b"[]"


async def test_an_origin_error_status_is_remembered_too(
    relay: Relay, pits, clock: FakeClock
) -> None:
    conn, transport = pits
    task = asyncio.ensure_future(relay.get("p1", "/httpfiles/gone.css", request_id="r1"))
    answer(conn, await next_fetch(transport, 1), m.Response(status=404, body=b"not here"))
    assert (await asyncio.wait_for(task, 2)).status == 404
    again = await relay.get("p1", "/httpfiles/gone.css", request_id="r2")
    assert (again.status, again.body) == (404, b"not here")
    assert len(transport.frames("fetch")) == 1


async def test_busy_and_timeouts_are_not_remembered(relay: Relay, pits) -> None:
    conn, transport = pits
    task = asyncio.ensure_future(relay.get("p1", PATH, request_id="r1"))
    answer(conn, await next_fetch(transport, 1), m.Error(code=ErrorCode.BUSY, message="busy"))
    with pytest.raises(ProtocolError):
        await asyncio.wait_for(task, 2)
    task = asyncio.ensure_future(relay.get("p1", PATH, request_id="r2"))
    answer(conn, await next_fetch(transport, 2), ok())
    assert (await asyncio.wait_for(task, 2)).status == 200


@pytest.fixture
def budgeted(registry: Registry, metrics: Metrics, clock: FakeClock) -> Relay:
    return Relay(
        registry=registry,
        cache=Cache(),
        metrics=metrics,
        freshness=Freshness(1.0),
        miss_limiter=RateLimiter(1.0, 3.0),
        clock=clock,
    )


async def test_a_client_past_its_miss_budget_costs_the_pits_nothing(
    budgeted: Relay, pits, clock: FakeClock
) -> None:
    conn, transport = pits

    async def ask(path: str, client: str) -> Served:
        n = len(transport.frames("fetch")) + 1
        task = asyncio.ensure_future(budgeted.get("p1", path, request_id=path, client=client))
        answer(conn, await next_fetch(transport, n), ok(b"[]"))
        return await asyncio.wait_for(task, 2)

    for i in range(3):
        assert (await ask(f"/events/e1/random-{i}.json", "10.0.0.9")).status == 200
    with pytest.raises(RateLimited) as caught:
        await budgeted.get("p1", "/events/e1/random-3.json", request_id="x", client="10.0.0.9")
    assert caught.value.retry_after > 0
    assert len(transport.frames("fetch")) == 3
    # What is fresh in the cache costs nothing: the same client still gets it.
    hit = await budgeted.get("p1", "/events/e1/random-0.json", request_id="y", client="10.0.0.9")
    assert hit.cache == "HIT"
    # Another spectator is not affected.
    assert (await ask("/events/e1/Event.json", "10.0.0.10")).status == 200
    # A stale copy stands in for a client over its budget.
    clock.advance(0.5)
    stale = await budgeted.get("p1", "/events/e1/random-0.json", request_id="z", client="10.0.0.9")
    assert stale.cache == "HIT"
    clock.advance(0.6)
    stale = await budgeted.get("p1", "/events/e1/random-1.json", request_id="z", client="10.0.0.9")
    assert stale.cache == "STALE"
