"""Cache hits answered below the handlers (cloud.hits), over real sockets: the same answer.

A fresh hit over HTTP/1.1 takes the fast path; the same request over HTTP/1.0 is left to the
application's handler. Both are asked here for the same entry, and must agree on every header
but the two that are per request (`Date`, `X-Request-Id`).
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from pitlink_testkit.clock import FakeClock
from pitlink_testkit.system import System

PER_REQUEST = {"Date", "X-Request-Id"}


class Reply:
    def __init__(self, status: str, headers: dict[str, str], body: bytes):
        self.status, self.headers, self.body = status, headers, body

    @property
    def code(self) -> int:
        return int(self.status.split()[1])


async def read_reply(reader: asyncio.StreamReader, *, head: bool = False) -> Reply:
    raw = await reader.readuntil(b"\r\n\r\n")
    status, *lines = raw.decode("latin-1").rstrip("\r\n").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines)
    length = 0 if head or status.split()[1] == "304" else int(headers["Content-Length"])
    return Reply(status, headers, await reader.readexactly(length))


async def exchange(
    port: int, *requests: str, to_the_end: bool = False
) -> tuple[list[Reply], bytes | None]:
    """Send the requests on one connection at once (pipelined) and read as many replies;
    with `to_the_end`, also what comes after them until the relay closes the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write("".join(requests).encode("latin-1"))
        await writer.drain()
        replies = [await read_reply(reader, head=r.startswith("HEAD ")) for r in requests]
        rest = await asyncio.wait_for(reader.read(), 10) if to_the_end else None
    finally:
        writer.close()
        await writer.wait_closed()
    return replies, rest


def request(path: str, version: str = "HTTP/1.1", method: str = "GET", **headers: str) -> str:
    headers.setdefault("Host", "127.0.0.1")
    lines = [f"{method} {path} {version}"]
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    return "\r\n".join(lines) + "\r\n\r\n"


@pytest.fixture
async def cached(tmp_path, sim) -> System:
    """A relay whose clock stands still, with Channels.json in its cache (60 s fresh)."""
    s = System(tmp_path, sim)
    await s.start_relay(clock=FakeClock(), freshness=60.0, client_rate=None)
    await s.start_agent()
    first = await s.get(f"/pits/{s.pits_id}/httpfiles/Channels.json")
    assert first.headers["X-Pitlink-Cache"] == "MISS"
    yield s
    await s.close()


def same_but_per_request(fast: Reply, handler: Reply) -> None:
    assert fast.status == handler.status
    assert fast.body == handler.body
    for name in PER_REQUEST:
        assert name in fast.headers and name in handler.headers
    drop = PER_REQUEST
    assert {k: v for k, v in fast.headers.items() if k not in drop} == {
        k: v for k, v in handler.headers.items() if k not in drop
    }


@pytest.mark.parametrize(
    ("method", "extra"),
    [("GET", {}), ("HEAD", {}), ("GET", {"If-None-Match": "etag"}), ("GET", {"X": "y"})],
)
async def test_a_fast_hit_has_exactly_the_handlers_headers(
    cached: System, method: str, extra: dict[str, str]
) -> None:
    path = f"/pits/{cached.pits_id}/httpfiles/Channels.json"
    hits = cached.relay.metrics.cache_hits
    if extra.get("If-None-Match") == "etag":
        extra = {"If-None-Match": (await cached.get(path)).headers["ETag"]}
    before = hits._value.get()
    (fast,), _ = await exchange(cached.relay_port, request(path, method=method, **extra))
    (handler,), _ = await exchange(
        cached.relay_port, request(path, "HTTP/1.0", method=method, **extra)
    )
    assert fast.headers["X-Pitlink-Cache"] == "HIT"
    same_but_per_request(fast, handler)
    assert hits._value.get() == before + 2  # both counted, once each
    assert fast.code == (304 if extra.get("If-None-Match") else 200)


async def test_hits_keep_the_connection_and_answer_pipelined_requests(cached: System) -> None:
    path = f"/pits/{cached.pits_id}/httpfiles/Channels.json"
    replies, rest = await exchange(
        cached.relay_port, *[request(path)] * 5, request(path, Connection="close"), to_the_end=True
    )
    assert [r.code for r in replies] == [200] * 6
    assert len({r.headers["X-Request-Id"] for r in replies}) == 6
    assert "Connection" not in replies[0].headers
    assert replies[-1].headers["Connection"] == "close"
    assert rest == b""  # closed after the last


async def test_hits_and_the_rest_share_one_connection(cached: System) -> None:
    """A hit, a miss, an error and a hit again, pipelined: each answered in order."""
    pits = f"/pits/{cached.pits_id}"
    replies, _ = await exchange(
        cached.relay_port,
        request(f"{pits}/httpfiles/Channels.json"),
        request(f"{pits}{cached.sim.event_path}/Event.json"),
        request(f"{pits}/nothing/here.txt"),
        request(f"{pits}/httpfiles/Channels.json", method="HEAD"),
        request(f"{pits}/httpfiles/Channels.json"),
    )
    assert [r.code for r in replies] == [200, 200, 403, 200, 200]
    assert [r.headers.get("X-Pitlink-Cache") for r in replies] == [
        "HIT",
        "MISS",
        None,
        "HIT",
        "HIT",
    ]
    assert replies[3].body == b"" and replies[4].body == replies[0].body


async def test_a_hit_is_counted_not_logged(cached: System, caplog) -> None:
    caplog.set_level(logging.INFO)
    path = f"/pits/{cached.pits_id}/httpfiles/Channels.json"
    before = cached.relay.metrics.cache_hits._value.get()
    for _ in range(3):
        assert (await cached.get(path)).headers["X-Pitlink-Cache"] == "HIT"
    assert cached.relay.metrics.cache_hits._value.get() == before + 3

    def logged(name: str) -> list[logging.LogRecord]:
        # Only this test's requests: the agent's connectivity probe (/generate_204) is logged
        # whenever it happens to come.
        return [r for r in caplog.records if r.name == "tornado.access" and name in r.getMessage()]

    assert not logged("Channels.json")
    # A fetch from the pits is still logged (and audited) as before.
    await cached.get(f"/pits/{cached.pits_id}{cached.sim.event_path}/Event.json")
    assert logged("Event.json")


async def test_a_relay_leaving_tells_clients_to_go_after_hits_too(cached: System) -> None:
    path = f"/pits/{cached.pits_id}/httpfiles/Channels.json"
    cached.relay.drain.draining = True
    (reply,), _ = await exchange(cached.relay_port, request(path))
    assert reply.code == 200 and reply.headers["X-Pitlink-Cache"] == "HIT"
    assert reply.headers["Connection"] == "close"


async def test_the_admin_host_never_serves_a_cached_body(tmp_path, sim) -> None:
    s = System(tmp_path, sim)
    await s.start_relay(
        clock=FakeClock(), freshness=60.0, client_rate=None, admin_host="admin.localhost"
    )
    await s.start_agent()
    path = f"/pits/{s.pits_id}/httpfiles/Channels.json"
    try:
        assert (await s.get(path)).code == 200
        assert (await s.get(path)).headers["X-Pitlink-Cache"] == "HIT"
        for host in ("admin.localhost", "ADMIN.localhost:8080"):
            (reply,), _ = await exchange(s.relay_port, request(path, Host=host))
            assert reply.code == 404, host
            assert b"channel" not in reply.body.lower()
    finally:
        await s.close()


@pytest.mark.parametrize("path", ["/httpfiles/Channels.json", "/", "/Rounds"])
@pytest.mark.parametrize("method", ["GET", "HEAD"])
async def test_a_fast_hit_on_a_pits_host_has_exactly_the_handlers_headers(
    tmp_path, sim, path: str, method: str
) -> None:
    """`--pits-domain`: a pits' own host takes the fast path too, with the same answer as the
    handler gives there and as the path-based route gives."""
    s = System(tmp_path, sim)
    await s.start_relay(
        clock=FakeClock(), freshness=60.0, client_rate=None, pits_domain="localhost"
    )
    try:
        await s.start_agent()
        host = f"{s.pits_id}.localhost"
        (miss,), _ = await exchange(s.relay_port, request(path, "HTTP/1.0", Host=host))
        assert miss.headers["X-Pitlink-Cache"] == "MISS"
        (fast,), _ = await exchange(s.relay_port, request(path, method=method, Host=host))
        (handler,), _ = await exchange(
            s.relay_port, request(path, "HTTP/1.0", method=method, Host=host)
        )
        assert fast.headers["X-Pitlink-Cache"] == "HIT"
        same_but_per_request(fast, handler)
        by_path = f"/pits/{s.pits_id}" + ("/" if path == "/Rounds" else path)
        (old,), _ = await exchange(s.relay_port, request(by_path, method=method))
        if path != "/httpfiles/Channels.json":
            # A page: its age notice names the pits' base as each host sees it (its own ETag
            # and length too); else the same answer.
            assert fast.headers["Etag"] != old.headers["Etag"]
            on_host = b'<script src="/pitlink/age.js" defer></script>'
            by_base = f'<script src="/pits/{s.pits_id}/pitlink/age.js" defer></script>'.encode()
            assert method == "HEAD" or on_host in fast.body
            assert fast.body == old.body.replace(by_base, on_host)
            old.body = fast.body
            for name in ("Etag", "Content-Length"):
                old.headers[name] = fast.headers[name]
        same_but_per_request(fast, old)
        # The relay's own name (the admin's) sends it on, even when it is in the cache.
        (moved,), _ = await exchange(s.relay_port, request(by_path, Host="localhost"))
        assert moved.code == 308
    finally:
        await s.close()
