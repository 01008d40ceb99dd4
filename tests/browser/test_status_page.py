"""The box's status page in a real browser: every state says its sentence with its mark."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import socket
import sys
import time
from pathlib import Path

import pytest
import tornado.netutil
from playwright.async_api import Browser, Page, async_playwright, expect

from pitlink_testkit.loopback import free_port
from pitlink_testkit.pages import watch_errors
from pitlink_testkit.system import System
from pitlink_testkit.waiting import wait_for
from pits_appliance.cli import BrokenSettings
from pits_appliance.connectivity import Verdict
from pits_appliance.server import StatusServer
from pits_appliance.status import make_status_app
from wire.event import event_name

REPO = Path(__file__).resolve().parents[2]
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
    watch_errors(page)
    yield page
    await context.close()


async def open_status(page: Page, system: System) -> None:
    await page.goto(f"http://127.0.0.1:{system.agent.status_port}/")
    await expect(page.locator("#rows li").first).to_be_visible()


async def first_check(system: System) -> None:
    """Let the watchdog's own first check land, so that it cannot overwrite what a test sets."""
    await wait_for(lambda: system.agent.state.connectivity == "full", what="the first check")


async def give_pin(page: Page, pin: str = System.status_pin) -> None:
    """Answer the page's question for the box's PIN, which it asks before a button's first
    press in a browser session."""
    await expect(page.locator("#pinform")).to_be_visible()
    await page.fill("#pin", pin)
    await page.click("#unlock")


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
        await expect(page.locator("#pinform")).to_be_hidden()
    finally:
        server.stop()


async def test_reconnect_button(page: Page, system: System) -> None:
    sessions = system.agent.link.sessions
    await open_status(page, system)
    await page.click("#reconnect")
    await give_pin(page)
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
    await give_pin(page)
    await expect_row(page, "cloud", "amber", "Paused")
    assert system.agent.state.paused
    got = await system.get(f"/pits/{system.pits_id}/httpfiles/Channels.json")
    assert got.code == 503  # nothing cached yet, and the box says it is paused
    await expect(page.locator("#pause")).to_have_text("Resume")
    await page.click("#pause")  # the PIN is asked once per browser session
    await expect(page.locator("#pinform")).to_be_hidden()
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
    cookie = (await system.unlock())["Cookie"]
    got = await system.http.fetch(
        base + "/api/pause",
        method="POST",
        body=b"",
        headers={"X-Pitlink-Action": "1", "Cookie": cookie, **headers},
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
            await give_pin(page)
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
        await give_pin(page)
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


# -- the box's PIN and its relay address -----------------------------------------------------


async def test_the_pin_is_made_into_pitlink_conf_and_asked_once_per_browser_session(
    browser: Browser, tmp_path: Path, sim
) -> None:
    """No STATUS_PIN: the box makes one at its first start, beside the token in pitlink.conf,
    and the page says so when it asks for it."""
    s = System(tmp_path, sim)
    card = tmp_path / "card"
    card.mkdir()
    conf = card / "pitlink.conf"
    token = s.token_file.read_text().strip()
    before = f"CLOUD_URL=https://relay.example.com\nTOKEN={token}\n"
    conf.write_text(before)
    contexts = []
    try:
        await s.start_relay()
        await s.start_agent(config_file=conf, status_pin=None)
        text = conf.read_text()
        assert text.startswith(before)
        [pin] = re.findall(r"^STATUS_PIN=([0-9]{6})$", text, re.MULTILINE)

        async def new_page() -> Page:
            context = await browser.new_context(viewport={"width": 360, "height": 740})
            contexts.append(context)
            page = await context.new_page()
            page.on("dialog", lambda dialog: dialog.accept())
            await open_status(page, s)
            return page

        page = await new_page()
        await page.click("#pause")
        await expect(page.locator("#pinform")).to_be_visible()
        await expect(page.locator("#pinwhere")).to_have_text(
            "Once per browser session. It is STATUS_PIN in pitlink.conf on the card's boot "
            "partition (the PITLINK drive), beside the token."
        )
        width = await page.evaluate("document.documentElement.scrollWidth")
        assert width <= 360, "the PIN's form scrolls sideways on a phone"
        await page.screenshot(path=str(tmp_path / "status-pin.png"), full_page=True)
        await give_pin(page, "000000")
        await expect(page.locator("#message")).to_have_text("The box says: wrong PIN.")
        assert s.agent is not None and not s.agent.state.paused
        await give_pin(page, pin)
        await expect(page.locator("#message")).to_have_text(
            "Paused: the box no longer answers the relay."
        )
        assert s.agent.state.paused
        await expect(page.locator("#pinform")).to_be_hidden()
        # The session is a cookie for this browser session only, that scripts cannot read
        # and other sites' pages do not send.
        [cookie] = await contexts[0].cookies()
        assert (cookie["name"], cookie["httpOnly"], cookie["sameSite"], cookie["expires"]) == (
            "pitlink_session",
            True,
            "Strict",
            -1,
        )
        assert await page.evaluate("document.cookie") == ""
        await page.click("#pause")  # Resume: not asked again
        await expect(page.locator("#message")).to_have_text("Resumed.")
        assert not s.agent.state.paused
        # Another browser session is asked again.
        other = await new_page()
        await other.click("#pause")
        await expect(other.locator("#pinform")).to_be_visible()
        assert not s.agent.state.paused
    finally:
        for context in contexts:
            await context.close()
        await s.close()


async def test_wrong_pins_on_the_page_are_slowed_down(page: Page, system: System) -> None:
    await open_status(page, system)
    await page.click("#pause")
    for _ in range(5):
        await give_pin(page, "000000")
        await expect(page.locator("#message")).to_have_text("The box says: wrong PIN.")
        await page.evaluate("document.getElementById('message').textContent = ''")
    await give_pin(page)  # the right one, too late
    await expect(page.locator("#message")).to_have_text(
        re.compile(r"^The box says: too many wrong PINs: try again in (5[0-9]|60) s\.$")
    )
    assert not system.agent.state.paused


async def test_a_relay_allowed_in_plain_http_is_a_warning(page: Page, system: System) -> None:
    await system.stop_agent()
    await system.start_agent(
        wait=False, cloud_url="http://relay.pitlink.invalid", allow_plain_http=True
    )
    await wait_for(lambda: system.agent.state.relay_url, what="the first dial")
    await open_status(page, system)
    await expect_row(
        page,
        "plain",
        "amber",
        "The token crosses the network unencrypted",
        "The relay's address is http://relay.pitlink.invalid, with ALLOW_PLAIN_HTTP on",
        "use the relay's https:// address",
    )


async def test_a_plain_relay_address_is_a_red_settings_line(page: Page, tmp_path: Path) -> None:
    """The agent as systemd runs it, given `http://` to another machine: it does not start,
    and its page says why and what to write instead."""
    port = free_port()
    conf = tmp_path / "pitlink.conf"
    conf.write_text("CLOUD_URL=http://relay.example.com\nTOKEN_FILE=/nonexistent/token\n")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pits_appliance", "--config", str(conf),
        "--status-host", "127.0.0.1", "--status-port", str(port), "--error-hold", "120",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, cwd=REPO,
        env=dict(os.environ, INVOCATION_ID="0123456789abcdef"),
    )  # fmt: skip
    try:
        await wait_for(lambda: port_open(port), what="the status port")
        await page.goto(f"http://127.0.0.1:{port}/")
        await expect(page.locator("#rows li")).to_have_count(1)
        await expect_row(
            page,
            "settings",
            "red",
            "CLOUD_URL http://relay.example.com would send this box's token unencrypted: use "
            "https://relay.example.com",
            "Fix pitlink.conf",
        )
        await expect(page.locator("#pause")).to_be_hidden()
        await expect(page.locator("#pinform")).to_be_hidden()
    finally:
        if proc.returncode is None:
            proc.terminate()
        assert await asyncio.wait_for(proc.wait(), 20) == 2
    assert proc.stderr is not None
    first = (await proc.stderr.read()).decode().splitlines()[0]
    assert "unencrypted: use https://relay.example.com" in first


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0
