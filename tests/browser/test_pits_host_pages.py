"""Every FPVTrackside page works unchanged at its pits' own host (issue 19), in Chromium.

Chromium resolves every `*.localhost` name to loopback, so with `--pits-domain localhost` pits
`club-1` is `http://club-1.localhost:<port>/`. Two pits are connected and neither is active
(the relay's root serves neither): each one's page loads all its scripts and styles by their
absolute `/httpfiles/...` paths, renders its own event, navigates, and a reload after
navigating still shows the page. Tried with the simulator's page, and with a page built the
way FPVTrackside's is (scripts from `/httpfiles/`, `history.pushState` to root paths such as
`/Rounds`, the view chosen from the address on load).

Also the security test of the path-based route, on the host-based one: a hostile pits' page
cannot read the admin's token, nor set a cookie the admin's origin would see.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Page, Response, expect

from pitlink_testkit.fpvtrackside import Simulator
from pitlink_testkit.system import System

pytestmark = pytest.mark.timeout(120)

DOMAIN = "localhost"

# A page built like FPVTrackside's own (Webb/httpfiles in its public sources), written here:
# everything it loads by absolute paths, its data relative to the event directory, links that
# move the address bar with pushState to root paths, and the view read back from the address.
PAGE = """<!DOCTYPE html>
<html>
<head>
<meta charset="utf-8">
<link rel="stylesheet" href="/httpfiles/style.css">
<script src="/httpfiles/Accessor.js"></script>
<script src="/httpfiles/Formatter.js"></script>
<script>
  var accessor = new Accessor("%eventDirectory%");
  var formatter = new Formatter(accessor, "content");
</script>
</head>
<body>
<div class="top"><h1 id="event-name">FPVTrackside</h1></div>
<nav>
  <a id="show-status" href="#" onclick="formatter.show('EventStatus'); return false;">Event Status</a>
  <a id="show-rounds" href="#" onclick="formatter.show('Rounds'); return false;">Rounds</a>
</nav>
<div id="content"></div>
<script>formatter.start();</script>
</body>
</html>
"""

ACCESSOR_JS = """"use strict";
function Accessor(eventDirectory) { this.dir = "/" + eventDirectory; }
Accessor.prototype.get = function (file) {
  return fetch(this.dir + "/" + file, { cache: "no-store" }).then(function (r) {
    if (!r.ok) { throw new Error(file + " answered HTTP " + r.status); }
    return r.json();
  });
};
"""

FORMATTER_JS = """"use strict";
function Formatter(accessor, id) { this.accessor = accessor; this.id = id; }
Formatter.prototype.start = function () {
  var self = this;
  window.addEventListener("popstate", function () { self.render(); });
  this.accessor.get("Event.json").then(function (got) {
    document.getElementById("event-name").textContent = got[0].Name;
    self.render();
  });
};
Formatter.prototype.show = function (view) {
  history.pushState({}, "", "/" + view);  // as FPVTrackside's page moves its address bar
  this.render();
};
Formatter.prototype.render = function () {
  var view = location.pathname.replace(/^\\/+|\\/+$/g, "") || "EventStatus";
  var box = document.getElementById(this.id);
  box.dataset.view = view;
  if (view === "Rounds") {
    this.accessor.get("Rounds.json").then(function (rounds) {
      box.replaceChildren();
      rounds.forEach(function (round) {
        var p = document.createElement("p");
        p.className = "round";
        p.textContent = "Round " + round.RoundNumber;
        box.append(p);
      });
    });
  } else {
    box.replaceChildren();
    var p = document.createElement("p");
    p.className = "status";
    p.textContent = "Event status";
    box.append(p);
  }
};
"""

STYLE_CSS = "body { font-family: sans-serif; } .round { margin: 0; }\n"


def fpvtrackside_root(fixtures_root: Path, folder: Path, name: str) -> Path:
    """The real event's web root with the page above in `httpfiles/`, the event renamed."""
    shutil.copytree(fixtures_root, folder)
    files = {
        "index.html": PAGE,
        "Accessor.js": ACCESSOR_JS,
        "Formatter.js": FORMATTER_JS,
        "style.css": STYLE_CSS,
    }
    for file, text in files.items():
        (folder / "httpfiles" / file).write_text(text)
    (event_json,) = folder.glob("events/*/Event.json")
    event = json.loads(event_json.read_bytes().decode("utf-8-sig"))
    event[0]["Name"] = name
    event_json.write_text(json.dumps(event, indent=2))
    return folder


async def clubs_on(tmp_path: Path, sims: list[Simulator]) -> list[System]:
    """A relay with `--pits-domain localhost`, one pits on each simulator, none active."""
    first = System(tmp_path, sims[0], pits_id="club-1")
    await first.start_relay(
        freshness=0.0,
        client_rate=None,
        pits_fetch_rate=None,
        pits_domain=DOMAIN,
        active_pits="nobody",
    )
    await first.start_agent()
    systems = [first]
    for number, sim in enumerate(sims[1:], start=2):
        other = first.sibling(sim, f"club-{number}")
        await other.start_agent()
        systems.append(other)
    return systems


async def stop(systems: list[System]) -> None:
    for system in reversed(systems[1:]):
        await system.stop_agent()
    await systems[0].close()


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    context = await browser.new_context()
    page = await context.new_page()
    errors: list[str] = []
    loaded: list[Response] = []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("requestfailed", lambda request: errors.append(f"failed: {request.url}"))
    page.on("response", lambda response: loaded.append(response))
    page.errors = errors  # type: ignore[attr-defined]
    page.loaded = loaded  # type: ignore[attr-defined]
    yield page
    await context.close()


def assets(page: Page) -> dict[str, int]:
    """Every script and style the page asked for, by path, with its status."""
    got: list[Response] = page.loaded  # type: ignore[attr-defined]
    return {
        r.url.split("/", 3)[3]: r.status
        for r in got
        if r.request.resource_type in ("script", "stylesheet")
    }


def pits_url(system: System, path: str = "/") -> str:
    return f"http://{system.pits_id}.{DOMAIN}:{system.relay_port}{path}"


@pytest.fixture
async def fpvtrackside_like(
    tmp_path: Path, fixtures_root: Path
) -> AsyncIterator[tuple[list[System], list[str]]]:
    names = ["Club One night", "Club Two cup"]
    sims = [
        Simulator(root=fpvtrackside_root(fixtures_root, tmp_path / f"root-{i}", name))
        for i, name in enumerate(names)
    ]
    for sim in sims:
        await sim.start()
    (tmp_path / "systems").mkdir()
    systems = await clubs_on(tmp_path / "systems", sims)
    yield systems, names
    await stop(systems)
    for sim in sims:
        await sim.stop()


async def test_a_page_built_like_fpvtracksides_works_at_each_pits_host(
    page: Page, fpvtrackside_like: tuple[list[System], list[str]]
) -> None:
    systems, names = fpvtrackside_like
    relay = systems[0].relay
    assert relay is not None and relay.active_pits_id() == "nobody"
    for system, name in zip(systems, names, strict=True):
        await page.goto(pits_url(system))
        await expect(page.locator("#event-name")).to_have_text(name)
        await expect(page.locator("#content .status")).to_have_text("Event status")
        # Navigate: the address bar moves to a root path, the view follows.
        await page.click("#show-rounds")
        await expect(page).to_have_url(pits_url(system, "/Rounds"))
        rounds = page.locator("#content .round")
        await expect(rounds.first).to_have_text(re.compile(r"Round \d+"))
        count = await rounds.count()
        assert count > 1
        # A reload there asks the relay for /Rounds: it is the page again, on the same view.
        await page.reload()
        await expect(page.locator("#event-name")).to_have_text(name)
        await expect(page.locator("#content")).to_have_attribute("data-view", "Rounds")
        await expect(page.locator("#content .round")).to_have_count(count)
        await page.go_back()
        await expect(page.locator("#content .status")).to_have_text("Event status")
    statuses = assets(page)
    for path in ("httpfiles/style.css", "httpfiles/Accessor.js", "httpfiles/Formatter.js"):
        assert statuses.get(path) == 200, statuses
    assert page.errors == []  # type: ignore[attr-defined]


@pytest.fixture
async def simulated(tmp_path: Path, sim: Simulator) -> AsyncIterator[list[System]]:
    other = Simulator(seed=8, lap_interval=None)
    await other.start()
    systems = await clubs_on(tmp_path, [sim, other])
    yield systems
    await stop(systems)
    await other.stop()


async def test_the_simulators_page_works_at_each_pits_host(
    page: Page, simulated: list[System]
) -> None:
    for system in simulated:
        sim = system.sim
        event = json.loads((sim.root / sim.event_path.lstrip("/") / "Event.json").read_text())
        await page.goto(pits_url(system))
        await expect(page.locator("#event-name")).to_have_text(event[0]["Name"])
        race = json.loads((sim.root / sim.race_path().lstrip("/")).read_text(encoding="utf-8"))
        await expect(page.locator("#laps tbody tr")).to_have_count(len(race[0]["PilotChannels"]))
        # Where FPVTrackside's page would have moved the address bar, then a reload.
        await page.evaluate("history.pushState({}, '', '/Rounds')")
        await page.reload()
        await expect(page).to_have_url(pits_url(system, "/Rounds"))
        await expect(page.locator("#event-name")).to_have_text(event[0]["Name"])
    statuses = assets(page)
    for path in ("httpfiles/style.css", "httpfiles/EventManager.js"):
        assert statuses.get(path) == 200, statuses
    assert page.errors == []  # type: ignore[attr-defined]


HOSTILE = """<!DOCTYPE html><html><body><p id="out">running</p><script>
var out = [];
try { out.push("token:" + sessionStorage.getItem("pitlink-admin-token")); }
catch (e) { out.push("storage refused"); }
try { document.cookie = "stolen=1; path=/; domain=localhost"; out.push("cookie:" + document.cookie); }
catch (e) { out.push("cookie refused"); }
document.getElementById("out").textContent = out.join(" ");
</script></body></html>
"""


async def test_a_hostile_pits_page_cannot_reach_the_admin(
    browser: Browser, tmp_path: Path, fixtures_root: Path
) -> None:
    root = fpvtrackside_root(fixtures_root, tmp_path / "root", "Hostile")
    (root / "httpfiles" / "index.html").write_text(HOSTILE)
    sim = Simulator(root=root)
    await sim.start()
    (tmp_path / "systems").mkdir()
    systems = await clubs_on(tmp_path / "systems", [sim])
    context = await browser.new_context()
    try:
        system = systems[0]
        admin = await context.new_page()
        await admin.goto(f"http://{DOMAIN}:{system.relay_port}/admin")
        token = system.keys.issue(sub="alice", role="admin", ttl=600)
        await admin.fill("#token", token)
        await admin.click("text=Sign in")
        await expect(
            admin.locator(f'#connections tr[data-pits="{system.pits_id}"]')
        ).to_be_visible()
        link = admin.locator(f'#connections tr[data-pits="{system.pits_id}"] a.pits-address')
        await expect(link).to_have_text(f"{system.pits_id}.{DOMAIN}")
        hostile = await context.new_page()
        await hostile.goto(pits_url(system))
        out = hostile.locator("#out")
        await expect(out).not_to_have_text("running")
        text = await out.text_content() or ""
        assert token not in text
        assert "stolen" not in text
        cookies: list[Any] = await context.cookies(f"http://{DOMAIN}:{system.relay_port}/")
        assert cookies == []
    finally:
        await context.close()
        await stop(systems)
        await sim.stop()
