"""Many spectators, one fetch: concurrent requests for one key share one revalidation."""

from __future__ import annotations

import asyncio

import tornado.httpclient

from pitlink_testkit.system import System
from pitlink_testkit.waiting import wait_for


async def test_1000_concurrent_requests_make_one_fetch_and_one_origin_request(
    system: System,
) -> None:
    path = f"{system.sim.event_path}/Event.json"
    before = len(system.sim.request_log)  # the agent read Event.json itself, for its name
    system.sim.hold = asyncio.Event()
    client = tornado.httpclient.AsyncHTTPClient(force_instance=True, max_clients=1000)
    try:
        requests = [
            asyncio.ensure_future(
                client.fetch(f"{system.url}/pits/{system.pits_id}{path}", request_timeout=60)
            )
            for _ in range(1000)
        ]
        await wait_for(
            lambda: system.relay.serving.waiting == 1000,
            timeout=60,
            what="1000 requests waiting at the relay",
        )
        assert system.relay.serving.flights == 1
        system.sim.hold.set()
        responses = await asyncio.gather(*requests)
    finally:
        client.close()
    bodies = {r.body for r in responses}
    assert len(bodies) == 1
    assert {r.code for r in responses} == {200}
    assert [m for m, p in system.sim.request_log[before:] if p == path] == ["GET"]
    assert system.relay.metrics.fetches._value.get() == 1
    assert system.relay.metrics.cache_misses._value.get() == 1000
