"""The admin page fits a laptop and a phone with several boxes, online and offline, and a long
pits id: no sideways scroll, and each row's last seen, update and buttons in view and working.
Offline boxes and refused boxes are listed with what the operator needs to act."""

from __future__ import annotations

import time

import pytest
from playwright.async_api import Browser, Page, expect

from pitlink_testkit.control import OPENED, close_opened, handshake, open_control
from pitlink_testkit.system import System
from pitlink_testkit.waiting import wait_for

LONG_ID = "club-" + "tarmac-and-grass-" * 3 + "north"  # 61 characters, no place to break
assert len(LONG_ID) <= 64


@pytest.fixture
async def boxes(system: System):
    """Besides the system's own box: a live box with a long id, a box that went offline, and
    a box refused twice for an expired token."""
    for pits_id in (LONG_ID, "gone-box"):
        ws = await open_control(system.url, system.keys.issue(sub=pits_id, role="pits", ttl=600))
        await handshake(ws, pits_id)
    await wait_for(lambda: system.relay.registry.get("gone-box") is not None, what="gone-box")
    gone = OPENED.pop()
    gone.close(1001, "box shutting down")
    await wait_for(lambda: len(system.relay.registry.offline) == 1, what="gone-box offline")
    expired = system.keys.issue(sub="old-club", role="pits", ttl=60, now=time.time() - 3600)
    for _ in range(2):
        with pytest.raises(Exception, match="401"):
            await open_control(system.url, expired)
    yield system
    await close_opened()


async def signed_in(browser: Browser, system: System, width: int, height: int) -> Page:
    mobile = width < 500
    context = await browser.new_context(
        viewport={"width": width, "height": height}, is_mobile=mobile, has_touch=mobile
    )
    page = await context.new_page()
    page.on("dialog", lambda dialog: dialog.accept())
    await page.goto(f"{system.url}/admin")
    await page.fill("#token", system.keys.issue(sub="alice", role="admin", ttl=600))
    await page.press("#token", "Enter")  # Enter in the token field signs in
    await expect(page.locator("#app")).to_be_visible()
    return page


@pytest.mark.parametrize(("width", "height"), [(1366, 768), (390, 844)])
async def test_the_admin_page_fits_and_its_buttons_work(
    browser: Browser, boxes: System, width: int, height: int, tmp_path
) -> None:
    system = boxes
    page = await signed_in(browser, system, width, height)
    try:
        rows = page.locator("#connections tbody tr")
        await expect(rows).to_have_count(2 + 1)  # two live, one offline
        assert await page.evaluate("document.documentElement.scrollWidth") <= width
        # Nor a scroll inside the table's own box: every column is in view.
        inner = await page.evaluate(
            "[...document.querySelectorAll('.scroll')].map((e) => e.scrollWidth - e.clientWidth)"
        )
        assert inner == [0, 0, 0, 0], "a table scrolls sideways"
        for pits_id in (system.pits_id, LONG_ID):
            row = page.locator(f'#connections tr[data-pits="{pits_id}"]')
            for part in (row.locator("td.lastseen"), row.locator("td.update")):
                await part.scroll_into_view_if_needed()
                await expect(part).to_be_in_viewport()
            for name in ("Reconnect", "Pause"):
                button = row.get_by_role("button", name=name)
                await button.scroll_into_view_if_needed()
                await expect(button).to_be_in_viewport()
                box = await button.bounding_box()
                assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= width
        await page.screenshot(path=str(tmp_path / f"admin-{width}.png"), full_page=True)
        await (
            page.locator(f'#connections tr[data-pits="{LONG_ID}"]')
            .get_by_role("button", name="Pause")
            .click()
        )
        await wait_for(lambda: system.relay.registry.get(LONG_ID).paused, what="paused")
        await expect(page.locator(f'#connections tr[data-pits="{LONG_ID}"]')).to_contain_text(
            "paused"
        )
    finally:
        await page.context.close()


async def test_offline_and_refused_boxes_are_listed(browser: Browser, boxes: System) -> None:
    page = await signed_in(browser, boxes, 1366, 768)
    try:
        gone = page.locator('#connections tr[data-pits="gone-box"]')
        await expect(gone).to_contain_text("offline")
        await expect(gone).to_contain_text(
            "last error: closed by the box (1001): box shutting down"
        )
        await expect(gone).to_contain_text("offline since")
        assert await gone.get_by_role("button").count() == 0  # nothing to act on
        refused = page.locator('#refused tr[data-claimed="old-club"]')
        await expect(refused).to_contain_text("old-club (claimed)")
        await expect(refused).to_contain_text("expired")
        await expect(refused.locator("td").nth(3)).to_have_text("2")
        await expect(refused).to_contain_text("127.0.0.1")
    finally:
        await page.context.close()
