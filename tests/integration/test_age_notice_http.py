"""The relay's age notice on a pits' HTML pages, over real sockets: the simulator, an agent and
the relay. A page gets the relay's script tag and an ETag of its own (304 for it, never for the
pits' own ETag); JSON and scripts pass byte for byte; a page past the bound, or any page with
`--no-age-notice`, passes unchanged; a hostile page cannot break the tag; the script and the
box's state are on the page's own host, with or without `--pits-domain`."""

from __future__ import annotations

import json
import time
from importlib import resources
from pathlib import Path
from typing import Any

from pitlink_testkit.fpvtrackside import Simulator
from pitlink_testkit.system import System
from pitlink_testkit.waiting import wait_for
from wire.canonical import canonical_json, etag_of

SCRIPT = resources.files("cloud").joinpath("static", "age.js").read_bytes()


def tag(base: str) -> bytes:
    return f'<script src="{base}pitlink/age.js" defer></script>'.encode()


def marked(raw: bytes, base: str) -> bytes:
    at = raw.lower().rfind(b"</body")
    return raw[:at] + tag(base) + raw[at:]


async def origin_page(s: System) -> bytes:
    """The page as FPVTrackside itself serves it."""
    got = await s.http.fetch(s.sim.url + "/")
    return got.body


async def test_a_page_carries_the_notice_with_an_etag_of_its_own(system: System) -> None:
    raw = await origin_page(system)
    base = f"/pits/{system.pits_id}/"
    page = await system.get(base)
    assert page.code == 200
    assert page.body == marked(raw, base)
    assert page.body.count(b"pitlink/age.js") == 1
    assert int(page.headers["Content-Length"]) == len(page.body)
    assert page.headers["Content-Type"] == "text/html; charset=utf-8"
    etag = page.headers["ETag"]
    assert etag == etag_of(page.body) != etag_of(raw)
    # A conditional request works on the changed body; the pits' own ETag describes another.
    again = await system.get(base, headers={"If-None-Match": etag})
    assert again.code == 304 and again.body == b"" and again.headers["ETag"] == etag
    other = await system.get(base, headers={"If-None-Match": etag_of(raw)})
    assert other.code == 200 and other.body == page.body
    head = await system.get(base, method="HEAD")
    assert head.code == 200 and int(head.headers["Content-Length"]) == len(page.body)
    # The same page by its file name, under FPVTrackside's own name for it.
    index = await system.get(f"{base}httpfiles/index.html")
    assert index.body.count(tag(base)) == 1


async def test_a_fast_hit_is_the_same_marked_page(tmp_path: Path, sim: Simulator) -> None:
    s = System(tmp_path, sim)
    await s.start_relay(freshness=60.0, client_rate=None, pits_fetch_rate=None)
    try:
        await s.start_agent(no_push=True)
        base = f"/pits/{s.pits_id}/"
        first = await s.get(base)
        hit = await s.get(base)
        assert (first.headers["X-Pitlink-Cache"], hit.headers["X-Pitlink-Cache"]) == ("MISS", "HIT")
        assert hit.body == first.body == marked(await origin_page(s), base)
        assert hit.headers["ETag"] == first.headers["ETag"]
        assert int(hit.headers["Content-Length"]) == len(hit.body)
        not_modified = await s.get(base, headers={"If-None-Match": hit.headers["ETag"]})
        assert not_modified.code == 304 and not_modified.headers["X-Pitlink-Cache"] == "HIT"
        raw_etag = etag_of(await origin_page(s))
        full = await s.get(base, headers={"If-None-Match": raw_etag})
        assert full.code == 200 and full.body == hit.body
    finally:
        await s.close()


async def test_json_and_scripts_pass_byte_for_byte(system: System) -> None:
    sim = system.sim
    data = f"/pits/{system.pits_id}{sim.event_path}/Pilots.json"
    got = await system.get(data)
    raw = (sim.root / sim.event_path.lstrip("/") / "Pilots.json").read_bytes()
    assert got.body == canonical_json(json.loads(raw.decode("utf-8")))
    assert got.headers["ETag"] == etag_of(got.body)
    script = await system.get(f"/pits/{system.pits_id}/httpfiles/EventManager.js")
    assert script.body == (sim.root / "httpfiles" / "EventManager.js").read_bytes()
    assert script.headers["ETag"] == etag_of(script.body)
    assert b"pitlink/age.js" not in got.body + script.body


async def test_a_page_past_the_bound_is_served_unchanged(tmp_path: Path, sim: Simulator) -> None:
    s = System(tmp_path, sim)
    raw = await origin_page(s)
    await s.start_relay(freshness=0.0, client_rate=None, age_notice_max_bytes=len(raw) - 1)
    try:
        await s.start_agent(no_push=True)
        page = await s.get(f"/pits/{s.pits_id}/")
        assert page.body == raw and page.headers["ETag"] == etag_of(raw)
        assert int(page.headers["Content-Length"]) == len(raw)
    finally:
        await s.close()
    (tmp_path / "at-the-bound").mkdir()
    s = System(tmp_path / "at-the-bound", sim)
    await s.start_relay(freshness=0.0, client_rate=None, age_notice_max_bytes=len(raw))
    try:
        await s.start_agent(no_push=True)
        page = await s.get(f"/pits/{s.pits_id}/")
        assert page.body == marked(raw, f"/pits/{s.pits_id}/")  # the bound itself is taken
    finally:
        await s.close()


async def test_no_age_notice_serves_pages_unchanged(tmp_path: Path, sim: Simulator) -> None:
    s = System(tmp_path, sim)
    await s.start_relay(freshness=60.0, client_rate=None, no_age_notice=True)
    try:
        await s.start_agent(no_push=True)
        raw = await origin_page(s)
        for cache in ("MISS", "HIT"):
            page = await s.get(f"/pits/{s.pits_id}/")
            assert page.headers["X-Pitlink-Cache"] == cache
            assert page.body == raw and page.headers["ETag"] == etag_of(raw)
    finally:
        await s.close()


HOSTILE = (
    b"<!DOCTYPE html><html><body><p id=out>hostile</p>"
    b"<script>var end = '</body>'; document.write('</bo' + 'dy>');"
    b"var mine = '<script src=\"/pits/pits-1/pitlink/age.js\"></scr' + 'ipt>';</script>"
    b"<!-- </body></html> -->" + b"</body>" * 2000 + b"<script>/* after the ends */</script>"
    b"</BODY></html>"
)


async def test_a_hostile_page_cannot_break_the_tag(system: System) -> None:
    (system.sim.root / "httpfiles" / "index.html").write_bytes(HOSTILE)
    base = f"/pits/{system.pits_id}/"
    page = await system.get(base)
    assert page.code == 200
    assert page.body == marked(HOSTILE, base)
    assert page.body.count(tag(base)) == 1
    assert page.body.endswith(tag(base) + b"</BODY></html>")
    # The relay's script is its own file, whatever the page holds.
    script = await system.get(f"{base}pitlink/age.js")
    assert script.code == 200 and script.body == SCRIPT
    assert script.headers["Content-Type"] == "text/javascript; charset=utf-8"
    assert script.headers["X-Content-Type-Options"] == "nosniff"


async def state(s: System, base: str, **kwargs: Any) -> dict[str, Any]:
    got = await s.get(f"{base}pitlink/age", **kwargs)
    assert got.code == 200, got.body
    assert got.headers["Cache-Control"] == "no-store"
    assert got.headers["Access-Control-Allow-Origin"] == "*"  # asked from the page's sandbox
    return json.loads(got.body)


async def test_the_state_says_when_the_box_went_and_came_back(system: System) -> None:
    base = f"/pits/{system.pits_id}/"
    up = await state(system, base)
    assert up["pitsId"] == system.pits_id and up["connected"] is True
    assert up["staleSince"] is None and up["poll"] == 10.0
    page = await system.get(base)
    etag = page.headers["ETag"]
    before = time.time()
    await system.stop_agent()
    relay = system.relay
    assert relay is not None
    await wait_for(lambda: relay.registry.get(system.pits_id) is None, what="the box gone")
    down = await state(system, base)
    assert down["connected"] is False
    assert down["since"] <= time.time() and abs(down["now"] - time.time()) < 5
    # The page is still served, from the cache, with the notice and the same ETag.
    stale = await system.get(base)
    assert stale.headers["X-Pitlink-Cache"] == "STALE" and stale.body == page.body
    assert stale.headers["ETag"] == etag
    again = await system.get(base, headers={"If-None-Match": etag})
    assert again.code == 304
    assert down["since"] >= before - 30  # last heard from: a ping or the last answer
    await system.start_agent(no_push=True)
    back = await state(system, base)
    assert back["connected"] is True and back["since"] >= before


async def test_on_a_pits_host_the_script_is_on_that_host(tmp_path: Path, sim: Simulator) -> None:
    s = System(tmp_path, sim, pits_id="club-1")
    await s.start_relay(freshness=0.0, client_rate=None, pits_domain="localhost")
    try:
        await s.start_agent(no_push=True)
        own = {"Host": f"club-1.localhost:{s.relay_port}"}
        raw = await origin_page(s)
        for path in ("/", "/Rounds"):
            page = await s.get(path, headers=own)
            assert page.code == 200 and page.body == marked(raw, "/")
        script = await s.get("/pitlink/age.js", headers=own)
        assert script.code == 200 and script.body == SCRIPT
        assert (await state(s, "/", headers=own))["pitsId"] == "club-1"
        # On the relay's own name, the pits' paths (the notice's too) move to the pits' host.
        moved = await s.get(
            "/pits/club-1/pitlink/age.js",
            headers={"Host": f"localhost:{s.relay_port}"},
            follow_redirects=False,
        )
        assert moved.code == 308
        assert moved.headers["Location"] == f"http://club-1.localhost:{s.relay_port}/pitlink/age.js"
    finally:
        await s.close()


async def test_no_state_for_what_is_no_pits(system: System) -> None:
    for path in ("/pitlink/age", "/pits/../pitlink/age.js", "/pits/a%2Fb/pitlink/age"):
        got = await system.get(path)
        assert got.code in (400, 403, 404), (path, got.code)
        assert got.headers["Content-Type"].startswith("application/json")
