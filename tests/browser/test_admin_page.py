"""The admin page in a real browser: it signs in, lists a live pits, and its buttons work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, expect

from pitlink_testkit.pages import watch_errors
from pitlink_testkit.system import System
from pitlink_testkit.waiting import wait_for
from wire import CloseCode


@pytest.fixture
async def page(browser: Browser, system: System):
    context = await browser.new_context(viewport={"width": 1024, "height": 768})
    page = await context.new_page()
    watch_errors(page)
    yield page
    await context.close()


async def sign_in(page: Page, system: System) -> None:
    await page.goto(f"{system.url}/admin")
    token = system.keys.issue(sub="alice", role="admin", ttl=600)
    await page.fill("#token", token)
    await page.click("text=Sign in")


async def test_admin_page_lists_the_live_pits(page: Page, system: System, tmp_path: Path) -> None:
    await sign_in(page, system)
    row = page.locator(f'#connections tr[data-pits="{system.pits_id}"]')
    await expect(row).to_be_visible()
    await expect(row).to_contain_text("up")
    await expect(page.locator("#active")).to_have_text(system.pits_id)
    await page.screenshot(path=str(tmp_path / "admin.png"))
    assert page.errors == []


async def test_purge_button_empties_the_cache(page: Page, system: System) -> None:
    for name in ("Event.json", "Pilots.json"):
        await system.get(f"/pits/{system.pits_id}{system.sim.event_path}/{name}")
    assert len(system.relay.cache) == 2
    await sign_in(page, system)
    await expect(page.locator("#cache-stats")).to_contain_text("2 entries")
    await page.fill("#purge-prefix", f"{system.sim.event_path}/Event")
    await page.click("#purge-form button")
    await expect(page.locator("#status")).to_have_text("Purged 1 cached entry.")
    assert len(system.relay.cache) == 1
    assert page.errors == []


async def test_reconnect_button_makes_a_new_connection(page: Page, system: System) -> None:
    first = system.relay.registry.get(system.pits_id)
    await sign_in(page, system)
    row = page.locator(f'#connections tr[data-pits="{system.pits_id}"]')
    await row.get_by_role("button", name="Reconnect").click()
    await expect(page.locator("#status")).to_contain_text("Reconnect sent")
    await wait_for(
        lambda: system.relay.registry.get(system.pits_id) not in (None, first), what="new"
    )
    assert system.agent.state.close_code == CloseCode.RECONNECT
    await expect(row).to_be_visible()
    assert page.errors == []


async def test_pause_and_resume_buttons(page: Page, system: System) -> None:
    await sign_in(page, system)
    row = page.locator(f'#connections tr[data-pits="{system.pits_id}"]')
    await row.get_by_role("button", name="Pause").click()
    await expect(row).to_contain_text("paused")
    assert system.relay.registry.get(system.pits_id).paused is True
    await row.get_by_role("button", name="Resume").click()
    await expect(row).to_contain_text("up")
    assert system.relay.registry.get(system.pits_id).paused is False


async def test_a_pits_token_is_refused_and_the_page_asks_again(page: Page, system: System) -> None:
    await page.goto(f"{system.url}/admin")
    await page.fill("#token", system.token_file.read_text().strip())
    await page.click("text=Sign in")
    await expect(page.locator("#status")).to_contain_text("not an admin token")
    await expect(page.locator("#login")).to_be_visible()
    # A refused request is logged by the browser as a console error; nothing else may be.
    assert all("403" in e for e in page.errors)


async def test_readable_on_a_phone(browser: Browser, system: System, tmp_path: Path) -> None:
    context = await browser.new_context(viewport={"width": 360, "height": 740}, is_mobile=True)
    page = await context.new_page()
    try:
        await sign_in(page, system)
        await expect(page.locator(f'#connections tr[data-pits="{system.pits_id}"]')).to_be_visible()
        width = await page.evaluate("document.documentElement.scrollWidth")
        assert width <= 360, "the page scrolls sideways on a phone"
        await page.screenshot(path=str(tmp_path / "admin-phone.png"), full_page=True)
    finally:
        await context.close()


async def test_drift_upstream_is_a_warning_with_the_pits_endpoint_and_place(
    page: Page, system: System
) -> None:
    """A field of another type in FPVTrackside's Event.json: the page says where; the data
    is still served. A pointer from the pits' data is shown as text, never as markup."""
    file = system.sim.root / system.sim.event_path.lstrip("/") / "Event.json"
    event = json.loads(file.read_bytes().decode("utf-8-sig"))
    event[0]["Laps"] = "<img src=x onerror=alert(1)>"
    file.write_text(json.dumps(event))
    got = await system.get(f"/pits/{system.pits_id}{system.sim.event_path}/Event.json")
    assert got.code == 200
    await sign_in(page, system)
    warning = page.locator("#drift")
    await expect(warning).to_be_visible()
    await expect(warning).to_contain_text(f"FPVTrackside data from {system.pits_id}")
    await expect(warning).to_contain_text("Event.json at /0/Laps (type: expected integer)")
    # Tied to what the pits sees of FPVTrackside, as an upgrade at the venue would show.
    await expect(warning).to_contain_text("The pits sees FPVTrackside before 2.71.")
    assert await page.locator("#drift img").count() == 0
    assert page.errors == []


async def test_which_fpvtrackside_each_pits_talks_to(page: Page, system: System) -> None:
    """Its version as its answers show it, and its Server header: from the venue LAN, so
    shown as text, never as markup."""
    await system.stop_agent()
    system.sim.version = "2.76"
    system.sim.server = "<img src=x onerror=alert(1)>"
    await system.start_agent(no_push=True)
    await wait_for(
        lambda: system.relay.registry.get(system.pits_id).fpvtrackside is not None,
        what="the relay to know",
    )
    await sign_in(page, system)
    cell = page.locator(f'#connections tr[data-pits="{system.pits_id}"] td.fpvtrackside')
    await expect(cell).to_have_text("2.76 or later · <img src=x onerror=alert(1)>")
    await expect(cell).to_have_attribute("title", "Told from: current, json-typed")
    assert await page.locator("#connections img").count() == 0
    assert page.errors == []


async def test_no_drift_no_warning(page: Page, system: System) -> None:
    await system.get(f"/pits/{system.pits_id}{system.sim.event_path}/Event.json")
    await sign_in(page, system)
    await expect(page.locator(f'#connections tr[data-pits="{system.pits_id}"]')).to_be_visible()
    await expect(page.locator("#drift")).to_be_hidden()
