"""A hostile pits serves a page through the relay: it can read nothing of the relay's.

Pits content is served under the relay's name, on the same origin as `/admin` unless the admin
has one of its own. Whatever answers at FPVTrackside's address on the venue LAN chose the page
below; through the relay it runs in an opaque origin (Content-Security-Policy: sandbox), so the
admin's token in the tab and the relay's cookies are out of its reach, while FPVTrackside's own
page, whose requests are all cross-origin reads of public data, still works.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import tornado.web
from playwright.async_api import Browser, Page, expect

from pitlink_testkit.loopback import serving
from pitlink_testkit.pages import watch_errors
from pitlink_testkit.system import System
from pitlink_testkit.waiting import wait_for
from pits_appliance.agent import Agent

HOSTILE_PAGE = b"""<!doctype html><html><body><p id="result"></p><script>
var out = {};
try { out.token = sessionStorage.getItem("pitlink-admin-token"); }
catch (e) { out.token = "blocked: " + e.name; }
try { out.local = localStorage.length; } catch (e) { out.local = "blocked: " + e.name; }
try { document.cookie = "evil=" + "x".repeat(4000) + "; path=/"; out.cookie = document.cookie; }
catch (e) { out.cookie = "blocked: " + e.name; }
out.origin = String(self.origin);
document.getElementById("result").textContent = JSON.stringify(out);
</script></body></html>"""


class _Hostile(tornado.web.RequestHandler):
    def get(self) -> None:
        self.set_header("Content-Type", "text/html; charset=utf-8")  # the relay ignores it
        self.finish(HOSTILE_PAGE)


@pytest.fixture
async def hostile_origin() -> AsyncIterator[str]:
    async with serving(_Hostile) as url:
        yield url


@pytest.fixture
async def evil(system: System, hostile_origin: str, tmp_path: Path) -> AsyncIterator[Agent]:
    """A second box, of another club, whose 'FPVTrackside' is the hostile server."""
    token_file = tmp_path / "evil-token"
    token_file.write_text(system.keys.issue(sub="evil", role="pits", ttl=86400))
    agent = Agent(system.agent_config(token_file=token_file, fpvtrackside=hostile_origin))
    await agent.start()
    await wait_for(lambda: system.relay.registry.get("evil"), what="the hostile box")
    yield agent
    await agent.stop()


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    context = await browser.new_context(viewport={"width": 1024, "height": 768})
    page = await context.new_page()
    watch_errors(page, accept_dialogs=False)
    yield page
    await context.close()


async def test_a_hostile_page_cannot_read_the_admin_token_or_set_cookies(
    page: Page, system: System, evil: Agent
) -> None:
    # The operator signs in to the admin page in this tab: the token is in its sessionStorage.
    await page.goto(f"{system.url}/admin")
    await page.fill("#token", system.keys.issue(sub="alice", role="admin", ttl=600))
    await page.click("text=Sign in")
    await expect(page.locator('#connections tr[data-pits="evil"]')).to_be_visible()
    # Then follows a link to the other club's page, in the same tab.
    await page.goto(f"{system.url}/pits/evil/")
    await expect(page.locator("#result")).not_to_be_empty()
    result = json.loads(await page.locator("#result").text_content() or "{}")
    assert result["token"] == "blocked: SecurityError"
    assert result["local"] == "blocked: SecurityError"
    assert result["cookie"] == "blocked: SecurityError"
    assert result["origin"] == "null"
    assert await page.context.cookies() == []
    # The operator's session is untouched.
    await page.goto(f"{system.url}/admin")
    await expect(page.locator('#connections tr[data-pits="evil"]')).to_be_visible()


async def test_fpvtrackside_page_still_loads_and_follows_the_race_through_the_relay(
    page: Page, system: System, evil: Agent
) -> None:
    sim = system.sim
    assert system.relay.active_pits_id() == system.pits_id  # the first box, not the evil one
    await page.goto(f"{system.url}/pits/{system.pits_id}/")
    await expect(page.locator("#event-name")).not_to_have_text("FPVTrackside")
    race = json.loads((sim.root / sim.race_path().lstrip("/")).read_text(encoding="utf-8"))[0]
    await expect(page.locator("#laps tbody tr")).to_have_count(len(race["PilotChannels"]))
    await expect(page.locator("#race")).to_contain_text("running")
    before = await page.locator("#laps tbody").text_content()
    race_file = sim.root / sim.race_path().lstrip("/")

    def laps_done() -> int:
        laps = json.loads(race_file.read_text(encoding="utf-8"))[0]["Laps"]
        return sum(lap["LapNumber"] >= 1 for lap in laps)

    while laps_done() == 0:  # the first detection of each pilot is the holeshot
        sim.advance()
    await expect(page.locator("#laps tbody")).not_to_have_text(before or "")
    updates = int(await page.locator("#updated").get_attribute("data-updates") or 0)
    assert updates >= 1
    assert page.errors == []  # type: ignore[attr-defined]
