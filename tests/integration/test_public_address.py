"""https stays https (issue 25, item 1): behind deploy/'s nginx terminating TLS, every address
the relay writes (the redirect to a pits' own host, the front page, the admin's rows) is the
public's https address, from `--public-url` or from the trusted proxy's X-Forwarded-* headers;
plain http serves only the boxes' connectivity check and sends everything else to https, and
https answers carry HSTS.

The attack it replays: `https://relay/pits/club-a/` answered `308 Location: http://club-a...`,
dropping TLS on the way to the pits' host, because the relay took the scheme of its own plain
request from nginx."""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import tornado.httpclient

from cloud.clients import parse_public_url
from pitlink_testkit.fpvtrackside import Simulator
from pitlink_testkit.loopback import free_port
from pitlink_testkit.nginx import nginx_config, start_nginx, stop_nginx
from pitlink_testkit.system import System
from pitlink_testkit.tls import RelayCA, make_ca
from pitlink_testkit.waiting import wait_for

DOMAIN = "relay.test"
NAMES = (DOMAIN, f"club-a.{DOMAIN}")


@dataclass
class Front:
    system: System
    ca: RelayCA
    tls: int
    plain: int
    http: tornado.httpclient.AsyncHTTPClient

    async def get(self, url: str, **kwargs: Any) -> tornado.httpclient.HTTPResponse:
        kwargs.setdefault("raise_error", False)
        kwargs.setdefault("follow_redirects", False)
        kwargs.setdefault("request_timeout", 20.0)
        if url.startswith("https:"):
            kwargs["ca_certs"] = str(self.ca.ca)
        return await self.http.fetch(url, **kwargs)

    def https(self, host: str, path: str) -> str:
        return f"https://{host}:{self.tls}{path}"

    def admin(self) -> dict[str, str]:
        token = self.system.keys.issue(sub="ops", role="admin", ttl=600)
        return {"Authorization": f"Bearer {token}"}


async def behind_nginx(tmp_path: Path, sim: Simulator, how: str) -> AsyncIterator[Front]:
    """A relay serving `club-a` at its own host under `--pits-domain relay.test`, behind nginx
    with deploy/'s config and a certificate for the domain and its wildcard, told how the
    public reaches it `how`: `trusted-proxy`, `public-url` or `neither`."""
    tls, plain = free_port(), free_port()
    told: dict[str, Any] = {
        "trusted-proxy": {"trusted_proxy": ("127.0.0.1",)},
        "public-url": {"public_url": parse_public_url(f"https://{DOMAIN}:{tls}")},
        "neither": {},
    }[how]
    s = System(tmp_path, sim, pits_id="club-a")
    await s.start_relay(
        freshness=0.0, client_rate=None, pits_fetch_rate=None, pits_domain=DOMAIN, **told
    )
    ca = make_ca(tmp_path / "ca", names=(DOMAIN, f"*.{DOMAIN}"))
    nginx = await start_nginx(
        nginx_config(tmp_path, upstreams=[s.relay_port], plain=plain, tls=tls, certificate=ca)
    )
    http = tornado.httpclient.AsyncHTTPClient(
        force_instance=True, hostname_mapping={name: "127.0.0.1" for name in NAMES}
    )
    front = Front(s, ca, tls, plain, http)

    async def up() -> bool:
        try:
            return (await front.get(front.https(DOMAIN, "/healthz"))).code == 200
        except OSError:
            return False  # nginx is not listening yet

    try:
        await wait_for(up, what="nginx in front of the relay")
        await s.start_agent()
        yield front
    finally:
        http.close()
        await s.close()
        await stop_nginx(nginx)


@pytest.fixture(params=["trusted-proxy", "public-url"])
async def front(
    request: pytest.FixtureRequest, tmp_path: Path, sim: Simulator
) -> AsyncIterator[Front]:
    async for got in behind_nginx(tmp_path, sim, request.param):
        yield got


async def test_a_pits_path_is_sent_on_to_its_own_host_over_https(front: Front) -> None:
    got = await front.get(front.https(DOMAIN, "/pits/club-a/httpfiles/Channels.json?x=1"))
    assert got.code == 308
    own = front.https(f"club-a.{DOMAIN}", "/httpfiles/Channels.json?x=1")
    assert got.headers["Location"] == own
    followed = await front.get(own)
    assert followed.code == 200
    direct = await front.get(front.system.sim.url + "/httpfiles/Channels.json")
    assert json.loads(followed.body) == json.loads(direct.body)
    assert followed.headers["Strict-Transport-Security"].startswith("max-age=31536000")


async def test_the_front_page_and_the_admin_give_https_addresses(front: Front) -> None:
    page = await front.get(front.https(DOMAIN, "/"))
    assert page.code == 200
    assert f'href="https://club-a.{DOMAIN}:{front.tls}/"'.encode() in page.body
    assert b"http://club-a" not in page.body
    rows = await front.get(front.https(DOMAIN, "/admin/api/connections"), headers=front.admin())
    assert rows.code == 200
    (row,) = json.loads(rows.body)["connections"]
    assert row["url"] == front.https(f"club-a.{DOMAIN}", "/")
    assert row["host"] == f"club-a.{DOMAIN}"


async def test_plain_http_serves_only_the_boxes_check_and_sends_the_rest_to_https(
    front: Front,
) -> None:
    check = await front.get(f"http://{DOMAIN}:{front.plain}/generate_204")
    assert check.code == 204 and check.body == b""
    for path in ("/admin", "/admin/api/connections", "/pits/club-a/", "/", "/control"):
        got = await front.get(f"http://{DOMAIN}:{front.plain}{path}")
        assert got.code == 301, path
        assert got.headers["Location"] == front.https(DOMAIN, path)
    own = await front.get(f"http://club-a.{DOMAIN}:{front.plain}/httpfiles/Channels.json")
    assert own.code == 301
    assert own.headers["Location"] == front.https(f"club-a.{DOMAIN}", "/httpfiles/Channels.json")


async def test_what_a_client_writes_in_forwarded_headers_chooses_nothing(front: Front) -> None:
    """nginx passes its own X-Forwarded-Proto and -Host, whatever the client sent."""
    got = await front.get(
        front.https(DOMAIN, "/pits/club-a/"),
        headers={"X-Forwarded-Proto": "http", "X-Forwarded-Host": "evil.example"},
    )
    assert got.headers["Location"] == front.https(f"club-a.{DOMAIN}", "/")


async def test_told_neither_the_relay_says_so_at_start(
    tmp_path: Path, sim: Simulator, caplog: pytest.LogCaptureFixture
) -> None:
    """Without --public-url or --trusted-proxy the relay cannot know the public's scheme: the
    redirect keeps the scheme of its own request from nginx (http, the attack), and the
    relay said at start what to set."""
    caplog.set_level(logging.WARNING, logger="pitlink.cloud")
    async for front in behind_nginx(tmp_path, sim, "neither"):
        got = await front.get(front.https(DOMAIN, "/pits/club-a/"))
        assert got.headers["Location"].startswith("http://club-a.")
    warned = [r.getMessage() for r in caplog.records if r.name == "pitlink.cloud"]
    assert any("give --public-url (or --trusted-proxy)" in line for line in warned)


async def test_the_live_feed_passes_nginx_unbuffered(front: Front) -> None:
    """The feed's first event (a few dozen bytes) arrives through nginx while the stream stays
    open: a buffering proxy would hold it until the buffer filled or the stream ended."""
    context = ssl.create_default_context(cafile=str(front.ca.ca))
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", front.tls, ssl=context, server_hostname=f"club-a.{DOMAIN}"
    )
    try:
        writer.write(
            f"GET /pitlink/live HTTP/1.1\r\nHost: club-a.{DOMAIN}:{front.tls}\r\n"
            "Accept: text/event-stream\r\n\r\n".encode()
        )
        got = b""
        async with asyncio.timeout(20):
            while b"event: pits" not in got:
                chunk = await reader.read(4096)
                assert chunk, f"the feed ended: {got!r}"
                got += chunk
        head = got.partition(b"\r\n\r\n")[0].decode().lower()
        assert head.startswith("http/1.1 200")
        assert "content-type: text/event-stream; charset=utf-8" in head
        assert '"pitsId":"club-a"' in got.decode().replace(" ", "")
    finally:
        writer.close()
