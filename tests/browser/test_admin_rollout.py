"""A rollout in waves from the admin page, in Chromium, with three real agents: started from the
page, halted by a rollback (a red line naming the box and the version), resumed and cancelled."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, expect

from pitlink_testkit.fleet import NEW, OLD, Fleet
from pitlink_testkit.pages import watch_errors
from pitlink_testkit.waiting import wait_for

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
async def fleet(tmp_path: Path, sim) -> AsyncIterator[Fleet]:
    f = Fleet(tmp_path, sim)
    try:
        await f.start(3)
        yield f
    finally:
        await f.close()


@pytest.fixture
async def page(browser: Browser, fleet: Fleet) -> AsyncIterator[Page]:
    context = await browser.new_context(viewport={"width": 1280, "height": 800})
    page = await context.new_page()
    watch_errors(page)
    await page.goto(f"{fleet.s.url}/admin")
    await page.fill("#token", fleet.s.keys.issue(sub="alice", role="admin", ttl=600))
    await page.click("text=Sign in")
    yield page
    await context.close()


async def test_a_rollout_from_the_page_halts_on_a_rollback_in_red_and_is_resumed_and_cancelled(
    page: Page, fleet: Fleet
) -> None:
    bundle = await fleet.upload()
    row = page.locator(f'#bundles tr[data-bundle="{bundle}"]')
    await expect(row).to_contain_text(NEW)
    await row.locator("input.wave").fill("1")
    await row.get_by_role("button", name="Roll out in waves").click()
    await expect(page.locator("#status")).to_have_text(f"Rollout of {NEW} started: a wave of 1.")
    line = page.locator(f'#bundles tr[data-rollout="{bundle}"]')
    await expect(line).to_contain_text("Rollout running (wave of 1: box-1)")
    await wait_for(lambda: fleet.box(1).state_of() == "installed", what="box-1 installed")

    await fleet.box(1).restart_into(slot="A", version=OLD)
    halted = line.locator(".halted")
    await expect(halted).to_have_text(
        f"Halted: box-1 reported rolled-back of version {NEW}. Nothing more is offered; offers "
        f"not yet taken up were withdrawn. The box said: Version {NEW} did not come up healthy "
        f"in slot B; back on slot A (version {OLD})."
    )
    color = await halted.evaluate("e => getComputedStyle(e).color")
    assert color == "rgb(207, 34, 46)", color  # the page's --bad
    assert fleet.halted_metric(bundle) == 1
    assert fleet.offered(bundle) == []
    assert fleet.box(2).state_of() is None and fleet.box(3).state_of() is None

    await row.get_by_role("button", name="Resume rollout").click()
    await expect(page.locator("#status")).to_have_text(f"Rollout of {NEW} resumed.")
    await expect(line).to_contain_text("Rollout running (wave of 1: box-2)")
    await expect(line).to_contain_text("left out: box-1")
    await expect(halted).to_have_count(0)
    await wait_for(lambda: fleet.offered(bundle) == ["box-2"], what="box-2 offered")
    assert fleet.halted_metric(bundle) == 0

    await row.get_by_role("button", name="Cancel rollout").click()
    await expect(page.locator("#status")).to_have_text(f"Rollout of {NEW} cancelled.")
    await expect(line).to_contain_text("Rollout cancelled")
    await expect(row.get_by_role("button", name="Roll out in waves")).to_be_visible()
    assert fleet.box(3).state_of() is None
    assert page.errors == []  # type: ignore[attr-defined]
