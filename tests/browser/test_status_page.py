"""The box's status page in a real browser: every state says its sentence with its mark."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import tornado.netutil
from playwright.async_api import Browser, Page, async_playwright, expect

from pitlink_testkit.system import System
from pitlink_testkit.waiting import wait_for
from pits_appliance.cli import BrokenSettings
from pits_appliance.connectivity import Verdict
from pits_appliance.server import StatusServer
from pits_appliance.status import make_status_app
from wire.event import event_name

# As tests/browser/conftest.py launches it, for the test that needs its own resolver rules.
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
]


@pytest.fixture
async def page(browser: Browser):
    context = await browser.new_context(viewport={"width": 360, "height": 740}, is_mobile=True)
    page = await context.new_page()
    errors: list[str] = []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("dialog", lambda dialog: dialog.accept())
    page.errors = errors
    yield page
    await context.close()


async def open_status(page: Page, system: System) -> None:
    await page.goto(f"http://127.0.0.1:{system.agent.status_port}/")
    await expect(page.locator("#rows li").first).to_be_visible()


async def first_check(system: System) -> None:
    """Let the watchdog's own first check land, so that it cannot overwrite what a test sets."""
    await wait_for(lambda: system.agent.state.connectivity == "full", what="the first check")


def row(page: Page, key: str):
    return page.locator(f'#rows li[data-key="{key}"]')


async def expect_row(page: Page, key: str, mark: str, *texts: str) -> None:
    await expect(row(page, key)).to_have_attribute("data-mark", mark)
    for text in texts:
        await expect(row(page, key)).to_contain_text(text, ignore_case=True)


async def test_all_green_when_all_is_well(page: Page, system: System, tmp_path: Path) -> None:
    agent = system.agent
    await wait_for(
        lambda: agent.state.origin_event and agent.state.connectivity == "full", what="checks"
    )
    await open_status(page, system)
    await expect(page.locator("#headline")).to_have_text(
        "All is well: race data is reaching the Internet."
    )
    event_json = system.sim.root / system.sim.event_path.lstrip("/") / "Event.json"
    name = event_name(event_json.read_bytes())
    assert name
    await expect_row(page, "fpvtrackside", "green", "FPVTrackside is answering", f"Event “{name}”")
    await expect_row(page, "fpvtrackside", "green", "FPVTrackside before 2.71, on Windows.")
    await expect_row(page, "internet", "green", "The Internet is reachable")
    await expect_row(page, "portal", "green", "No captive portal")
    await expect_row(page, "cloud", "green", "Connected to the relay", "no fetch yet")
    await expect_row(page, "token", "green", "Token valid until")
    await expect_row(page, "software", "green", system.pits_id, "protocol version 1")
    width = await page.evaluate("document.documentElement.scrollWidth")
    assert width <= 360, "the page scrolls sideways on a phone"
    await page.screenshot(path=str(tmp_path / "status-green.png"), full_page=True)
    assert page.errors == []


async def test_fpvtrackside_down_says_what_to_check(page: Page, system: System) -> None:
    await system.sim.stop()
    await system.agent.check_origin()
    await open_status(page, system)
    await expect_row(
        page,
        "fpvtrackside",
        "red",
        f"FPVTrackside is not answering at {system.sim.url}: check that its web server is "
        "enabled and the laptop is on this network.",
    )
    await expect(page.locator("#headline")).to_contain_text("Something needs fixing")


async def test_no_event_open_is_amber(page: Page, system: System) -> None:
    await wait_for(lambda: system.agent.state.origin_reachable, what="origin check")
    system.agent.state.set("origin_event", None)
    await open_status(page, system)
    await expect_row(
        page, "fpvtrackside", "amber", "no event is open", "Open the event in FPVTrackside"
    )


@pytest.mark.parametrize(
    ("verdict", "mark", "text"),
    [
        (Verdict(state="limited", detail="no answer in time"), "amber", "may be out of data"),
        (
            Verdict(state="none", detail="DNS: failure"),
            "red",
            "check the network cable or the Wi-Fi",
        ),
    ],
)
async def test_internet_states(
    page: Page, system: System, verdict: Verdict, mark: str, text: str
) -> None:
    await first_check(system)
    system.agent.watchdog.record(verdict)
    await open_status(page, system)
    await expect_row(page, "internet", mark, text, verdict.detail)


async def test_portal_shows_where_to_sign_in(page: Page, system: System, tmp_path: Path) -> None:
    await first_check(system)
    system.agent.watchdog.record(Verdict(state="portal", portal_url="http://10.0.0.1/login?x=1"))
    await open_status(page, system)
    await expect_row(page, "portal", "red", "A captive portal is in the way", "accept the terms")
    link = row(page, "portal").locator("a.link")
    await expect(link).to_have_attribute("href", "http://10.0.0.1/login?x=1")
    await expect_row(page, "internet", "red", "blocked by a sign-in page")
    await page.screenshot(path=str(tmp_path / "status-portal.png"), full_page=True)
    system.agent.watchdog.record(Verdict(state="portal"))
    await page.reload()
    await expect_row(page, "portal", "red", "did not say where")


async def test_cloud_down_says_why_and_when_next(page: Page, system: System) -> None:
    await system.stop_relay()
    await wait_for(lambda: not system.agent.state.ws_connected, what="link down")
    await open_status(page, system)
    await expect_row(
        page, "cloud", "red", "Not connected to the relay", "cannot reach the relay", "refused"
    )


DAY = 86400.0


@pytest.mark.parametrize(
    ("lifetime", "left", "connected", "mark", "text"),
    [
        # A person should act only when the token is near its end and was not renewed.
        (DAY, DAY - 60, True, "green", "Token valid until"),  # a 1-day token, just issued
        (90 * DAY, 10 * DAY, True, "green", "Renewed by itself while connected"),
        (90 * DAY, 3 * DAY, False, "amber", "renewed by itself once the box is connected"),
        (DAY, 1800, True, "amber", "It should have been renewed by now"),
        (365 * DAY, 5 * DAY, True, "amber", "It should have been renewed by now"),
        (365 * DAY, 20 * DAY, True, "green", "Token valid until"),
        (DAY, -60, True, "red", "Ask the relay's operator for a new token"),
    ],
)
async def test_token_expiry(
    page: Page,
    system: System,
    lifetime: float,
    left: float,
    connected: bool,
    mark: str,
    text: str,
) -> None:
    now = time.time()
    if not connected:
        await system.stop_relay()
        await wait_for(lambda: not system.agent.state.ws_connected, what="link down")
    state = system.agent.state
    state.token_issued, state.token_expires = now + left - lifetime, now + left
    await open_status(page, system)
    await expect_row(page, "token", mark, text)


async def test_settings_error_is_one_red_line(page: Page, tmp_path: Path) -> None:
    sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
    server = StatusServer(
        make_status_app(BrokenSettings("no cloud URL: set CLOUD_URL in the config file"))
    )
    server.add_sockets(sockets)
    try:
        await page.goto(f"http://127.0.0.1:{sockets[0].getsockname()[1]}/")
        await expect(page.locator("#rows li")).to_have_count(1)
        await expect_row(page, "settings", "red", "set CLOUD_URL", "Fix pitlink.conf")
        await expect(page.locator("#reconnect")).to_be_hidden()
    finally:
        server.stop()


async def test_reconnect_button(page: Page, system: System) -> None:
    sessions = system.agent.link.sessions
    await open_status(page, system)
    await page.click("#reconnect")
    await expect(page.locator("#message")).to_have_text("Reconnecting now.")
    await wait_for(lambda: system.agent.link.sessions > sessions, what="a new session")
    await system.connected()
    assert page.errors == []


@pytest.mark.provokes_error(
    "tornado.access",
    r"^503 GET /pits/pits-1/httpfiles/Channels\.json ",
    why="paused from its page, the box fetches nothing: a path never cached is 503",
)
async def test_pause_and_resume_buttons(page: Page, system: System) -> None:
    await open_status(page, system)
    await page.click("#pause")
    await expect_row(page, "cloud", "amber", "Paused")
    assert system.agent.state.paused
    got = await system.get(f"/pits/{system.pits_id}/httpfiles/Channels.json")
    assert got.code == 503  # nothing cached yet, and the box says it is paused
    await expect(page.locator("#pause")).to_have_text("Resume")
    await page.click("#pause")
    await expect_row(page, "cloud", "green", "Connected to the relay")
    assert (await system.get(f"/pits/{system.pits_id}/httpfiles/Channels.json")).code == 200


async def test_actions_need_the_page_header(system: System) -> None:
    base = f"http://127.0.0.1:{system.agent.status_port}"
    got = await system.http.fetch(
        base + "/api/pause", method="POST", body=b"", headers={"Origin": base}, raise_error=False
    )
    assert got.code == 403
    assert not system.agent.state.paused


# -- what the venue's network or another web page must not be able to do --------------------


async def test_a_javascript_portal_url_is_never_a_link(page: Page, system: System) -> None:
    await first_check(system)
    system.agent.watchdog.record(Verdict(state="portal", portal_url="javascript:alert(1)"))
    await open_status(page, system)
    await expect_row(page, "portal", "red", "did not say where", "Open any web page")
    await expect(row(page, "portal").locator("a")).to_have_count(0)
    await expect(page.locator('a[href^="javascript"]')).to_have_count(0)
    assert page.errors == []


@pytest.mark.parametrize(
    "link",
    ["javascript:alert(1)", " JavaScript:alert(1)", "data:text/html,x", "/login", "x" * 3000],
)
async def test_the_page_itself_refuses_a_link_that_is_not_a_web_address(
    page: Page, system: System, link: str
) -> None:
    """Whatever /status.json says (here rewritten on its way), the page links only http(s)."""
    await first_check(system)
    system.agent.watchdog.record(Verdict(state="portal", portal_url="http://10.0.0.1/login"))

    async def rewrite(route) -> None:
        response = await route.fetch()
        view = await response.json()
        for r in view["rows"]:
            if r["key"] == "portal":
                assert r["link"] == "http://10.0.0.1/login"
                r["link"] = link
        await route.fulfill(response=response, json=view)

    await page.route("**/status.json", rewrite)
    await open_status(page, system)
    await expect_row(page, "portal", "red", "A captive portal is in the way")
    await expect(row(page, "portal").locator("a")).to_have_count(0)
    await page.unroute("**/status.json")
    await page.reload()
    await expect(row(page, "portal").locator("a.link")).to_have_attribute(
        "href", "http://10.0.0.1/login"
    )


async def test_a_foreign_host_is_refused_everywhere(system: System) -> None:
    """DNS rebinding: evil.example resolved to the box; the browser sends Host: evil.example."""
    base = f"http://127.0.0.1:{system.agent.status_port}"
    for path in ("/", "/status.json", "/healthz", "/metrics", "/nowhere"):
        got = await system.http.fetch(
            base + path, headers={"Host": "evil.example"}, raise_error=False
        )
        assert got.code == 421, path
        assert json.loads(got.body) == {
            "error": "this box answers only to its own names and addresses"
        }
        assert system.pits_id.encode() not in got.body
    got = await system.http.fetch(
        base + "/api/pause",
        method="POST",
        body=b"",
        headers={
            "Host": f"evil.example:{system.agent.status_port}",
            "Origin": f"http://evil.example:{system.agent.status_port}",
            "X-Pitlink-Action": "1",
        },
        raise_error=False,
    )
    assert got.code == 421
    assert not system.agent.state.paused
    # The box's own names answer.
    for host in ("localhost", f"pitlink-{system.pits_id}.local", "127.0.0.1"):
        got = await system.http.fetch(base + "/status.json", headers={"Host": host})
        assert json.loads(got.body)["rows"], host


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "http://evil.example"},
        {"Origin": "null"},
        {"Origin": "http://127.0.0.1:1"},  # another port is another origin
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
        {"Origin": "{self}", "Sec-Fetch-Site": "cross-site"},
        {},  # the page's header alone is no longer enough
    ],
)
async def test_actions_need_the_same_origin(system: System, headers: dict[str, str]) -> None:
    base = f"http://127.0.0.1:{system.agent.status_port}"
    headers = {k: v.replace("{self}", base) for k, v in headers.items()}
    got = await system.http.fetch(
        base + "/api/pause",
        method="POST",
        body=b"",
        headers={"X-Pitlink-Action": "1", **headers},
        raise_error=False,
    )
    assert got.code == 403
    assert json.loads(got.body) == {"error": "actions come from the status page"}
    assert not system.agent.state.paused


@pytest.mark.parametrize(
    "headers",
    [{"Origin": "{self}"}, {"Sec-Fetch-Site": "same-origin"}],
    ids=["origin", "fetch-site"],
)
async def test_same_origin_actions_act(system: System, headers: dict[str, str]) -> None:
    base = f"http://127.0.0.1:{system.agent.status_port}"
    headers = {k: v.replace("{self}", base) for k, v in headers.items()}
    got = await system.http.fetch(
        base + "/api/pause",
        method="POST",
        body=b"",
        headers={"X-Pitlink-Action": "1", **headers},
    )
    assert json.loads(got.body) == {
        "ok": True,
        "message": "Paused: the box no longer answers the relay.",
    }
    assert system.agent.state.paused


async def test_the_page_by_the_boxs_mdns_name_works_and_a_rebound_name_does_not(
    system: System,
) -> None:
    """A real Chromium that resolves the box's .local name and evil.example to the box."""
    port = system.agent.status_port
    name = f"pitlink-{system.pits_id}.local"
    rules = f"--host-resolver-rules=MAP {name} 127.0.0.1, MAP evil.example 127.0.0.1"
    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=CHROMIUM, args=[*ARGS, rules], headless=True)
        try:
            page = await b.new_page()
            page.on("dialog", lambda dialog: dialog.accept())
            evil = await page.goto(f"http://evil.example:{port}/status.json")
            assert evil is not None and evil.status == 421
            await page.goto(f"http://{name}:{port}/")
            await expect(page.locator("#rows li").first).to_be_visible()
            await page.click("#pause")
            await expect(page.locator("#message")).to_have_text(
                "Paused: the box no longer answers the relay."
            )
            assert system.agent.state.paused
            await page.click("#pause")
            await expect(page.locator("#message")).to_have_text("Resumed.")
            assert not system.agent.state.paused
        finally:
            await b.close()


async def test_an_admin_token_in_the_box_is_named_as_such(page: Page, system: System) -> None:
    """The relay's reason for refusing the token reaches the page, in plain words."""
    await system.stop_agent()
    system.token_file.write_text(system.keys.issue(sub="alice", role="admin", ttl=86400))
    await system.start_agent(wait=False, pits_id=system.pits_id)
    await wait_for(lambda: system.agent.state.cloud_failure == "token", what="the refusal")
    await open_status(page, system)
    await expect_row(
        page, "cloud", "red", "Not connected", "this is an admin token, not a box token"
    )


# -- updates ---------------------------------------------------------------------------------


async def test_an_installed_update_waits_for_install_now(
    page: Page, tmp_path: Path, sim, browser: Browser
) -> None:
    """The Update line says which version is ready; Install now restarts into it, once."""
    from pitlink_testkit.bundles import FakeRauc

    rauc = FakeRauc(tmp_path)
    state = tmp_path / "state"
    state.mkdir()
    new = "0.3.0+20261129T1612"
    (state / "update-report.json").write_text(
        json.dumps(
            {"state": "installed", "version": new, "message": f"Version {new} is in slot A."}
        )
    )
    s = System(tmp_path, sim)
    try:
        await s.start_relay(freshness=0.0, client_rate=None, pits_fetch_rate=None)
        await s.start_agent(
            state_dir=state,
            **rauc.box(slot="B", version="0.2.0+20261101T1200"),
        )
        await open_status(page, s)
        await expect_row(page, "update", "amber", f"Version {new} is ready", "slot A")
        await expect_row(page, "software", "green", "Pitlink 0.2.0+20261101T1200")
        await expect(page.locator("#install")).to_be_visible()
        await page.screenshot(path=str(tmp_path / "status-update.png"), full_page=True)
        await page.click("#install")
        await expect(page.locator("#message")).to_contain_text(f"Restarting into version {new}")
        await wait_for(lambda: "reboot" in rauc.verbs(), what="the restart command")
        await expect_row(page, "update", "amber", f"Restarting into version {new} in slot A")
        await expect(page.locator("#install")).to_be_hidden()
        assert rauc.verbs().count("reboot") == 1
        assert page.errors == []
    finally:
        await s.close()


async def test_a_download_shows_its_progress(page: Page, system: System) -> None:
    system.agent.state.update = {
        "available": True,
        "slot": "A",
        "version": "0.1.0",
        "state": "downloading",
        "updateVersion": "0.2.0",
        "done": 30 * 2**20,
        "total": 120 * 2**20,
    }
    await open_status(page, system)
    await expect_row(page, "update", "amber", "Downloading version 0.2.0", "30 MB of 120 MB (25%)")
    bar = row(page, "update").locator("progress")
    await expect(bar).to_have_attribute("max", str(120 * 2**20))
    await expect(bar).to_have_attribute("value", str(30 * 2**20))
    await expect(page.locator("#install")).to_be_hidden()
