"""The relay's age notice on FPVTrackside's own page, in Chromium: nothing while the box is
connected, a bar saying since when it is offline once it is gone (on the open page, and on a
reload from the relay's cache), nothing again once it is back; on a pits' own host too; and a
page full of `</body>` and look-alikes does not stop it."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Page, expect

from pitlink_testkit.fpvtrackside import Simulator
from pitlink_testkit.pages import watch_errors
from pitlink_testkit.system import System
from pitlink_testkit.waiting import wait_for

pytestmark = pytest.mark.timeout(90)

POLL = 0.2  # the notice's look at the box's state, seconds (the relay's setting)
NOTICE = "[data-pitlink-notice][data-state]"


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    context = await browser.new_context(viewport={"width": 1024, "height": 768})
    page = await context.new_page()
    watch_errors(page)
    yield page
    await context.close()


async def started(tmp_path: Path, sim: Simulator, **relay: Any) -> System:
    s = System(tmp_path, sim, pits_id=relay.pop("pits_id", "pits-1"))
    await s.start_relay(
        freshness=0.0,
        client_rate=None,
        pits_fetch_rate=None,
        age_notice_poll=POLL,
        **relay,
    )
    await s.start_agent(no_push=True)
    return s


async def box_gone(s: System) -> float:
    """Stop the agent; when the relay says the box was last heard from."""
    await s.stop_agent()
    relay = s.relay
    assert relay is not None
    await wait_for(lambda: relay.registry.get(s.pits_id) is None, what="the box gone")
    departure = relay.registry.offline.get(s.pits_id, 0.0)
    assert departure is not None
    return departure.last_seen


async def clock_of(page: Page, unix: float) -> str:
    """HH:MM as the page writes it, in the browser's own locale and time zone."""
    text: str = await page.evaluate(
        "s => new Date(s * 1000).toLocaleTimeString([], {hour: '2-digit', minute: '2-digit'})",
        unix,
    )
    return text


async def test_the_page_says_the_box_is_offline_and_since_when(
    page: Page, tmp_path: Path, sim: Simulator
) -> None:
    s = await started(tmp_path, sim)
    try:
        await page.goto(f"{s.url}/pits/{s.pits_id}/")
        notice = page.locator(NOTICE)
        await expect(page.locator("#updated")).to_have_text(re.compile(r"^Updated "))
        await expect(notice).to_have_attribute("data-state", "fresh")
        await expect(notice).to_be_hidden()

        since = await box_gone(s)
        at = await clock_of(page, since)
        await expect(notice).to_have_attribute("data-state", "offline")
        await expect(notice).to_be_visible()
        status = notice.get_by_role("status")
        await expect(status).to_have_text(
            f"Pitlink: the box at the pits has been offline since {at} (just now)"
            f" — what you see is from {at} or earlier, not live."
        )
        box = await notice.bounding_box()
        assert box is not None and box["y"] == 0 and box["width"] == 1024  # across the top
        # The page's own line still follows the browser's clock: that is why the notice is.
        await expect(page.locator("#updated")).to_have_text(re.compile(r"^Updated "))

        reloaded = await page.reload()
        assert reloaded is not None and reloaded.headers["x-pitlink-cache"] == "STALE"
        await expect(notice).to_have_attribute("data-state", "offline")
        await expect(notice.get_by_role("status")).to_contain_text(f"offline since {at}")

        await s.start_agent(no_push=True)
        await expect(notice).to_have_attribute("data-state", "fresh")
        await expect(notice).to_be_hidden()
        assert page.errors == []  # type: ignore[attr-defined]
    finally:
        await s.close()


async def test_on_a_pits_own_host(page: Page, tmp_path: Path, sim: Simulator) -> None:
    s = await started(tmp_path, sim, pits_id="club-1", pits_domain="localhost")
    scripts: list[str] = []
    page.on(
        "response",
        lambda r: scripts.append(r.url) if r.request.resource_type == "script" else None,
    )
    try:
        home = f"http://club-1.localhost:{s.relay_port}/"
        await page.goto(home)
        notice = page.locator(NOTICE)
        await expect(notice).to_have_attribute("data-state", "fresh")
        assert f"{home}pitlink/age.js" in scripts
        # Every file the page reads is in the relay's cache before the box goes.
        await expect(page.locator("#updated")).to_have_text(re.compile(r"^Updated "))
        since = await box_gone(s)
        await expect(notice.get_by_role("status")).to_contain_text(
            f"offline since {await clock_of(page, since)}"
        )
        assert page.errors == []  # type: ignore[attr-defined]
    finally:
        await s.close()


# A page that writes `</body>` everywhere, holds the relay's tag as text, and shows a look-alike
# of the notice saying all is well. The relay's own bar still comes, with the relay's words.
TRICKY = (
    """<!DOCTYPE html><html><head><meta charset="utf-8"></head><body>
<div data-pitlink-notice>Pitlink: all is well, this is live.</div>
<p id="out">page</p>
<script>
  var end = "</body>";
  var tag = '<script src="/pitlink/age.js"></scr' + 'ipt>';
  document.getElementById("out").textContent = "ran " + end.length + tag.length;
</script>
<!-- </body></html> -->
"""
    + "</body>\n" * 300
    + "<p>after every end</p></BODY></html>\n"
)


async def test_a_page_full_of_body_ends_and_look_alikes(
    page: Page, tmp_path: Path, sim: Simulator
) -> None:
    (sim.root / "httpfiles" / "index.html").write_text(TRICKY)
    s = await started(tmp_path, sim)
    try:
        await page.goto(f"{s.url}/pits/{s.pits_id}/")
        await expect(page.locator("#out")).to_have_text(re.compile(r"^ran \d+$"))
        notice = page.locator(NOTICE)
        await expect(notice).to_have_attribute("data-state", "fresh")
        since = await box_gone(s)
        at = await clock_of(page, since)
        await expect(notice.get_by_role("status")).to_have_text(
            f"Pitlink: the box at the pits has been offline since {at} (just now)"
            f" — what you see is from {at} or earlier, not live."
        )
        assert page.errors == []  # type: ignore[attr-defined]
    finally:
        await s.close()
