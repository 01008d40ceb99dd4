"""The agent's connections to FPVTrackside: kept open between requests, replaced when
FPVTrackside closes them, never more than the origin's concurrency, kept only when an answer
allows it. Counted at the server: the simulator, or a raw server for answers it never gives."""

from __future__ import annotations

import asyncio
import gzip
import logging
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pitlink_testkit.fpvtrackside import Simulator
from pitlink_testkit.waiting import wait_for
from pits_appliance import keepalive
from pits_appliance.keepalive import LiteralResolver
from pits_appliance.origin import Origin
from wire import ErrorCode, ProtocolError

CHANNELS = "/httpfiles/Channels.json"


@pytest.fixture
async def fixture_sim(fixtures_root: Path) -> AsyncIterator[Simulator]:
    simulator = Simulator(root=fixtures_root)
    await simulator.start()
    yield simulator
    await simulator.stop()


def retries(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "pitlink.pits.origin"]


async def test_sequential_fetches_share_one_connection(
    fixture_sim: Simulator, fixtures_root: Path
) -> None:
    expected = (fixtures_root / CHANNELS.lstrip("/")).read_bytes()
    origin = Origin(fixture_sim.url)
    try:
        for _ in range(20):
            reply = await origin.get(CHANNELS, 5.0)
            assert (reply.status, reply.body) == (200, expected)
        assert fixture_sim.requests_total == 20
        assert fixture_sim.connections_total == 1
        assert fixture_sim.connections_open == 1
    finally:
        await origin.close()
    await wait_for(lambda: fixture_sim.connections_open == 0, what="the agent to hang up")


async def test_a_connection_fpvtrackside_closed_when_idle_is_replaced(
    fixtures_root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pitlink.pits.origin")
    sim = Simulator(root=fixtures_root, idle_timeout=0.2)
    await sim.start()
    origin = Origin(sim.url)
    try:
        assert (await origin.get(CHANNELS, 5.0)).status == 200
        await wait_for(lambda: sim.connections_open == 0, what="the idle connection closed")
        for _ in range(3):
            assert (await origin.get(CHANNELS, 5.0)).status == 200
        assert sim.connections_total == 2
    finally:
        await origin.close()
        await sim.stop()
    assert retries(caplog) == []  # a clean reconnect, not a failure retried


async def test_a_restarted_fpvtrackside_is_reached_on_a_fresh_connection(
    fixtures_root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pitlink.pits.origin")
    first = Simulator(root=fixtures_root)
    port = await first.start()
    origin = Origin(first.url)
    second = Simulator(root=fixtures_root)
    try:
        assert (await origin.get(CHANNELS, 5.0)).status == 200
        assert first.connections_total == 1
        await first.stop()  # closes the connection the agent keeps
        await second.start(port=port)
        for _ in range(3):
            assert (await origin.get(CHANNELS, 5.0)).status == 200
        assert second.connections_total == 1
    finally:
        await origin.close()
        await second.stop()
    assert retries(caplog) == []


class RawOrigin:
    """An HTTP/1.1 server on plain sockets that answers each request with the next of `answers`:
    (bytes, then), `then` being "keep" (wait for another request), "close" (hang up) or "hold"
    (wait for the client to hang up). With `drop_new`, new connections are closed unread."""

    def __init__(self, answers: list[tuple[bytes, str]]) -> None:
        self.answers = list(answers)
        self.accepted = 0
        self.requests: list[bytes] = []
        self.open = 0
        self.drop_new = False
        self.server: asyncio.Server | None = None
        self.serving: set[asyncio.Task[object]] = set()

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.open += 1
        task = asyncio.current_task()
        assert task is not None
        self.serving.add(task)
        try:
            await self._converse(reader, writer)
        except ConnectionError:
            pass
        finally:
            writer.close()
            self.open -= 1
            self.serving.discard(task)

    async def _converse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while not self.drop_new:
            try:
                self.requests.append(await reader.readuntil(b"\r\n\r\n"))
            except (asyncio.IncompleteReadError, ConnectionError):
                break  # the client hung up
            data, then = self.answers.pop(0)
            writer.write(data)
            await writer.drain()
            if then == "close":
                break
            if then == "hold":
                await reader.read()  # until the client hangs up
                break

    async def stop(self) -> None:
        """Stop listening; wait for the connections to end (the client has hung up)."""
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()
        await wait_for(lambda: not self.serving, what="the connections to end", timeout=5.0)


class _HangsUpOnSecondRequest(RawOrigin):
    """An HTTP/1.1 server that answers the first request on each connection and closes the
    connection, unanswered, on the second: FPVTrackside closing an idle connection at the very
    moment the agent sends on it, which the agent cannot see coming."""

    def __init__(self) -> None:
        super().__init__([])
        self.answered = 0

    async def _converse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n[]")
            await writer.drain()
            self.answered += 1
            await reader.readuntil(b"\r\n\r\n")  # the second request: no answer
        except asyncio.IncompleteReadError:
            pass


async def test_a_request_on_a_connection_closed_under_it_is_sent_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="pitlink.pits.origin")
    server = _HangsUpOnSecondRequest()
    origin = Origin(await server.start())
    try:
        for _ in range(3):
            reply = await origin.get("/httpfiles/x.json", 5.0)
            assert (reply.status, reply.body) == (200, b"[]")
        assert server.answered == 3
        assert server.accepted == 3
    finally:
        await origin.close()
        await server.stop()
    assert retries(caplog) == []  # sent again at once on a fresh connection, not retried


async def test_no_more_connections_than_the_concurrency(fixture_sim: Simulator) -> None:
    fixture_sim.hold = asyncio.Event()
    origin = Origin(fixture_sim.url, concurrency=2)
    paths = ["/", CHANNELS, f"{fixture_sim.event_path}/Event.json"] * 2
    try:
        fetches = [asyncio.ensure_future(origin.get(p, 5.0)) for p in paths]
        await wait_for(
            lambda: fixture_sim.queued + fixture_sim.in_flight == 2, what="two at FPVTrackside"
        )
        assert fixture_sim.connections_open == 2
        fixture_sim.hold.set()
        replies = await asyncio.wait_for(asyncio.gather(*fetches), 5.0)
        assert [r.status for r in replies] == [200] * len(paths)
        assert fixture_sim.requests_total == len(paths)
        assert fixture_sim.connections_total == 2
    finally:
        fixture_sim.hold.set()
        await origin.close()


def ok(body: bytes, *headers: str) -> bytes:
    lines = ["HTTP/1.1 200 OK", f"Content-Length: {len(body)}", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@pytest.mark.parametrize(
    "answer",
    [
        ok(b"[]", "Connection: close"),
        ok(b"[]", "Connection: Keep-Alive, Close"),
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n[]",
    ],
    ids=["connection-close", "close-among-tokens", "http-1.0"],
)
async def test_an_answer_that_ends_its_connection_is_not_reused(answer: bytes) -> None:
    server = RawOrigin([(answer, "keep")] * 2)  # the server would take another: the client won't
    origin = Origin(await server.start())
    try:
        for _ in range(2):
            reply = await origin.get("/httpfiles/x.json", 5.0)
            assert (reply.status, reply.body) == (200, b"[]")
        assert server.accepted == 2
        await wait_for(lambda: server.open == 0, what="the agent to close each one")
        assert origin.connections == 0
    finally:
        await origin.close()
        await server.stop()


async def test_a_body_read_to_the_close_is_whole_and_its_connection_not_reused() -> None:
    answer = b"HTTP/1.1 200 OK\r\nContent-Type: text/json\r\n\r\n[1, 2, 3]"
    server = RawOrigin([(answer, "close")] * 2)
    origin = Origin(await server.start())
    try:
        for _ in range(2):
            reply = await origin.get("/httpfiles/x.json", 5.0)
            assert (reply.status, reply.content_type, reply.body) == (
                200,
                "text/json",
                b"[1, 2, 3]",
            )
        assert server.accepted == 2
        assert origin.connections == 0
    finally:
        await origin.close()
        await server.stop()


async def test_answers_without_a_body_and_delimited_ones_keep_the_connection() -> None:
    packed = gzip.compress(b'{"a": 1}')
    server = RawOrigin(
        [
            # A 304 may carry the Content-Length of the body it does not send (over the cap too).
            (b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5000\r\n\r\n", "keep"),
            (b"HTTP/1.1 204 No Content\r\n\r\n", "keep"),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\n[\r\n1\r\n]\r\n0\r\n\r\n",
                "keep",
            ),
            (ok(packed, "Content-Encoding: gzip"), "keep"),
            (b"HTTP/1.1 302 Found\r\nLocation: /elsewhere\r\nContent-Length: 0\r\n\r\n", "keep"),
            (ok(b"{}"), "keep"),
        ]
    )
    origin = Origin(await server.start(), max_body_bytes=1000)
    try:
        got = [await origin.get("/httpfiles/x.json", 5.0) for _ in range(6)]
        assert [(r.status, r.body) for r in got] == [
            (304, b""),
            (204, b""),
            (200, b"[]"),
            (200, b'{"a": 1}'),
            (302, b""),  # not followed
            (200, b"{}"),
        ]
        assert server.accepted == 1
        assert origin.connections == 1
        request = server.requests[0].decode()
        assert request.startswith("GET /httpfiles/x.json HTTP/1.1\r\n")
        assert "Accept-Encoding: gzip\r\n" in request
        assert "Connection:" not in request
    finally:
        await origin.close()
        await server.stop()


@pytest.mark.parametrize(
    "answer",
    [
        # Refused on its Content-Length: the body never comes, and is not waited for.
        b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n7d0\r\n" + b"x" * 2000,
        b"HTTP/1.1 200 OK\r\n\r\n" + b"x" * 2000,
        ok(gzip.compress(b"0" * 5000), "Content-Encoding: gzip"),  # counted as decompressed
    ],
    ids=["content-length", "chunked", "read-to-close", "gzip"],
)
async def test_a_body_over_the_cap_is_too_large_and_its_connection_closed(answer: bytes) -> None:
    server = RawOrigin([(ok(b"[]"), "keep"), (answer, "hold"), (ok(b"{}"), "keep")])
    origin = Origin(await server.start(), max_body_bytes=1000)
    try:
        assert (await origin.get("/httpfiles/a.json", 5.0)).body == b"[]"
        with pytest.raises(ProtocolError) as caught:
            await origin.get("/httpfiles/big.json", 5.0)
        assert caught.value.code == ErrorCode.TOO_LARGE
        await wait_for(lambda: server.open == 0, what="the agent to close the connection")
        assert (await origin.get("/httpfiles/a.json", 5.0)).body == b"{}"
        assert server.accepted == 2
    finally:
        await origin.close()
        await server.stop()


async def test_a_timeout_in_the_body_closes_the_connection() -> None:
    server = RawOrigin([(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n[1,", "hold")])
    origin = Origin(await server.start())
    try:
        with pytest.raises(ProtocolError) as caught:
            await origin.get("/httpfiles/x.json", 0.3)
        assert caught.value.code == ErrorCode.TIMEOUT
        assert origin.connections == 0
        await wait_for(lambda: server.open == 0, what="the agent to close the connection")
    finally:
        await origin.close()
        await server.stop()


async def test_a_cancelled_request_closes_its_connection_at_once() -> None:
    server = RawOrigin([(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n[1,", "hold")])
    origin = Origin(await server.start())
    try:
        fetching = asyncio.ensure_future(origin.get("/httpfiles/x.json", 30.0))
        await wait_for(lambda: server.requests, what="the request at the server")
        fetching.cancel()
        with pytest.raises(asyncio.CancelledError):
            await fetching
        assert origin.connections == 0
        await wait_for(lambda: server.open == 0, what="the agent to close the connection")
    finally:
        await origin.close()
        await server.stop()


async def test_close_closes_the_kept_connections(fixture_sim: Simulator) -> None:
    origin = Origin(fixture_sim.url)
    assert (await origin.get(CHANNELS, 5.0)).status == 200
    assert fixture_sim.connections_open == 1
    await origin.close()
    assert origin.connections == 0
    await wait_for(lambda: fixture_sim.connections_open == 0, what="the agent to hang up")


async def test_sending_again_on_a_fresh_connection_is_not_the_retry(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="pitlink.pits.origin")
    # The kept connection is closed as the second request reaches it; then FPVTrackside drops
    # every new connection unanswered: one fresh send, then the origin's own retry.
    server = RawOrigin([(ok(b"[]"), "keep"), (b"", "close")])
    origin = Origin(await server.start())
    try:
        assert (await origin.get("/httpfiles/x.json", 5.0)).body == b"[]"
        server.drop_new = True
        with pytest.raises(ProtocolError) as caught:
            await origin.get("/httpfiles/x.json", 5.0)
        assert caught.value.code == ErrorCode.ORIGIN_UNREACHABLE
        assert server.accepted == 3
    finally:
        await origin.close()
        await server.stop()
    assert retries(caplog) == [
        "FPVTrackside connection failed, retrying once",
        "FPVTrackside failed again after a retry",
    ]


async def test_an_address_is_resolved_without_a_worker_thread() -> None:
    resolver = LiteralResolver()
    loop = asyncio.get_running_loop()
    handed_off: list[object] = []
    real = loop.run_in_executor

    def spy(executor: object, func: object, *args: object) -> asyncio.Future[object]:
        handed_off.append(func)
        return real(executor, func, *args)  # type: ignore[arg-type]

    loop.run_in_executor = spy  # type: ignore[method-assign]
    try:
        assert await resolver.resolve("192.168.1.20", 8080) == [
            (socket.AF_INET, ("192.168.1.20", 8080))
        ]
        assert await resolver.resolve("::1", 8080) == [(socket.AF_INET6, ("::1", 8080, 0, 0))]
        assert handed_off == []
        named = await resolver.resolve("localhost", 8080, socket.AF_INET)
        assert (socket.AF_INET, ("127.0.0.1", 8080)) in named
        assert handed_off  # a name still goes to getaddrinfo, off the event loop
    finally:
        del loop.run_in_executor
    with pytest.raises(OSError, match="not an address of family"):
        await resolver.resolve("192.168.1.20", 8080, socket.AF_INET6)


async def test_a_connection_idle_past_the_agents_limit_is_not_reused(
    fixture_sim: Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The agent drops a connection idle for IDLE_LIMIT_S (100 s, under Windows' 120 s) rather
    than send on one FPVTrackside may be closing; the limit set to 0 here to cross it."""
    monkeypatch.setattr(keepalive, "IDLE_LIMIT_S", 0.0)
    origin = Origin(fixture_sim.url)
    try:
        for _ in range(3):
            assert (await origin.get(CHANNELS, 5.0)).status == 200
        assert fixture_sim.connections_total == 3
    finally:
        await origin.close()
    await wait_for(lambda: fixture_sim.connections_open == 0, what="the agent to hang up")


async def test_headers_over_the_bound_fail_the_fetch_and_close_the_connection() -> None:
    big = "X-Filler: " + "y" * (keepalive.HEADER_LIMIT + 1024)
    server = RawOrigin([(ok(b"[]", big), "keep"), (ok(b"[]"), "keep")])
    origin = Origin(await server.start())
    try:
        with pytest.raises(ProtocolError) as caught:
            await origin.get("/httpfiles/x.json", 5.0)
        assert caught.value.code == ErrorCode.ORIGIN_UNREACHABLE
        await wait_for(lambda: server.open == 0, what="the agent to close the connection")
        assert (await origin.get("/httpfiles/x.json", 5.0)).body == b"[]"  # a fresh one works
    finally:
        await origin.close()
        await server.stop()
