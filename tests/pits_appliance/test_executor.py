"""Executing fetch commands against a simulated FPVTrackside that has all the real one's quirks."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator

import pytest
import tornado.web

from pitlink_testkit.fpvtrackside import Simulator
from pitlink_testkit.loopback import free_port, serving
from pitlink_testkit.waiting import wait_for
from pits_appliance.executor import Executor
from pits_appliance.origin import Origin
from wire import ErrorCode, ProtocolError
from wire.canonical import canonical_json, etag_of
from wire.mediatypes import JSON
from wire.messages import Fetch, Response
from wire.paths import Allowlist


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    simulator = Simulator(seed=1, lap_interval=None)
    await simulator.start(port=0)
    yield simulator
    if simulator.hold is not None:
        simulator.hold.set()
    await simulator.stop()


@pytest.fixture
async def origin(sim: Simulator) -> AsyncIterator[Origin]:
    o = Origin(sim.url)
    yield o
    await o.close()


@pytest.fixture
def executor(origin: Origin) -> Executor:
    return Executor(origin, Allowlist(), fetch_timeout=5.0)


def get(path: str, *, method: str = "GET", etag: str | None = None, ms: int = 5000) -> Fetch:
    return Fetch(method=method, path=path, timeout_ms=ms, if_none_match=etag)


async def refused(executor: Executor, fetch: Fetch) -> ErrorCode:
    with pytest.raises(ProtocolError) as caught:
        await executor.execute(fetch)
    return caught.value.code


def canonical_file(sim: Simulator, path: str) -> bytes:
    return canonical_json(json.loads((sim.root / path.lstrip("/")).read_bytes()))


async def test_json_200_with_canonical_body_and_etag(executor: Executor, sim: Simulator) -> None:
    path = f"{sim.event_path}/Event.json"
    raw = (sim.root / path.lstrip("/")).read_bytes()
    reply = await executor.execute(get(path))
    expected = canonical_file(sim, path)
    assert reply.status == 200
    assert reply.body == expected
    assert reply.body != raw  # FPVTrackside's CRLF-indented file is re-encoded
    assert reply.etag == etag_of(expected)
    assert reply.content_type == JSON


async def test_same_data_same_etag(executor: Executor, sim: Simulator) -> None:
    path = "/httpfiles/Channels.json"
    first = await executor.execute(get(path))
    # Rewritten with other whitespace: the same data keeps its ETag.
    file = sim.root / path.lstrip("/")
    file.write_bytes(json.dumps(json.loads(file.read_bytes())).encode())
    second = await executor.execute(get(path))
    assert second.etag == first.etag
    assert second.body == first.body


async def test_304_when_if_none_match_matches(executor: Executor, sim: Simulator) -> None:
    path = f"{sim.event_path}/Pilots.json"
    etag = (await executor.execute(get(path))).etag
    assert etag is not None
    reply = await executor.execute(get(path, etag=etag))
    assert reply == Response(status=304, etag=etag)
    assert reply.body is None
    other = await executor.execute(get(path, etag=etag_of(b"[]")))
    assert (other.status, other.etag) == (200, etag)
    assert other.body is not None


async def test_head_has_the_etag_but_no_body(executor: Executor, sim: Simulator) -> None:
    path = f"{sim.event_path}/Rounds.json"
    full = await executor.execute(get(path))
    head = await executor.execute(get(path, method="HEAD"))
    assert head.status == 200
    assert head.body is None
    assert head.etag == full.etag
    assert head.content_type == JSON
    assert sim.request_log[-1][0] == "GET"  # the origin is always asked with GET


async def test_non_json_path_hashed_as_raw_bytes(executor: Executor, sim: Simulator) -> None:
    reply = await executor.execute(get("/"))
    assert reply.status == 200
    assert reply.body is not None and b"<html" in reply.body.lower()
    assert reply.etag == etag_of(reply.body)
    assert reply.content_type is not None and reply.content_type.startswith("text/html")


async def test_html_fallback_for_a_missing_json_file_is_bad_content(
    executor: Executor, sim: Simulator
) -> None:
    assert await refused(executor, get("/httpfiles/Missing.json")) == ErrorCode.BAD_CONTENT


async def test_half_written_file_is_bad_content(executor: Executor, sim: Simulator) -> None:
    path = sim.race_path()
    assert (await executor.execute(get(path))).status == 200
    sim.half_written.add(path)
    assert await refused(executor, get(path)) == ErrorCode.BAD_CONTENT


async def test_missing_event_file_is_an_empty_array(executor: Executor, sim: Simulator) -> None:
    path = f"{sim.event_path}/Results.json"
    assert not (sim.root / path.lstrip("/")).exists()
    reply = await executor.execute(get(path))
    assert (reply.status, reply.body, reply.etag) == (200, b"[]", etag_of(b"[]"))
    assert reply.content_type == JSON


@pytest.mark.parametrize("path", ["/secret.txt", "/Windows/win.ini", "/eventsX/a.json"])
async def test_path_outside_the_allowlist_is_denied(
    executor: Executor, sim: Simulator, path: str
) -> None:
    before = sim.requests_total
    assert await refused(executor, get(path)) == ErrorCode.DENIED
    assert sim.requests_total == before


async def test_narrower_allowlist(origin: Origin, sim: Simulator) -> None:
    executor = Executor(origin, Allowlist(["/events/**"]))
    assert (await executor.execute(get(f"{sim.event_path}/Event.json"))).status == 200
    assert await refused(executor, get("/httpfiles/Channels.json")) == ErrorCode.DENIED


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS"])
async def test_other_methods_are_denied(executor: Executor, sim: Simulator, method: str) -> None:
    before = sim.requests_total
    assert await refused(executor, get("/", method=method)) == ErrorCode.DENIED
    assert sim.requests_total == before


@pytest.mark.parametrize(
    "path",
    [
        "/events/../../etc/passwd",
        "/httpfiles/%2e%2e/%2e%2e/secret",
        "/events/..",
        "/events/%252e%252e/x",
        "/events\\..\\x",
    ],
)
async def test_traversal_is_a_bad_request(executor: Executor, sim: Simulator, path: str) -> None:
    before = sim.requests_total
    assert await refused(executor, get(path)) == ErrorCode.BAD_REQUEST
    assert sim.requests_total == before
    assert sim.traversals == []


async def test_stopped_origin_is_unreachable_after_one_retry(
    caplog: pytest.LogCaptureFixture,
) -> None:
    dead = Simulator(seed=2, lap_interval=None)
    await dead.start(port=0)
    url = dead.url
    await dead.stop()
    caplog.set_level(logging.INFO, logger="pitlink.pits.origin")
    origin = Origin(url)
    try:
        executor = Executor(origin, Allowlist())
        assert await refused(executor, get("/httpfiles/Channels.json")) == (
            ErrorCode.ORIGIN_UNREACHABLE
        )
    finally:
        await origin.close()
    retries = [r for r in caplog.records if "retrying" in r.getMessage()]
    assert len(retries) == 1


async def test_a_connection_refused_twice_is_unreachable() -> None:
    origin = Origin(f"http://127.0.0.1:{free_port()}")
    try:
        started = time.monotonic()
        assert await refused(Executor(origin, Allowlist()), get("/")) == (
            ErrorCode.ORIGIN_UNREACHABLE
        )
        assert time.monotonic() - started < 3.0  # not a timeout in disguise
    finally:
        await origin.close()


async def _dropping_origin(read_request: bool) -> tuple[asyncio.Server, list[int]]:
    """A server that accepts and closes every connection without an answer; counts them."""
    accepted: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(1)
        if read_request:
            await reader.readuntil(b"\r\n\r\n")
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, accepted


async def test_a_connection_dropped_at_once_is_retried_once() -> None:
    server, accepted = await _dropping_origin(read_request=False)
    port = server.sockets[0].getsockname()[1]
    origin = Origin(f"http://127.0.0.1:{port}")
    try:
        assert await refused(Executor(origin, Allowlist()), get("/")) == (
            ErrorCode.ORIGIN_UNREACHABLE
        )
        assert len(accepted) == 2
    finally:
        await origin.close()
        server.close()
        await server.wait_closed()


async def test_a_request_dropped_without_an_answer_is_unreachable_not_timeout() -> None:
    server, _ = await _dropping_origin(read_request=True)
    port = server.sockets[0].getsockname()[1]
    origin = Origin(f"http://127.0.0.1:{port}")
    try:
        assert await refused(Executor(origin, Allowlist()), get("/")) == (
            ErrorCode.ORIGIN_UNREACHABLE
        )
    finally:
        await origin.close()
        server.close()
        await server.wait_closed()


async def test_held_origin_times_out(executor: Executor, sim: Simulator) -> None:
    sim.hold = asyncio.Event()
    try:
        started = time.monotonic()
        code = await refused(executor, get(f"{sim.event_path}/Event.json", ms=300))
        elapsed = time.monotonic() - started
        assert code == ErrorCode.TIMEOUT
        assert 0.25 <= elapsed < 2.0  # the command's own deadline, not the 5 s default
    finally:
        sim.hold.set()


@pytest.mark.parametrize("size", [64 * 1024 + 1, 64 * 1024 * 1024])
async def test_body_over_the_cap_is_too_large(sim: Simulator, size: int) -> None:
    cap = 64 * 1024
    path = f"{sim.event_path}/Event.json"
    sim.huge[path] = size
    origin = Origin(sim.url, max_body_bytes=cap)
    try:
        started = time.monotonic()
        assert await refused(Executor(origin, Allowlist()), get(path)) == ErrorCode.TOO_LARGE
        assert time.monotonic() - started < 2.0  # stopped at the cap, not read to the end
    finally:
        await origin.close()


async def test_body_at_the_cap_is_served(sim: Simulator) -> None:
    cap = 64 * 1024
    sim.huge["/httpfiles/big.bin"] = cap
    origin = Origin(sim.url, max_body_bytes=cap)
    try:
        reply = await Executor(origin, Allowlist()).execute(get("/httpfiles/big.bin"))
        assert reply.status == 200
        assert reply.body is not None and len(reply.body) == cap
        assert reply.etag == etag_of(reply.body)
    finally:
        await origin.close()


class _Hostile(tornado.web.RequestHandler):
    """Whatever sits at FPVTrackside's address on the venue LAN: any status, always HTML.

    `/httpfiles/<status>/<name>` answers that status; any other path answers 200.
    """

    def get(self) -> None:
        parts = self.request.path.split("/")
        status = int(parts[2]) if len(parts) > 3 and parts[2].isdigit() else 200
        self.set_status(status)
        # `/httpfiles/longtype/...`: a Content-Type of 10,000 characters.
        self.set_header(
            "Content-Type", "text/html" + ("; x=" + "y" * 10_000) * ("longtype" in parts)
        )
        if status not in (204, 304):
            self.write("<script>alert(document.domain)</script>")
        self.finish()


@pytest.fixture
async def hostile() -> AsyncIterator[str]:
    async with serving(_Hostile) as url:
        yield url


@pytest.mark.parametrize("status", [201, 204, 301, 302, 307])
async def test_origin_status_the_relay_cannot_serve_is_bad_content(
    hostile: str, status: int
) -> None:
    origin = Origin(hostile)
    try:
        with pytest.raises(ProtocolError) as caught:
            await Executor(origin, Allowlist()).execute(get(f"/httpfiles/{status}/x.js"))
        assert caught.value.code == ErrorCode.BAD_CONTENT
        assert str(status) in caught.value.message
    finally:
        await origin.close()


async def test_content_type_follows_the_path_not_the_origin(hostile: str) -> None:
    origin = Origin(hostile)
    executor = Executor(origin, Allowlist(["/**"]))
    try:
        for path, expected in [
            ("/httpfiles/app.js", "text/javascript; charset=utf-8"),
            ("/httpfiles/logo.png", "image/png"),
            ("/httpfiles/mystery", "application/octet-stream"),
        ]:
            reply = await executor.execute(get(path))
            assert reply.content_type == expected
        missing = await executor.execute(get("/httpfiles/404/gone.css"))
        assert (missing.status, missing.content_type) == (404, "text/css; charset=utf-8")
    finally:
        await origin.close()


async def test_the_origins_content_type_in_a_log_line_is_bounded(
    hostile: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="pitlink.pits.fetch")
    origin = Origin(hostile)
    try:
        code = await refused(Executor(origin, Allowlist()), get("/httpfiles/longtype/x.json"))
        assert code is ErrorCode.BAD_CONTENT
    finally:
        await origin.close()
    logged = [r.origin_type for r in caplog.records if hasattr(r, "origin_type")]
    assert len(logged) == 2 and all(t.startswith("text/html") for t in logged)
    assert max(len(t) for t in logged) <= 200


async def test_identical_fetches_in_flight_share_one_origin_request(
    executor: Executor, sim: Simulator
) -> None:
    path = f"{sim.event_path}/Event.json"
    sim.hold = asyncio.Event()
    tasks = [asyncio.ensure_future(executor.execute(get(path))) for _ in range(3)]
    await wait_for(lambda: sim.in_flight == 1, what="the first request to reach the origin")
    sim.hold.set()
    replies = await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert {r.etag for r in replies} == {etag_of(canonical_file(sim, path))}
    assert sim.requests_total == 1


# -- unchanged bodies: the ETag from a digest of the bytes, without decoding them again ---------


def count_prepares(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    from pits_appliance import executor as executor_module

    calls: list[str] = []
    real = executor_module.prepare_body

    def counting(path: str, body: bytes) -> tuple[bytes, str]:
        calls.append(path)
        return real(path, body)

    monkeypatch.setattr(executor_module, "prepare_body", counting)
    return calls


async def test_an_unchanged_file_is_revalidated_without_decoding_it(
    executor: Executor, sim: Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = count_prepares(monkeypatch)
    path = f"{sim.event_path}/Pilots.json"
    etag = (await executor.execute(get(path))).etag
    for _ in range(3):
        assert await executor.execute(get(path, etag=etag)) == Response(status=304, etag=etag)
    assert calls == [path]
    # The relay without a copy (another ETag, or none) gets the whole body, decoded anew.
    full = await executor.execute(get(path, etag=etag_of(b"[]")))
    assert (full.status, full.etag, full.body) == (200, etag, canonical_file(sim, path))
    assert calls == [path, path]


async def test_a_rewritten_file_is_decoded_again_and_keeps_its_etag_if_the_data_did(
    executor: Executor, sim: Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = count_prepares(monkeypatch)
    path = "/httpfiles/Channels.json"
    etag = (await executor.execute(get(path))).etag
    file = sim.root / path.lstrip("/")
    data = json.loads(file.read_bytes())
    file.write_bytes(json.dumps(data).encode())  # other whitespace, same data
    assert await executor.execute(get(path, etag=etag)) == Response(status=304, etag=etag)
    assert len(calls) == 2
    data[0]["Frequency"] = 1234  # new data
    file.write_bytes(json.dumps(data).encode())
    changed = await executor.execute(get(path, etag=etag))
    assert changed.status == 200 and changed.etag != etag
    assert changed.body == canonical_json(data)
    assert len(calls) == 3


async def test_a_half_written_file_is_never_remembered(executor: Executor, sim: Simulator) -> None:
    path = "/httpfiles/Channels.json"
    file = sim.root / path.lstrip("/")
    good = file.read_bytes()
    file.write_bytes(good[: len(good) // 2])
    assert await refused(executor, get(path)) is ErrorCode.BAD_CONTENT
    assert len(executor.known) == 0
    file.write_bytes(good)
    assert (await executor.execute(get(path))).status == 200


def test_known_bodies_are_bounded() -> None:
    from pits_appliance.executor import KnownBodies

    known = KnownBodies(max_paths=3)
    for n in range(5):
        known.remember(f"/p{n}.json", KnownBodies.digest(b"%d" % n), f'"e{n}"')
        assert len(known) <= 3
    assert known.etag("/p0.json", KnownBodies.digest(b"0")) is None  # forgotten first
    assert known.etag("/p4.json", KnownBodies.digest(b"4")) == '"e4"'
    assert known.etag("/p4.json", KnownBodies.digest(b"other")) is None
