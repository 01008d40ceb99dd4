"""The admin page's updates in a real browser: bundles listed, one offered to a box, reports shown."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, expect

from pitlink_testkit.control import close_opened, open_control
from pitlink_testkit.pages import watch_errors
from pitlink_testkit.system import System
from pitlink_testkit.waiting import wait_for
from wire import messages as m

HOSTILE = "<img src=x onerror=\"document.title='pwned'\">"


@pytest.fixture
async def relay(tmp_path: Path, sim) -> AsyncIterator[System]:
    s = System(tmp_path, sim)
    await s.start_relay(bundle_dir=tmp_path / "bundles")
    yield s
    await close_opened()
    await s.close()


@pytest.fixture
async def page(browser: Browser, relay: System) -> AsyncIterator[Page]:
    context = await browser.new_context(viewport={"width": 1280, "height": 800})
    page = await context.new_page()
    watch_errors(page)
    yield page
    await context.close()


async def box(s: System, pits_id: str):
    ws = await open_control(s.url, s.keys.issue(sub=pits_id, role="pits", ttl=600))
    await ws.read_message()
    hello = m.PitsHello(protocol_version=1, pits_id=pits_id, sw_version="0.1.0", slot="B")
    await ws.write_message(m.encode(hello, now_ms=0))
    relay = s.relay
    await wait_for(lambda: relay.registry.get(pits_id) is not None, what=f"{pits_id} connected")
    return ws


async def test_bundle_listed_offered_to_one_box_and_its_report_shown(
    page: Page, relay: System, tmp_path: Path
) -> None:
    store = relay.relay.updates.store
    assert store is not None
    source = tmp_path / "pitlink-arm64-0.2.0.raucb"
    source.write_bytes(b"b" * 3000)
    bundle = store.add_file(source)
    canary = await box(relay, "canary")
    await box(relay, "other")

    await page.goto(f"{relay.url}/admin")
    await page.fill("#token", relay.keys.issue(sub="alice", role="admin", ttl=600))
    await page.click("text=Sign in")
    row = page.locator(f'#bundles tr[data-bundle="{bundle.id}"]')
    await expect(row).to_contain_text("0.2.0")
    await expect(row).to_contain_text("arm64")
    await expect(row).to_contain_text("2.9 KiB")
    await expect(row).to_contain_text("nobody")

    await row.locator("select.offer-box").select_option("canary")
    await row.get_by_role("button", name="Offer to this box").click()
    await expect(page.locator("#status")).to_have_text("0.2.0 offered to canary.")
    await expect(row).to_contain_text("canary")
    assert store.offers() == {"canary": bundle.id}
    frame = m.decode(await canary.read_message(), sender="cloud")
    while frame.type != "offer":
        frame = m.decode(await canary.read_message(), sender="cloud")
    assert frame.message == bundle.offer()

    report = m.UpdateReport(
        state="downloading", version="0.2.0", done=1500, total=3000, message=HOSTILE
    )
    await canary.write_message(m.encode(report, now_ms=0))
    box_row = page.locator('#connections tr[data-pits="canary"]')
    await expect(box_row).to_contain_text("downloading 0.2.0 (50%): " + HOSTILE)
    await expect(box_row).to_contain_text("slot B")
    assert await box_row.locator("img").count() == 0
    assert await page.title() != "pwned"

    # And the rest: every other connected box of that arch (or whose arch is not known).
    await row.get_by_role("button", name="Offer to all other connected arm64 boxes").click()
    await expect(page.locator("#status")).to_have_text("0.2.0 offered to 1 more.")
    assert store.offers() == {"canary": bundle.id, "other": bundle.id}
    listed = json.loads(
        (
            await relay.get(
                "/admin/api/bundles",
                headers={
                    "Authorization": "Bearer " + relay.keys.issue(sub="a", role="admin", ttl=60)
                },
            )
        ).body
    )
    assert listed["bundles"][0]["offeredTo"] == ["canary", "other"]
    assert page.errors == []  # type: ignore[attr-defined]
