"""Metrics move as the traffic says; one request id is followed through both programs' logs."""

from __future__ import annotations

import json
import logging

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pitlink_testkit.system import System
from pitlink_testkit.waiting import wait_for


async def scrape(s: System, url: str) -> dict[tuple[str, tuple], float]:
    got = await s.http.fetch(url)
    assert got.headers["Content-Type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(got.body.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


@pytest.mark.provokes_error(
    "tornado.access",
    r"^502 GET /pits/pits-1/httpfiles/Nope\.json ",
    why="a path FPVTrackside does not have is BAD_CONTENT (502), counted as an error",
)
async def test_counters_say_one_miss_one_hit_one_304(system: System) -> None:
    path = f"/pits/{system.pits_id}{system.sim.event_path}/Pilots.json"
    system.relay.serving.freshness.default = 60.0
    miss = await system.get(path)
    hit = await system.get(path)
    system.relay.serving.freshness.default = 0.0
    revalidated = await system.get(path)
    assert [r.headers["X-Pitlink-Cache"] for r in (miss, hit, revalidated)] == [
        "MISS",
        "HIT",
        "REVALIDATED",
    ]
    m = await scrape(system, f"{system.url}/metrics")
    assert m[("pitlink_cache_misses_total", ())] == 1
    assert m[("pitlink_cache_hits_total", ())] == 1
    assert m[("pitlink_cache_revalidations_total", ())] == 1
    assert m[("pitlink_cache_bytes_saved_total", ())] == len(miss.body)
    assert m[("pitlink_cache_entries", ())] == 1
    assert m[("pitlink_cache_bytes", ())] == len(miss.body)
    assert m[("pitlink_fetches_total", ())] == 2
    assert m[("pitlink_control_connections", (("state", "open"),))] == 1
    assert m[("pitlink_fetch_in_flight", ())] == 0
    assert m[("pitlink_fetch_queue_depth", ())] == 0

    bad = await system.get(f"/pits/{system.pits_id}/httpfiles/Nope.json")
    assert bad.code == 502
    m = await scrape(system, f"{system.url}/metrics")
    assert m[("pitlink_errors_total", (("code", "BAD_CONTENT"),))] == 1


@pytest.mark.provokes_error(
    "tornado.access",
    r"^502 GET /pits/pits-1/httpfiles/Nope\.json ",
    why="a path FPVTrackside does not have is BAD_CONTENT (502), counted as an error",
)
async def test_agent_metrics(system: System) -> None:
    await system.get(f"/pits/{system.pits_id}/httpfiles/Channels.json")
    await system.get(f"/pits/{system.pits_id}/httpfiles/Nope.json")
    url = f"http://127.0.0.1:{system.agent.status_port}/metrics"
    m = await scrape(system, url)
    assert m[("pitlink_ws_connected", ())] == 1
    assert m[("pitlink_fetches_total", (("outcome", "ok"),))] == 1
    assert m[("pitlink_fetches_total", (("outcome", "BAD_CONTENT"),))] == 1
    assert m[("pitlink_origin_fetch_seconds_count", ())] == 2
    assert m[("pitlink_last_success_timestamp_seconds", ())] > 1.7e9
    assert m[("pitlink_reconnects_total", ())] == 0
    system.agent.link.reconnect_now()
    await wait_for(lambda: system.agent.link.sessions == 2, what="reconnect")
    m = await scrape(system, url)
    assert m[("pitlink_reconnects_total", ())] == 1


async def test_healthz_counts_connections(system: System) -> None:
    health = json.loads((await system.get("/healthz")).body)
    assert health == {"status": "ok", "connections": 1}
    await system.stop_agent()
    await wait_for(lambda: not system.relay.registry.live(), what="disconnect")
    assert json.loads((await system.get("/healthz")).body)["connections"] == 0


async def test_one_request_id_through_relay_and_agent_logs(system: System, caplog) -> None:
    caplog.set_level(logging.INFO)
    got = await system.get(f"/pits/{system.pits_id}/httpfiles/Channels.json")
    request_id = got.headers["X-Request-Id"]
    await wait_for(
        lambda: any(
            getattr(r, "request_id", None) == request_id
            for r in caplog.records
            if r.name == "pitlink.pits.fetch"
        ),
        what="the agent's line",
    )
    loggers = {r.name for r in caplog.records if getattr(r, "request_id", None) == request_id}
    assert {"pitlink.cloud.audit", "pitlink.pits.fetch"} <= loggers


async def test_a_health_checks_503_is_not_logged_as_an_error(system: System, caplog) -> None:
    caplog.set_level(logging.INFO, logger="tornado.access")
    system.relay.drain.draining = True
    try:
        assert (await system.get("/readyz")).code == 503
    finally:
        system.relay.drain.draining = False
    lines = [
        r for r in caplog.records if r.name == "tornado.access" and "/readyz" in r.getMessage()
    ]
    assert [r.levelname for r in lines] == ["INFO"]
    assert lines[0].getMessage().startswith("503 GET /readyz")
