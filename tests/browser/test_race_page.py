"""The live race page (`<pits base>/pitlink/race`) in Chromium, the box played by the test over
a real WebSocket (pitlink_testkit.pushbox) with the simulator's own files: the page finds the
race running now from the feed, shows its pilots, takes a pushed change at once, says "Box
offline" (and since when) when the box goes, fits a phone, and turns transparent for OBS.

The whole chain (the simulator, the real agent, the relay, this page) is in
tests/browser/test_live_chain.py.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, expect

from pitlink_testkit.fpvtrackside import Simulator
from pitlink_testkit.pushbox import Box, close_boxes, connect_box
from pitlink_testkit.system import System
from pitlink_testkit.waiting import wait_for

pytestmark = pytest.mark.timeout(90)

PITS = "club"


@pytest.fixture
async def relay(tmp_path: Path, sim: Simulator) -> AsyncIterator[System]:
    s = System(tmp_path, sim)
    await s.start_relay(client_rate=None)
    yield s
    await close_boxes()
    await s.close()


def sim_file(sim: Simulator, path: str) -> bytes:
    return (sim.root / path.lstrip("/")).read_bytes()


def race_now(sim: Simulator) -> dict:
    return json.loads(sim_file(sim, sim.race_path()))[0]


def pilots_racing(sim: Simulator) -> int:
    return len(race_now(sim)["PilotChannels"])


def most_laps(sim: Simulator) -> int:
    """Laps of the pilot with the most (the holeshot is no lap)."""
    race = race_now(sim)
    pilot_of = {d["ID"]: d["Pilot"] for d in race["Detections"]}
    done = Counter(pilot_of[lap["Detection"]] for lap in race["Laps"] if lap["LapNumber"] >= 1)
    return max(done.values(), default=0)


async def box_with_race(s: System, sim: Simulator) -> tuple[Box, str]:
    """A pushing box serving the simulator's files, naming the race running now."""
    race = sim.race_path()
    event_dir = race.rsplit("/", 2)[0]
    files = {
        path: sim_file(sim, path)
        for path in (race, f"{event_dir}/Pilots.json", f"{event_dir}/Rounds.json")
    }
    box = await connect_box(s.url, s.keys, PITS, files=files)
    relay = s.relay
    assert relay is not None
    await wait_for(lambda: relay.registry.get(PITS) is not None, what="the box connected")
    await box.watching(list(files), interval_ms=200, race=race)
    return box, race


async def open_page(browser: Browser, s: System, query: str = "", width: int = 1366) -> Page:
    page = await browser.new_page(viewport={"width": width, "height": 800})
    await page.goto(f"{s.url}/pits/{PITS}/pitlink/race{query}")
    return page


async def test_the_page_shows_the_race_and_takes_a_pushed_lap(
    browser: Browser, relay: System, sim: Simulator
) -> None:
    box, race = await box_with_race(relay, sim)
    page = await open_page(browser, relay)
    await expect(page.locator("#status")).to_have_text("Live", timeout=10_000)
    await expect(page.locator("#board tbody tr")).to_have_count(pilots_racing(sim), timeout=10_000)
    before = most_laps(sim)
    # Laps at the simulator until the leader has one more; the box pushes the new file.
    while most_laps(sim) <= before:
        sim.advance()
    await box.change(race, sim_file(sim, race))
    await expect(page.locator("#board tbody tr").first.locator("td.laps")).to_have_text(
        str(most_laps(sim)), timeout=5_000
    )
    last = await page.locator("#board tbody tr").first.locator("td.last").text_content()
    assert last and last != "\u2013"  # the page writes an en dash for "none yet"


async def test_the_page_says_box_offline_when_the_box_goes(
    browser: Browser, relay: System, sim: Simulator
) -> None:
    box, _ = await box_with_race(relay, sim)
    page = await open_page(browser, relay)
    await expect(page.locator("#status")).to_have_text("Live", timeout=10_000)
    # Everything the page reads is read (the round's number comes last).
    await expect(page.locator("#title")).to_contain_text("Round", timeout=10_000)
    await box.close()
    status = page.locator("#status")
    await expect(status).to_have_class("offline", timeout=10_000)
    await expect(status).to_contain_text("Box offline since")
    await expect(status).to_contain_text("not live")
    # The board keeps the last results, marked as such.
    assert await page.locator("#board tbody tr").count() == pilots_racing(sim)


async def test_on_a_phone_nothing_scrolls_sideways(
    browser: Browser, relay: System, sim: Simulator
) -> None:
    await box_with_race(relay, sim)
    page = await open_page(browser, relay, width=390)
    await expect(page.locator("#status")).to_have_text("Live", timeout=10_000)
    wide = await page.evaluate("document.documentElement.scrollWidth")
    assert wide <= 390


async def test_overlay_has_a_transparent_background(
    browser: Browser, relay: System, sim: Simulator
) -> None:
    await box_with_race(relay, sim)
    page = await open_page(browser, relay, query="?overlay=1")
    await expect(page.locator("body")).to_have_class("overlay", timeout=10_000)
    background = await page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert background == "rgba(0, 0, 0, 0)"
    # The note for visitors is not drawn on a stream.
    await expect(page.locator("#note")).to_be_hidden()


async def test_the_page_is_served_strictly(relay: System) -> None:
    got = await relay.http.fetch(f"{relay.url}/pits/{PITS}/pitlink/race", raise_error=False)
    assert got.code == 200
    assert got.headers["Content-Type"] == "text/html; charset=utf-8"
    policy = got.headers["Content-Security-Policy"]
    assert "sandbox allow-scripts" in policy and "script-src 'self'" in policy
    script = await relay.http.fetch(f"{relay.url}/pits/{PITS}/pitlink/race.js", raise_error=False)
    assert script.code == 200
    assert script.headers["Content-Type"] == "text/javascript; charset=utf-8"
    bad = await relay.http.fetch(f"{relay.url}/pits/-bad%21/pitlink/race", raise_error=False)
    assert bad.code in (400, 404)


async def test_front_and_admin_pages_say_the_box_pushes(
    browser: Browser, relay: System, sim: Simulator
) -> None:
    box, race = await box_with_race(relay, sim)
    front = await relay.http.fetch(f"{relay.url}/")
    text = front.body.decode()
    assert f'href="/pits/{PITS}/pitlink/race">live race</a>' in text
    assert f'href="/pits/{PITS}/pitlink/live">live feed</a>' in text
    assert "pushing changes" in text
    await box.change(race, sim_file(sim, race))
    page = await browser.new_page(viewport={"width": 1366, "height": 800})
    await page.goto(f"{relay.url}/admin")
    await page.fill("#token", relay.keys.issue(sub="alice", role="admin", ttl=600))
    await page.click("text=Sign in")
    row = page.locator(f'#connections tr[data-pits="{PITS}"]')
    await expect(row.locator(".push")).to_contain_text("pushing, changed", timeout=10_000)
    front = await relay.http.fetch(f"{relay.url}/")
    assert "pushing changes, newest" in front.body.decode()
