"""Updates through the whole agent: offers down the link, reports up it, the hello, the page's
Install now. The relay is played by the test (the relay's own side is built elsewhere) and
serves the bundle endpoint on the same origin as its WebSocket."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import tornado.httpclient
import tornado.httpserver
import tornado.netutil
import tornado.web
import tornado.websocket

from pitlink_testkit.bundles import (
    BundleHandler,
    FakeRauc,
    Served,
    make_bundle,
    offer_for,
    report_states,
)
from pitlink_testkit.system import System
from pitlink_testkit.waiting import wait_for
from pits_appliance.agent import Agent
from pits_appliance.rauc import box_compatible
from wire import PROTOCOL_VERSION
from wire import messages as m

pytestmark = pytest.mark.timeout(40)
OLD, NEW = "0.1.0+20261101T1200", "0.2.0+20261129T1612"


class Relay(tornado.websocket.WebSocketHandler):
    def initialize(self, links: list[Relay]) -> None:
        self.links = links
        self.received: list[m.Frame] = []

    def open(self, *args: str) -> None:
        self.links.append(self)
        hello = m.CloudHello(protocol_version=PROTOCOL_VERSION, server_time_ms=0)
        self.write_message(m.encode(hello, now_ms=0))

    def on_message(self, message: str | bytes) -> None:
        self.received.append(m.decode(message, sender="pits"))

    def send(self, message: m.Message) -> None:
        self.write_message(m.encode(message, now_ms=0))

    def updates(self) -> list[m.UpdateReport]:
        return [f.message for f in self.received if isinstance(f.message, m.UpdateReport)]


class Bench:
    def __init__(self, agent: Agent, links: list[Relay], served: Served, rauc: FakeRauc):
        self.agent, self.links, self.served, self.rauc = agent, links, served, rauc

    def states(self) -> list[str]:
        return [u.state for u in self.links[-1].updates()] if self.links else []


@pytest.fixture
async def bench(tmp_path: Path, sim) -> AsyncIterator[Bench]:
    links: list[Relay] = []
    s = System(tmp_path, sim)
    served = Served(token=s.token_file.read_text().strip())
    app = tornado.web.Application(
        [
            (r"/control", Relay, {"links": links}),
            (r"/pits-api/bundles/([0-9a-f]+)", BundleHandler, {"served": served}),
        ],
        log_function=lambda handler: None,
    )
    sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
    server = tornado.httpserver.HTTPServer(app)
    server.add_sockets(sockets)
    s.relay_port = sockets[0].getsockname()[1]
    rauc = FakeRauc(tmp_path)
    state = tmp_path / "state"
    state.mkdir()
    # The last update, as a box that was updated before keeps it.
    (state / "update-report.json").write_text(
        json.dumps({"state": "good", "version": OLD, "message": "marked good", "atMs": 5})
    )
    agent = await s.start_agent(
        wait=False,
        state_dir=state,
        update_during_races=True,  # races and updates: tests/integration/test_update_race.py
        **rauc.box(slot="A", version=OLD),
    )
    try:
        await wait_for(lambda: agent.state.ws_connected, what="the link")
        yield Bench(agent, links, served, rauc)
    finally:
        await s.close()
        server.stop()
        await server.close_all_connections()


async def test_the_hello_says_the_slot_version_and_last_update(bench: Bench) -> None:
    await wait_for(lambda: bench.links and bench.links[0].received, what="the hello")
    hello = bench.links[0].received[0].message
    assert isinstance(hello, m.PitsHello)
    assert (hello.sw_version, hello.slot) == (OLD, "A")
    assert f"arch:{box_compatible().removeprefix('pitlink-')}" in hello.features
    assert hello.update == m.UpdateReport(state="good", version=OLD, message="marked good", at_ms=5)
    assert bench.agent.state.sw_version == OLD


async def test_an_offer_is_downloaded_installed_and_reported_frame_by_frame(
    bench: Bench, tmp_path: Path
) -> None:
    relay = bench.links[0]
    relay.send(
        m.Offer(bundle="ff", version=NEW, compatible="pitlink-sparc", size=1, sha256="0" * 64)
    )
    await wait_for(lambda: "refused" in bench.states(), what="the refusal")
    assert relay.updates()[-1].message == (
        f"The bundle is for pitlink-sparc; this box is {box_compatible()}."
    )
    data = make_bundle(tmp_path / "b.raucb", compatible=box_compatible(), version=NEW)
    bench.served.bundles["abc"] = data
    relay.send(offer_for(data, bundle="abc", compatible=box_compatible(), version=NEW))
    await wait_for(lambda: "installed" in bench.states(), what="the install")
    assert report_states(relay.updates())[1:] == [
        "offered",
        "downloading",
        "installing",
        "installed",
    ]
    assert bench.rauc.verbs() == ["info", "install"]
    assert bench.served.ranges == [f"bytes=0-{len(data) - 1}"]
    row = await page_row(bench, "update")
    assert row["mark"] == "amber" and row["title"] == f"Version {NEW} is ready"
    assert "Press Install now" in row["text"]


async def page_row(bench: Bench, key: str) -> dict[str, Any]:
    http = tornado.httpclient.AsyncHTTPClient()
    got = await http.fetch(f"http://127.0.0.1:{bench.agent.status_port}/status.json")
    view = json.loads(got.body)
    return next(r for r in view["rows"] if r["key"] == key)


async def test_install_now_from_the_page_and_only_from_it(bench: Bench, tmp_path: Path) -> None:
    data = make_bundle(tmp_path / "b.raucb", compatible=box_compatible(), version=NEW)
    bench.served.bundles["abc"] = data
    bench.links[0].send(offer_for(data, bundle="abc", compatible=box_compatible(), version=NEW))
    await wait_for(lambda: "installed" in bench.states(), what="the install")
    base = f"http://127.0.0.1:{bench.agent.status_port}"
    http = tornado.httpclient.AsyncHTTPClient()

    async def post(headers: dict[str, str]) -> tornado.httpclient.HTTPResponse:
        return await http.fetch(
            base + "/api/install", method="POST", body=b"", headers=headers, raise_error=False
        )

    assert (await post({"Origin": base})).code == 403
    assert (await post({"Origin": "http://evil.example", "X-Pitlink-Action": "1"})).code == 403
    assert (await post({"Origin": base, "X-Pitlink-Action": "1"})).code == 403  # no PIN
    assert "reboot" not in bench.rauc.verbs()
    page = {"Origin": base, "X-Pitlink-Action": "1"}
    unlocked = await http.fetch(
        base + "/api/pin", method="POST", body=json.dumps({"pin": System.status_pin}), headers=page
    )
    page["Cookie"] = unlocked.headers["Set-Cookie"].split(";", 1)[0]
    got = await post(page)
    assert got.code == 200
    assert json.loads(got.body)["message"].startswith(f"Restarting into version {NEW} now")
    await wait_for(lambda: "reboot" in bench.rauc.verbs(), what="the restart")
    assert bench.states()[-1] == "restarting"
    record = json.loads((tmp_path / "state" / "update.json").read_text())
    assert (record["fromSlot"], record["toSlot"], record["version"]) == ("A", "B", NEW)
    again = await post(page)
    assert again.code == 409
