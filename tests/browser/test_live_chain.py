"""The whole chain, as at a race: the simulated FPVTrackside (its ExtensionMode on, PUTting every
race event to the box), the real box, the real relay, and the live race page in Chromium. A lap
at the simulator is on the page within a second; when the box stops, the page says so."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, expect

from pitlink_testkit.fpvtrackside import Simulator
from pitlink_testkit.system import System
from pitlink_testkit.waiting import wait_for
from pits_appliance.extension import PATH

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
async def chain(tmp_path: Path, sim: Simulator) -> AsyncIterator[System]:
    s = System(tmp_path, sim)
    await s.start_relay(client_rate=None, pits_fetch_rate=None)
    await s.start_agent()
    agent = s.agent
    assert agent is not None
    await wait_for(lambda: agent.state.pushing, what="the box pushing")
    # FPVTrackside's ExtensionMode, pointed at the box as an organiser sets it up.
    sim.notification_url = s.status_url + PATH
    sender = await sim.restart_extension()
    await wait_for(lambda: sender.hello_acknowledged, what="the box taking FPVTrackside's Hello")
    await wait_for(lambda: agent.state.race_now == sim.race_path(), what="the race now found")
    yield s
    await s.close()


def leader_laps(sim: Simulator) -> int:
    race = json.loads(sim.reply(sim.race_path()).body)[0]
    pilot_of = {d["ID"]: d["Pilot"] for d in race["Detections"]}
    done = Counter(pilot_of[lap["Detection"]] for lap in race["Laps"] if lap["LapNumber"] >= 1)
    return max(done.values(), default=0)


async def open_race(browser: Browser, s: System) -> Page:
    page = await browser.new_page(viewport={"width": 390, "height": 844})  # a phone
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.errors = errors  # type: ignore[attr-defined]
    await page.goto(f"{s.url}/pits/{s.pits_id}/pitlink/race")
    await expect(page.locator("#status")).to_have_text("Live", timeout=10_000)
    await expect(page.locator("#title")).to_contain_text("Round", timeout=10_000)
    return page


async def test_a_lap_at_the_simulator_is_on_the_page_within_a_second(
    browser: Browser, chain: System, sim: Simulator
) -> None:
    page = await open_race(browser, chain)
    leader = page.locator("#board tbody tr").first.locator("td.laps")
    for _ in range(3):  # three laps in a row, each on the page within a second
        before = leader_laps(sim)
        await expect(leader).to_have_text(str(before), timeout=10_000)  # settled
        while leader_laps(sim) == before:
            sim.advance()
        began = time.monotonic()
        await expect(leader).to_have_text(str(before + 1), timeout=1_000)
        print(f"lap on the page after {(time.monotonic() - began) * 1000:.0f} ms")
    assert page.errors == []  # type: ignore[attr-defined]


async def test_the_page_says_box_offline_when_the_box_stops(
    browser: Browser, chain: System, sim: Simulator
) -> None:
    page = await open_race(browser, chain)
    await chain.stop_agent()
    status = page.locator("#status")
    await expect(status).to_have_class("offline", timeout=10_000)
    await expect(status).to_contain_text("Box offline since")
    # What it shows is marked as the last results, not live.
    await expect(status).to_contain_text("not live")
    assert await page.locator("#board tbody tr").count() > 0


async def test_the_status_page_says_the_box_pushes_and_hears_fpvtrackside(
    browser: Browser, chain: System, sim: Simulator
) -> None:
    """What the organiser sees at the venue of the live path: both lines, on a phone."""
    context = await browser.new_context(viewport={"width": 360, "height": 740}, is_mobile=True)
    page = await context.new_page()
    agent = chain.agent
    assert agent is not None
    sim.advance()  # a detection: an event PUT to the box
    await wait_for(lambda: agent.state.fpvt_events_last is not None, what="an event heard")
    await page.goto(chain.status_url + "/")
    push = page.locator('#rows li[data-key="push"]')
    events = page.locator('#rows li[data-key="events"]')
    await expect(push).to_have_attribute("data-mark", "green")
    await expect(push).to_contain_text("Pushing race changes to the relay")
    await expect(push).to_contain_text("the race now is")
    await expect(events).to_contain_text("FPVTrackside sends race events: yes, last")
    assert await page.evaluate("document.documentElement.scrollWidth") <= 360
    await context.close()
