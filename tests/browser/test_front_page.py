"""The relay's front page in Chromium, on a laptop and a phone: a live box, a box with a long
id, and a box that went offline (never shown as live: since when, and its last error)."""

from __future__ import annotations

import pytest
from playwright.async_api import Browser, expect

from pitlink_testkit.control import OPENED, close_opened, handshake, open_control
from pitlink_testkit.system import System
from pitlink_testkit.waiting import wait_for

LONG_ID = "club-" + "tarmac-and-grass-" * 3 + "north"


@pytest.mark.parametrize(("width", "height"), [(1366, 768), (390, 844)])
async def test_front_page_lists_offline_boxes_and_fits(
    browser: Browser, system: System, width: int, height: int, tmp_path
) -> None:
    for pits_id in (LONG_ID, "gone-box"):
        ws = await open_control(system.url, system.keys.issue(sub=pits_id, role="pits", ttl=600))
        await handshake(ws, pits_id)
    await wait_for(lambda: system.relay.registry.get("gone-box") is not None, what="gone-box")
    OPENED.pop().close(1001, "box <b>shutting</b> down")
    await wait_for(lambda: len(system.relay.registry.offline) == 1, what="gone-box offline")
    mobile = width < 500
    context = await browser.new_context(
        viewport={"width": width, "height": height}, is_mobile=mobile
    )
    page = await context.new_page()
    try:
        await page.goto(f"{system.url}/")
        gone = page.locator('li[data-pits="gone-box"]')
        await expect(gone).to_contain_text("offline since")
        await expect(gone).to_contain_text("last seen 0 s ago")
        await expect(gone.locator(".error")).to_have_text(
            "closed by the box (1001): box <b>shutting</b> down"  # the box's words, as text
        )
        assert await page.locator("#pits b").count() == 0
        await expect(page.locator(f'li[data-pits="{LONG_ID}"]')).to_contain_text("connected")
        await expect(page.locator(f'li[data-pits="{system.pits_id}"]')).to_contain_text("connected")
        assert await page.evaluate("document.documentElement.scrollWidth") <= width
        await page.screenshot(path=str(tmp_path / f"front-{width}.png"), full_page=True)
    finally:
        await context.close()
        await close_opened()
