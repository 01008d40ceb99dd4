"""One host name per pits (issue 19): `--pits-domain localhost` serves pits `club-1` at
`club-1.localhost` as FPVTrackside serves its own root, through the same cache, allowlist,
limits and headers; the admin answers only on the relay's own name, where pits paths are sent
on to the pits' host; a pits whose id is not a DNS label is refused at hello. The security
tests of the path-based routes are tried here on the host-based ones."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import tornado.httpclient
from test_paths_and_methods import EVIL

from cloud.app import CloudRelay
from cloud.config import config_from_args
from pitlink_testkit.fpvtrackside import Simulator
from pitlink_testkit.system import System
from pitlink_testkit.waiting import wait_for
from wire import CloseCode
from wire.settings import SettingsError

DOMAIN = "localhost"


@dataclass
class Clubs:
    one: System
    two: System
    relay: CloudRelay

    async def get(self, host: str, path: str, **kwargs: Any) -> tornado.httpclient.HTTPResponse:
        """`path` asked of the relay under the host name `host` (its port added)."""
        port = self.relay.port
        headers = {"Host": f"{host}:{port}", **kwargs.pop("headers", {})}
        kwargs.setdefault("raise_error", False)
        kwargs.setdefault("follow_redirects", False)
        kwargs.setdefault("request_timeout", 20.0)
        return await self.one.http.fetch(
            f"http://127.0.0.1:{port}{path}", headers=headers, **kwargs
        )

    def admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.one.keys.issue(sub='ops', role='admin', ttl=600)}"}


async def start_clubs(tmp_path: Path, sim: Simulator, other: Simulator, **relay: Any) -> Clubs:
    one = System(tmp_path, sim, pits_id="club-1")
    settings = {
        "freshness": 0.0,
        "client_rate": None,
        "pits_fetch_rate": None,
        "pits_domain": DOMAIN,
        "active_pits": "nobody",  # neither is active: the root serves neither
        **relay,
    }
    await one.start_relay(**settings)
    # Boxes that pull only: these tests count what reaches each origin.
    await one.start_agent(no_push=True)
    two = one.sibling(other, "club-2")
    await two.start_agent(no_push=True)
    assert one.relay is not None
    return Clubs(one, two, one.relay)


@pytest.fixture
async def other_sim() -> AsyncIterator[Simulator]:
    simulator = Simulator(seed=8, lap_interval=None)
    await simulator.start()
    yield simulator
    await simulator.stop()


@pytest.fixture
async def clubs(tmp_path: Path, sim: Simulator, other_sim: Simulator) -> AsyncIterator[Clubs]:
    got = await start_clubs(tmp_path, sim, other_sim)
    yield got
    await got.two.stop_agent()
    await got.one.close()


@pytest.mark.provokes_error(
    "tornado.access",
    r"^503 GET /events/",
    why="neither pits is active: the relay's root paths serve neither",
)
async def test_each_pits_is_served_at_its_own_host_as_fpvtrackside_serves_its_root(
    clubs: Clubs,
) -> None:
    for system in (clubs.one, clubs.two):
        host = f"{system.pits_id}.{DOMAIN}"
        page = await clubs.get(host, "/")
        assert page.code == 200, page.body[:300]
        assert f"events/{system.sim.event_id}".encode() in page.body
        assert page.headers["Content-Type"].startswith("text/html")
        event = await clubs.get(host, f"{system.sim.event_path}/Event.json")
        assert event.code == 200
        assert json.loads(event.body)[0]["ID"] == system.sim.event_id
        script = await clubs.get(host, "/httpfiles/EventManager.js")
        assert script.code == 200
        assert script.headers["Content-Type"].startswith("text/javascript")
        # Where the page's pushState leaves the address bar: the page, as FPVTrackside answers.
        rounds = await clubs.get(host, "/Rounds")
        assert rounds.code == 200 and rounds.body == page.body
        # The same headers as the path-based route gives the same file.
        by_path = await clubs.get("127.0.0.1", f"/pits/{system.pits_id}/httpfiles/EventManager.js")
        for name in (
            "Content-Type",
            "Content-Security-Policy",
            "X-Content-Type-Options",
            "Access-Control-Allow-Origin",
            "ETag",
        ):
            assert script.headers[name] == by_path.headers[name], name
    # Neither is active: the relay's root serves neither.
    root = await clubs.get("127.0.0.1", f"{clubs.one.sim.event_path}/Event.json")
    assert root.code == 503


@pytest.mark.provokes_error(
    "tornado.access",
    r"^503 GET / ",
    why="a pits host whose pits is not connected",
)
async def test_a_pits_host_serves_only_that_pits(clubs: Clubs) -> None:
    host = f"club-2.{DOMAIN}"
    theirs = await clubs.get(host, f"{clubs.one.sim.event_path}/Event.json")
    assert theirs.code == 200 and theirs.body in (b"", b"[]")  # club-2 has no such event
    for path in ("/pits/club-1/", "/pits/club-1/httpfiles/Channels.json", "/admin/api/x"):
        got = await clubs.get(host, path)
        assert got.code in (403, 404), (path, got.code)
    # One segment is where the page's pushState may have left the address bar: the pits' page.
    for path in ("/admin", "/control"):
        got = await clubs.get(host, path)
        assert got.code == 200 and f"events/{clubs.two.sim.event_id}".encode() in got.body
    nobody = await clubs.get(f"club-9.{DOMAIN}", "/")
    assert nobody.code == 503  # no such pits connected


@pytest.mark.parametrize("evil", EVIL)
async def test_escaping_paths_never_reach_the_origin_on_a_pits_host(
    clubs: Clubs, evil: str
) -> None:
    before = list(clubs.one.sim.request_log)
    got = await clubs.get(f"club-1.{DOMAIN}", evil)
    assert got.code in (400, 403, 404), (evil, got.code)
    assert b'"error"' in got.body
    assert clubs.one.sim.request_log == before
    assert clubs.one.sim.traversals == []


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
async def test_other_methods_are_refused_on_a_pits_host(clubs: Clubs, method: str) -> None:
    before = list(clubs.one.sim.request_log)
    got = await clubs.get(
        f"club-1.{DOMAIN}",
        "/httpfiles/Channels.json",
        method=method,
        body=b"x",
        allow_nonstandard_methods=True,
    )
    assert got.code == 405 and "GET" in got.headers["Allow"]
    assert clubs.one.sim.request_log == before


async def test_the_admin_answers_on_the_relays_own_name_only(clubs: Clubs) -> None:
    for host in (f"club-1.{DOMAIN}", "127.0.0.1"):
        got = await clubs.get(host, "/admin/api/connections", headers=clubs.admin())
        assert got.code == 404, host
        assert b"relay admin" not in (await clubs.get(host, "/admin")).body
    got = await clubs.get(DOMAIN, "/admin/api/connections", headers=clubs.admin())
    assert got.code == 200
    rows = {row["pitsId"]: row for row in json.loads(got.body)["connections"]}
    assert rows["club-1"]["host"] == f"club-1.{DOMAIN}"
    assert rows["club-2"]["host"] == f"club-2.{DOMAIN}"
    assert (await clubs.get(DOMAIN, "/admin")).code == 200
    # The relay's own routes stay on its name: agents dial it, probes ask it.
    assert (await clubs.get(DOMAIN, "/healthz")).code == 200
    assert (await clubs.get(DOMAIN, "/generate_204")).code == 204


async def test_pits_paths_on_the_admins_name_are_sent_to_the_pits_host(clubs: Clubs) -> None:
    """Old links and dashboards keep working, and no pits content shares the admin's origin."""
    port = clubs.relay.port
    before = clubs.relay.metrics.fetches._value.get()
    got = await clubs.get(DOMAIN, "/pits/club-2/httpfiles/Channels.json?x=1")
    assert got.code == 308
    assert got.headers["Location"] == f"http://club-2.{DOMAIN}:{port}/httpfiles/Channels.json?x=1"
    assert got.headers["Access-Control-Allow-Origin"] == "*"  # a CORS fetch may follow it
    assert clubs.relay.metrics.fetches._value.get() == before  # nothing served here
    page = await clubs.get(DOMAIN, "/pits/club-1/")
    assert page.code == 308 and page.headers["Location"] == f"http://club-1.{DOMAIN}:{port}/"
    unusual = await clubs.get(DOMAIN, "/pits/club-1/events/%E2%82%AC%20a/Event.json")
    assert unusual.headers["Location"].endswith("/events/%E2%82%AC%20a/Event.json")
    # The root paths go to the active pits' host (here one that is not connected: 503 there).
    root = await clubs.get(DOMAIN, "/events/x/Event.json")
    assert root.headers["Location"] == f"http://nobody.{DOMAIN}:{port}/events/x/Event.json"
    for evil in EVIL[:6]:
        assert (await clubs.get(DOMAIN, f"/pits/club-1{evil}")).code in (400, 403, 404)


async def test_the_front_page_shows_each_pits_own_address(clubs: Clubs) -> None:
    got = await clubs.get(DOMAIN, "/")
    assert got.code == 200
    port = clubs.relay.port
    assert f'href="http://club-1.{DOMAIN}:{port}/"'.encode() in got.body
    assert f'href="http://club-2.{DOMAIN}:{port}/httpfiles/Channels.json"'.encode() in got.body
    assert b"/pits/club-1/" not in got.body
    assert f"http://&lt;pits id&gt;.{DOMAIN}:{port}/".encode() in got.body


async def test_with_an_admin_host_the_relays_name_serves_pits_paths_as_before(
    tmp_path: Path, sim: Simulator, other_sim: Simulator
) -> None:
    clubs = await start_clubs(tmp_path, sim, other_sim, admin_host=f"admin.{DOMAIN}")
    try:
        got = await clubs.get(DOMAIN, "/pits/club-1/httpfiles/Channels.json")
        assert got.code == 200
        assert (await clubs.get(DOMAIN, "/admin")).code == 404
        admin = await clubs.get(f"admin.{DOMAIN}", "/admin/api/connections", headers=clubs.admin())
        assert admin.code == 200
        assert (await clubs.get(f"admin.{DOMAIN}", "/pits/club-1/")).code == 404
        assert (await clubs.get(f"club-1.{DOMAIN}", "/")).code == 200
    finally:
        await clubs.two.stop_agent()
        await clubs.one.close()


async def test_a_pits_whose_id_is_not_a_dns_label_is_refused_at_hello(
    clubs: Clubs, other_sim: Simulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    bad = clubs.one.sibling(other_sim, "Club_3")
    agent = await bad.start_agent(no_push=True, wait=False)
    try:
        await wait_for(lambda: agent.state.close_code == CloseCode.POLICY, what="the refusal")
        assert clubs.relay.registry.get("Club_3") is None
        refused = [
            r
            for r in caplog.records
            if r.getMessage() == "pits refused: its id cannot be its host name"
        ]
        assert refused
        assert "not a DNS label" in (agent.state.cloud_error or ""), agent.state.cloud_error
    finally:
        await bad.stop_agent()


async def test_a_pits_named_like_the_admins_host_is_refused_at_hello(
    tmp_path: Path, sim: Simulator, other_sim: Simulator
) -> None:
    """`--admin-host admin.<domain>` takes the label `admin`: a pits of that id could connect
    but never be reached at its own host, so it is told why at hello instead."""
    clubs = await start_clubs(tmp_path, sim, other_sim, admin_host=f"admin.{DOMAIN}")
    named = clubs.one.sibling(other_sim, "admin")
    agent = await named.start_agent(no_push=True, wait=False)
    try:
        await wait_for(lambda: agent.state.close_code == CloseCode.POLICY, what="the refusal")
        assert clubs.relay.registry.get("admin") is None
        assert f"admin.{DOMAIN} is this relay's admin page" in (agent.state.cloud_error or "")
        # The admin's host still answers as the admin's, and the other clubs as theirs.
        admin = await clubs.get(f"admin.{DOMAIN}", "/admin/api/connections", headers=clubs.admin())
        assert admin.code == 200
        assert (await clubs.get(f"club-1.{DOMAIN}", "/")).code == 200
    finally:
        await named.stop_agent()
        await clubs.two.stop_agent()
        await clubs.one.close()


async def test_fresh_hits_on_a_pits_host_take_the_fast_path(
    tmp_path: Path, sim: Simulator, other_sim: Simulator
) -> None:
    clubs = await start_clubs(tmp_path, sim, other_sim, freshness=60.0)
    try:
        host = f"club-1.{DOMAIN}"
        first = await clubs.get(host, "/Rounds")
        assert first.headers["X-Pitlink-Cache"] == "MISS"
        hits = clubs.relay.metrics.cache_hits._value.get()
        again = await clubs.get(host, "/")
        assert again.headers["X-Pitlink-Cache"] == "HIT" and again.body == first.body
        assert clubs.relay.metrics.cache_hits._value.get() == hits + 1
        # The relay's own name does not serve it from the cache: it sends it on.
        moved = await clubs.get(DOMAIN, "/pits/club-1/")
        assert moved.code == 308
    finally:
        await clubs.two.stop_agent()
        await clubs.one.close()


@pytest.mark.parametrize(
    "domain", ["bad_domain!", "a..b", "-a.b", "x" * 64 + ".b", "a." * 100 + "b"]
)
def test_the_flag_refuses_a_name_that_is_not_a_domain(tmp_path: Path, domain: str) -> None:
    with pytest.raises((SettingsError, SystemExit)):
        config_from_args(["--jwks", str(tmp_path / "k"), "--pits-domain", domain], env={})


def test_the_flag_takes_a_domain(tmp_path: Path) -> None:
    args = ["--jwks", str(tmp_path / "k"), "--pits-domain", "Relay.Example.COM."]
    assert config_from_args(args, env={}).pits_domain == "relay.example.com"


async def test_random_paths_on_a_pits_host_cannot_spend_the_pits_budget(
    tmp_path: Path, sim: Simulator, other_sim: Simulator
) -> None:
    """The per-client miss budget holds on a pits' own host as under /pits/<id>/."""
    clubs = await start_clubs(
        tmp_path, sim, other_sim, client_miss_rate=0.001, client_miss_burst=5.0
    )
    try:
        before = sim.requests_total
        codes = [
            (await clubs.get(f"club-1.{DOMAIN}", f"{sim.event_path}/nothing-{i}.json")).code
            for i in range(12)
        ]
        assert codes == [200] * 5 + [429] * 7
        assert sim.requests_total - before == 5
        # The same client's budget is spent on the path-based route too: one client, one budget.
        by_path = await clubs.get("127.0.0.1", f"/pits/club-1{sim.event_path}/nothing-x.json")
        assert by_path.code == 429
    finally:
        await clubs.two.stop_agent()
        await clubs.one.close()


async def test_a_final_dot_is_the_same_pits_never_the_active_one(
    tmp_path: Path, sim: Simulator, other_sim: Simulator
) -> None:
    """The attack (issue 25, item 5): `Host: club-2.<domain>.` was no pits' host to the relay,
    so its root routes served the *active* pits' data under club-2's name. Now a final dot is
    the same name, on the fast path of a hit and in the application alike; and a name under the
    domain that can be no pits' is a 404 that says so."""
    clubs = await start_clubs(tmp_path, sim, other_sim, active_pits="club-1", freshness=60.0)
    try:
        for _ in range(2):  # a miss, then a fresh hit
            got = await clubs.get(f"club-2.{DOMAIN}.", f"{other_sim.event_path}/Event.json")
            assert got.code == 200, got.body
            assert json.loads(got.body)[0]["ID"] == other_sim.event_id
        page = await clubs.get(f"club-2.{DOMAIN}.", "/")
        assert f"events/{other_sim.event_id}".encode() in page.body
        assert sim.event_id.encode() not in page.body
        for name in (f"a.b.{DOMAIN}", f"under_score.{DOMAIN}", f"a.b.{DOMAIN}."):
            for path in (f"{sim.event_path}/Event.json", "/", "/httpfiles/Channels.json"):
                refused = await clubs.get(name, path)
                assert refused.code == 404, (name, path)
                message = json.loads(refused.body)["error"]["message"]
                assert message.startswith(f"no pits is served at {name.rstrip('.')}")
                assert sim.event_id.encode() not in refused.body
    finally:
        await clubs.two.stop_agent()
        await clubs.one.close()
