"""A captive portal between the box and the Internet: found, shown, and got past."""

from __future__ import annotations

import json

import tornado.httpserver
import tornado.netutil
import tornado.web

from pitlink_testkit.faultproxy import FaultProxy
from pitlink_testkit.system import System
from pitlink_testkit.waiting import wait_for


class LoginHandler(tornado.web.RequestHandler):
    """The venue's sign-in page: a form, and a POST that opens the way out."""

    def initialize(self, proxy: FaultProxy) -> None:
        self.proxy = proxy

    def get(self) -> None:
        self.finish("<form method=post><button>I accept the terms</button></form>")

    def post(self) -> None:
        self.proxy.mode = "forward"
        self.finish("Welcome to the venue Wi-Fi")


async def test_portal_is_detected_shown_and_passed(tmp_path, sim) -> None:
    s = System(tmp_path, sim)
    await s.start_relay()
    # Everything the box sends towards the relay goes through the venue's network.
    venue = FaultProxy("127.0.0.1", s.relay_port)
    await venue.start()
    sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
    login = tornado.httpserver.HTTPServer(
        tornado.web.Application([(r"/login", LoginHandler, {"proxy": venue})])
    )
    login.add_sockets(sockets)
    login_url = f"http://127.0.0.1:{sockets[0].getsockname()[1]}/login"
    venue.portal_location = login_url
    venue.mode = "portal"
    try:
        await s.start_agent(
            wait=False, cloud_url=f"http://127.0.0.1:{venue.port}", check_interval=0.5
        )
        agent = s.agent
        await wait_for(lambda: agent.state.connectivity == "portal", what="the portal")
        assert agent.state.portal_url == login_url
        assert not agent.state.ws_connected

        # The status page says so, with the sign-in address as a link.
        status = json.loads(
            (await s.http.fetch(f"http://127.0.0.1:{agent.status_port}/status.json")).body
        )
        rows = {row["key"]: row for row in status["rows"]}
        assert rows["portal"]["mark"] == "red"
        assert rows["portal"]["link"] == login_url
        assert rows["internet"]["mark"] == "red"
        assert status["overall"] == "red"
        metrics = (await s.http.fetch(f"http://127.0.0.1:{agent.status_port}/metrics")).body
        assert b'pitlink_connectivity_state{state="portal"} 1.0' in metrics

        # Someone at the pits signs in on a phone; the box finds its way out by itself.
        await s.http.fetch(login_url, method="POST", body=b"accept=1")
        await wait_for(lambda: agent.state.connectivity == "full", what="full connectivity")
        await s.connected(timeout=20)
        got = await s.get(f"/pits/{s.pits_id}/httpfiles/Channels.json")
        assert got.code == 200
    finally:
        await s.close()
        login.stop()
        await venue.stop()


async def test_portal_api_names_the_sign_in_page(tmp_path, sim) -> None:
    """RFC 8908: where the network hands out a portal API, its user-portal-url is used."""

    class Api(tornado.web.RequestHandler):
        def get(self) -> None:
            assert self.request.headers["Accept"] == "application/captive+json"
            self.set_header("Content-Type", "application/captive+json")
            self.finish({"captive": True, "user-portal-url": "https://wifi.venue.example/"})

    sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
    api = tornado.httpserver.HTTPServer(tornado.web.Application([(r"/api", Api)]))
    api.add_sockets(sockets)
    s = System(tmp_path, sim)
    await s.start_relay()
    venue = FaultProxy("127.0.0.1", s.relay_port)
    await venue.start()
    venue.mode = "portal"  # a redirect without a Location: the probe alone cannot say where
    try:
        await s.start_agent(
            wait=False,
            cloud_url=f"http://127.0.0.1:{venue.port}",
            check_interval=0.5,
            captive_portal_api=f"http://127.0.0.1:{sockets[0].getsockname()[1]}/api",
        )
        await wait_for(lambda: s.agent.state.portal_url is not None, what="the portal's address")
        assert s.agent.state.portal_url == "https://wifi.venue.example/"
        assert s.agent.state.connectivity == "portal"
    finally:
        await s.close()
        api.stop()
        await venue.stop()


async def test_no_route_and_dns_failure_are_none(tmp_path, sim) -> None:
    s = System(tmp_path, sim)
    await s.start_relay()
    try:
        # A name that cannot resolve (the .invalid TLD is reserved for exactly this); plain
        # http to a name is refused without leave.
        await s.start_agent(
            wait=False,
            cloud_url="http://relay.pitlink.invalid",
            allow_plain_http=True,
            check_interval=0.5,
        )
        await wait_for(lambda: s.agent.state.connectivity == "none", what="none")
        assert "DNS" in s.agent.state.connectivity_detail
    finally:
        await s.close()
