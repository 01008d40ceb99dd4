"""Each failure on the status page points at the right person: the relay's trouble is not the
venue's Wi-Fi, a front that wants https is not a portal, another relay's token is not "rotated
out". Real agent, real relay (or none), real servers on loopback, the page in Chromium."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import tornado.httpserver
import tornado.netutil
import tornado.web
from playwright.async_api import Browser, Page, expect

from pitlink_testkit.faultproxy import FaultProxy
from pitlink_testkit.fpvtrackside import Simulator
from pitlink_testkit.keys import make_keys
from pitlink_testkit.loopback import free_port
from pitlink_testkit.system import System
from pitlink_testkit.waiting import wait_for


class Empty204(tornado.web.RequestHandler):
    """A well-known connectivity check that is not the relay (Android's generate_204)."""

    def get(self) -> None:
        self.set_status(204)
        self.finish()


class ToHttps(tornado.web.RequestHandler):
    """A relay's front that sends every plain request to https on the same host."""

    def initialize(self, port: int) -> None:
        self.port = port

    def get(self, path: str) -> None:
        self.redirect(f"https://127.0.0.1:{self.port}/{path}", permanent=True)


def serve(
    *handlers: tuple[str, type, dict[str, object]],
) -> tuple[tornado.httpserver.HTTPServer, int]:
    sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
    server = tornado.httpserver.HTTPServer(tornado.web.Application(list(handlers)))
    server.add_sockets(sockets)
    return server, sockets[0].getsockname()[1]


@pytest.fixture
async def elsewhere() -> AsyncIterator[str]:
    """The INTERNET_CHECK_URL the tests give the box: a 204 on loopback."""
    server, port = serve((r"/generate_204", Empty204, {}))
    yield f"http://127.0.0.1:{port}/generate_204"
    server.stop()


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    context = await browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    yield await context.new_page()
    await context.close()


def row(page: Page, key: str):
    return page.locator(f'#rows li[data-key="{key}"]')


async def expect_row(page: Page, key: str, mark: str, *texts: str) -> None:
    await expect(row(page, key)).to_have_attribute("data-mark", mark)
    for text in texts:
        await expect(row(page, key)).to_contain_text(text)


async def open_status(page: Page, s: System) -> None:
    await page.goto(s.status_url + "/")
    await expect(page.locator("#rows li").first).to_be_visible()


@pytest.mark.parametrize(
    "relay",
    [
        "http://relay.pitlink.invalid",  # a typo in CLOUD_URL's host: its name does not resolve
        "http://127.0.0.1:{closed}",  # the relay is down: nothing answers there
    ],
)
async def test_the_relay_down_while_other_sites_answer_points_at_the_relay(
    page: Page, tmp_path: Path, sim: Simulator, elsewhere: str, relay: str
) -> None:
    s = System(tmp_path, sim)
    url = relay.format(closed=free_port())
    host = url.split("//")[1].split(":")[0]
    try:
        await s.start_agent(
            wait=False,
            cloud_url=url,
            allow_plain_http=True,
            check_interval=0.5,
            internet_check_url=elsewhere,
        )
        agent = s.agent
        await wait_for(lambda: agent.state.relay_trouble == "unreachable", what="the verdict")
        await wait_for(lambda: agent.state.cloud_failure is not None, what="a failed dial")
        await open_status(page, s)
        await expect_row(
            page,
            "internet",
            "green",
            "The Internet is reachable",
            "Other sites answer, the relay does not: see the relay line.",
        )
        await expect_row(page, "portal", "green", "No captive portal in the way")
        await expect_row(
            page,
            "cloud",
            "red",
            f"Other sites answer, so the Internet is fine: check CLOUD_URL in pitlink.conf (is "
            f"{host} the relay's address?), or call the relay's operator: the relay may be down.",
        )
        for words in ("No Internet", "cable", "out of data", "sign-in"):
            await expect(page.locator("#rows")).not_to_contain_text(words)
    finally:
        await s.close()


async def test_nothing_answering_at_all_is_still_no_internet(
    page: Page, tmp_path: Path, sim: Simulator
) -> None:
    s = System(tmp_path, sim)
    try:
        await s.start_agent(
            wait=False,
            cloud_url="http://relay.pitlink.invalid",
            allow_plain_http=True,
            check_interval=0.5,
            internet_check_url=f"http://127.0.0.1:{free_port()}/generate_204",
        )
        await wait_for(lambda: s.agent.state.connectivity == "none", what="none")
        await open_status(page, s)
        await expect_row(page, "internet", "red", "No Internet", "check the network cable")
    finally:
        await s.close()


async def test_a_portal_intercepting_both_checks_is_still_a_portal(
    page: Page, tmp_path: Path, sim: Simulator
) -> None:
    s = System(tmp_path, sim)
    await s.start_relay()
    check, check_port = serve((r"/generate_204", Empty204, {}))
    venue = FaultProxy("127.0.0.1", s.relay_port)
    venue_out = FaultProxy("127.0.0.1", check_port)  # the same venue, towards another site
    await venue.start()
    await venue_out.start()
    for proxy in (venue, venue_out):
        proxy.portal_location = "http://login.venue.example/"
        proxy.mode = "portal"
    try:
        await s.start_agent(
            wait=False,
            cloud_url=f"http://127.0.0.1:{venue.port}",
            check_interval=0.5,
            internet_check_url=f"http://127.0.0.1:{venue_out.port}/generate_204",
        )
        await wait_for(lambda: s.agent.state.connectivity == "portal", what="the portal")
        assert s.agent.state.relay_trouble is None
        await open_status(page, s)
        await expect_row(page, "portal", "red", "A captive portal is in the way")
        await expect_row(page, "internet", "red", "blocked by a sign-in page")
    finally:
        await s.close()
        check.stop()
        await venue.stop()
        await venue_out.stop()


async def test_a_front_that_redirects_to_https_says_write_https(
    page: Page, tmp_path: Path, sim: Simulator
) -> None:
    https_port = free_port()
    front, port = serve((r"/(.*)", ToHttps, {"port": https_port}))
    s = System(tmp_path, sim)
    try:
        await s.start_agent(wait=False, cloud_url=f"http://127.0.0.1:{port}", check_interval=0.5)
        agent = s.agent
        await wait_for(lambda: agent.state.relay_trouble == "https", what="the verdict")
        await wait_for(lambda: agent.state.cloud_failure == "wants_https", what="a failed dial")
        await open_status(page, s)
        await expect_row(
            page,
            "cloud",
            "red",
            f"The relay wants https: write https://127.0.0.1:{https_port} (not http://) in "
            "CLOUD_URL in pitlink.conf.",
        )
        await expect_row(page, "portal", "green", "No captive portal in the way")
        await expect_row(page, "internet", "green", "asking for https")
        await expect(page.locator("#rows")).not_to_contain_text("accept the terms")
    finally:
        await s.close()
        front.stop()


async def test_a_token_from_another_relay_is_named_so_and_the_token_line_is_red(
    page: Page, tmp_path: Path, sim: Simulator
) -> None:
    s = System(tmp_path, sim)
    await s.start_relay()
    other = tmp_path / "other-relay"
    other.mkdir()
    _, keys = make_keys(other, kid="theirs")
    s.token_file.write_text(keys.issue(sub=s.pits_id, role="pits", ttl=90 * 86400))
    try:
        await s.start_agent(wait=False)
        await wait_for(lambda: s.agent.state.cloud_failure == "token", what="the refusal")
        await open_status(page, s)
        words = (
            "This token was made by another relay (or this relay's keys were replaced): ask "
            "this relay's operator for a token and put it in pitlink.conf (TOKEN=)."
        )
        await expect_row(page, "token", "red", "The relay refuses this box's token", words)
        await expect_row(page, "cloud", "red", words)
        await expect(page.locator("#rows")).not_to_contain_text("rotated out")
    finally:
        await s.close()
