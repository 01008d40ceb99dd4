"""The FPVTrackside simulator reproduces the real web server's quirks, over real sockets.

Most tests speak raw HTTP/1.1 so that paths reach the server unnormalized and every header the
server sends (or does not send) is visible.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import logging
import os
import re
import signal
import sys
import time
import urllib.parse
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from tornado.httpclient import AsyncHTTPClient

from pitlink_testkit.fpvtrackside import EVENT_RE, NULL_DATE, Simulator, format_date
from pitlink_testkit.waiting import wait_for

pytestmark = pytest.mark.timeout(20)

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "fpvtrackside_sim.py"
DATE_RE = re.compile(r"^\d{4}/\d{2}/\d{2} \d{1,2}:\d{2}:\d{2}(\.\d{0,2}[1-9])?$")
DATE_VALUE_RE = re.compile(rb'"(\d{4}/[^"]*)"')


@dataclasses.dataclass
class Reply:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k == name.lower()]
        assert len(values) <= 1, f"{name} sent {len(values)} times"
        return values[0] if values else None


async def read_reply(reader: asyncio.StreamReader, method: str = "GET") -> Reply:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as e:
        raise ConnectionError(f"closed without a reply ({len(e.partial)} bytes)") from e
    status_line, *lines = head.decode("latin-1").rstrip("\r\n").split("\r\n")
    headers = [(k.strip().lower(), v.strip()) for k, _, v in (h.partition(":") for h in lines)]
    reply = Reply(int(status_line.split()[1]), headers, b"")
    length = int(reply.header("content-length") or 0)
    if method != "HEAD":
        reply.body = await reader.readexactly(length)
    return reply


@contextlib.asynccontextmanager
async def connection(
    port: int,
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def request(
    port: int, path: str, method: str = "GET", headers: tuple[str, ...] = (), body: bytes = b""
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", *headers]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


async def fetch(
    port: int, path: str, method: str = "GET", headers: tuple[str, ...] = (), body: bytes = b""
) -> Reply:
    """One request on a fresh connection, the path sent exactly as given."""
    async with connection(port) as (reader, writer):
        writer.write(request(port, path, method, headers, body))
        await writer.drain()
        return await asyncio.wait_for(read_reply(reader, method), timeout=10)


def port_of(sim: Simulator) -> int:
    port = urllib.parse.urlsplit(sim.url).port
    assert port is not None
    return port


def snapshot(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def walk(value: object) -> Iterator[dict[str, object]]:
    if isinstance(value, dict):
        yield value
        value = list(value.values())
    if isinstance(value, list):
        for item in value:
            yield from walk(item)


@pytest.fixture(autouse=True)
def no_error_logs(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """An unexpected traceback or error in the logs fails the test."""
    yield
    records = caplog.get_records("call") + caplog.get_records("teardown")
    errors = [r.getMessage() for r in records if r.levelno >= logging.ERROR]
    assert not errors


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(seed=1, lap_interval=None) as running:
        yield running


@pytest.fixture
def web_root(tmp_path: Path) -> Path:
    """A small web root with a harmless file beside it for traversals to reach."""
    (tmp_path / "secret.txt").write_bytes(b"outside the web root")
    root = tmp_path / "web"
    event = root / "events" / "0a1b2c3d-0000-4000-8000-000000000001"
    event.mkdir(parents=True)
    (event / "Event.json").write_bytes(b'[\r\n  {\r\n    "Name": "tiny"\r\n  }\r\n]')
    (root / "httpfiles").mkdir()
    (root / "httpfiles" / "index.html").write_text(
        '<script>new EventManager("%eventDirectory%");</script>'
    )
    return root


# --- the real server's quirks ---------------------------------------------------------------


async def test_root_page_names_the_event(sim: Simulator) -> None:
    reply = await fetch(port_of(sim), "/")
    assert reply.status == 200
    assert reply.header("content-type") == "text/html"
    page = reply.body.decode()
    assert "%eventDirectory%" not in page
    match = EVENT_RE.search(page)
    assert match and match.group(1) == sim.event_id
    # The real server substitutes in every index.html it serves, not only at "/".
    direct = await fetch(port_of(sim), "/httpfiles/index.html")
    assert direct.body == reply.body


async def test_event_files_have_no_content_type(sim: Simulator) -> None:
    for name in ("Event.json", "Pilots.json", "Rounds.json"):
        reply = await fetch(port_of(sim), f"{sim.event_path}/{name}")
        assert reply.status == 200
        assert reply.header("content-type") is None
        assert reply.body == (sim.root / "events" / sim.event_id / name).read_bytes()
    race = await fetch(port_of(sim), sim.race_path())
    assert race.header("content-type") is None
    assert json.loads(race.body)[0]["ID"] == sim.current_race_id


async def test_missing_event_file_is_an_empty_200(sim: Simulator) -> None:
    for path in (f"{sim.event_path}/Results.json", f"{sim.event_path}/nope/Race.json"):
        reply = await fetch(port_of(sim), path)
        assert (reply.status, reply.body, reply.header("content-length")) == (200, b"", "0")
        assert reply.header("content-type") is None


async def test_unknown_paths_get_index_html_with_200(sim: Simulator) -> None:
    index = (await fetch(port_of(sim), "/")).body
    for path in ("/nope.json", "/RaceControl", "/events", f"{sim.event_path}/NoDot", "/a/b/c"):
        reply = await fetch(port_of(sim), path)
        assert (reply.status, reply.header("content-type")) == (200, "text/html"), path
        assert reply.body == index, path


async def test_other_files_are_typed_by_extension(sim: Simulator) -> None:
    reply = await fetch(port_of(sim), "/httpfiles/Channels.json")
    assert reply.header("content-type") == "text/json"
    assert reply.body == (sim.root / "httpfiles" / "Channels.json").read_bytes()


async def test_cors_header_everywhere_and_never_a_validator_or_304(sim: Simulator) -> None:
    conditional = ('If-None-Match: "*"', "If-Modified-Since: Wed, 21 Oct 2099 07:28:00 GMT")
    paths = ("/", f"{sim.event_path}/Event.json", f"{sim.event_path}/Results.json", "/x")
    for path in paths:
        first = await fetch(port_of(sim), path)
        again = await fetch(port_of(sim), path, headers=conditional)
        for reply in (first, again):
            assert reply.status == 200
            assert reply.header("access-control-allow-origin") == "*"
            assert reply.header("etag") is None
            assert reply.header("last-modified") is None
        assert again.body == first.body


async def test_every_method_gets_the_get_answer(sim: Simulator) -> None:
    port, path = port_of(sim), f"{sim.event_path}/Event.json"
    expected = (await fetch(port, path)).body
    bad_form = ("Content-Type: multipart/form-data",)  # no boundary: Tornado alone would 400
    for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS", "BREW"):
        reply = await fetch(port, path, method, headers=bad_form, body=b"--x\r\n")
        assert (reply.status, reply.body) == (200, expected), method
        assert reply.header("access-control-allow-origin") == "*"
    head = await fetch(port, path, "HEAD")
    assert head.status == 200
    assert head.header("content-length") == str(len(expected))
    assert head.header("content-type") is None
    options = await fetch(port, path, "OPTIONS")
    assert options.header("access-control-allow-methods") == "GET, POST"
    assert ("BREW", path) in sim.request_log


async def test_keep_alive_serves_several_requests_on_one_connection(sim: Simulator) -> None:
    port = port_of(sim)
    async with connection(port) as (reader, writer):
        for path in ("/", f"{sim.event_path}/Event.json", f"{sim.event_path}/Results.json"):
            writer.write(request(port, path))
            reply = await asyncio.wait_for(read_reply(reader), timeout=5)
            assert reply.status == 200
            assert reply.header("connection") != "close"


async def test_an_idle_connection_is_closed_after_the_idle_timeout(fixtures_root: Path) -> None:
    sim = Simulator(root=fixtures_root, idle_timeout=0.2)
    port = await sim.start()
    try:
        assert sim.idle_timeout == 0.2
        assert Simulator(root=fixtures_root).idle_timeout == 120.0  # http.sys's IdleConnection
        async with connection(port) as (reader, writer):
            writer.write(request(port, "/httpfiles/Channels.json"))
            assert (await asyncio.wait_for(read_reply(reader), timeout=5)).status == 200
            assert (sim.connections_total, sim.connections_open) == (1, 1)
            assert await asyncio.wait_for(reader.read(), timeout=5) == b""  # closed by the sim
        await wait_for(lambda: sim.connections_open == 0, what="the connection to close")
        assert sim.connections_total == 1
    finally:
        await sim.stop()


async def test_json_is_indented_crlf_with_fpvtrackside_dates(sim: Simulator) -> None:
    for _ in range(20):  # past the end of the first race, so Results.json exists too
        sim.advance()
    files = sorted(sim.root.rglob("*.json"))
    assert any(f.name == "Results.json" for f in files)
    dates: list[str] = []
    for file in files:
        body = (await fetch(port_of(sim), "/" + file.relative_to(sim.root).as_posix())).body
        assert body == file.read_bytes()
        assert body.startswith(b'[\r\n  {\r\n    "')
        assert body.count(b"\n") == body.count(b"\r\n") > 0
        assert not body.endswith(b"\n")
        dates += [d.decode() for d in DATE_VALUE_RE.findall(body)]
    assert dates
    assert [d for d in dates if not DATE_RE.match(d)] == []
    assert any("." in d for d in dates)
    assert NULL_DATE in dates


def test_format_date_matches_dotnet_custom_format() -> None:
    assert format_date(dt.datetime(2025, 1, 29, 19, 11, 9, 494_000)) == "2025/01/29 19:11:09.494"
    assert format_date(dt.datetime(2025, 1, 29, 19, 21, 16, 290_999)) == "2025/01/29 19:21:16.29"
    assert format_date(dt.datetime(2025, 1, 29, 9, 5, 7, 500)) == "2025/01/29 9:05:07"
    assert format_date(dt.datetime(2025, 1, 29)) == "2025/01/29 0:00:00"
    assert format_date(dt.datetime.min) == NULL_DATE


async def test_dot_dot_leaves_the_root_and_is_recorded(web_root: Path) -> None:
    secret = (web_root.parent / "secret.txt").read_bytes()
    escaping = (
        "/events/../../secret.txt",
        "/httpfiles/%2e%2e/%2E%2E/secret.txt",
        "/..%2fsecret.txt",
    )
    async with Simulator(root=web_root) as sim:
        inside = await fetch(port_of(sim), f"{sim.event_path}/Event.json")
        assert inside.body.startswith(b"[")
        for path in escaping:
            reply = await fetch(port_of(sim), path)
            assert (reply.status, reply.body) == (200, secret), path
            assert reply.header("content-type") is None
        assert sim.traversals == list(escaping)
        assert [p for _, p in sim.request_log] == [f"{sim.event_path}/Event.json", *escaping]


async def test_root_mode_reads_files_fresh(web_root: Path) -> None:
    async with Simulator(root=web_root) as sim:
        event = web_root / "events" / sim.event_id / "Event.json"
        path = f"{sim.event_path}/Event.json"
        assert (await fetch(port_of(sim), path)).body == event.read_bytes()
        event.write_bytes(b'[\r\n  {\r\n    "Name": "renamed"\r\n  }\r\n]')
        assert b"renamed" in (await fetch(port_of(sim), path)).body
        event.unlink()
        assert (await fetch(port_of(sim), path)).body == b""


# --- one request at a time and the test switches --------------------------------------------


async def test_slow_requests_are_served_one_at_a_time(sim: Simulator) -> None:
    sim.slow = 0.1
    url = f"{sim.url}{sim.event_path}/Event.json"
    client = AsyncHTTPClient(force_instance=True, max_clients=10)
    try:
        started = time.monotonic()
        replies = await asyncio.gather(*(client.fetch(url) for _ in range(4)))
        elapsed = time.monotonic() - started
    finally:
        client.close()
    assert [r.code for r in replies] == [200] * 4
    assert len({r.body for r in replies}) == 1
    assert sim.requests_total == 4
    assert sim.max_in_flight == 1
    assert elapsed >= 4 * sim.slow  # each waited for the one before it


async def test_hold_piles_requests_up_behind_the_first(sim: Simulator) -> None:
    sim.hold = asyncio.Event()
    paths = ["/", f"{sim.event_path}/Event.json", f"{sim.event_path}/Pilots.json"]
    tasks = [asyncio.create_task(fetch(port_of(sim), p)) for p in paths]
    try:
        await wait_for(
            lambda: sim.requests_total == 3 and sim.queued == 2,
            what="requests to queue",
            timeout=5.0,
            interval=0.002,
        )
        assert sim.in_flight == 1
        assert not any(t.done() for t in tasks)
    finally:
        sim.hold.set()
        replies = await asyncio.gather(*tasks)
    assert [r.status for r in replies] == [200] * 3
    assert replies[1].body == (sim.root / "events" / sim.event_id / "Event.json").read_bytes()
    assert (sim.in_flight, sim.queued, sim.max_in_flight) == (0, 0, 1)
    assert sim.max_open == 3


async def test_half_written_file_is_invalid_json(sim: Simulator) -> None:
    path = f"{sim.event_path}/Event.json"
    full = (await fetch(port_of(sim), path)).body
    sim.half_written.add(path)
    half = (await fetch(port_of(sim), path)).body
    assert half == full[: len(full) // 2]
    with pytest.raises(ValueError):
        json.loads(half)
    sim.half_written.clear()
    assert (await fetch(port_of(sim), path)).body == full


async def test_huge_streams_exactly_n_bytes(sim: Simulator) -> None:
    path, size = f"{sim.event_path}/Event.json", 3 * 64 * 1024 + 123
    sim.huge[path] = size
    reply = await fetch(port_of(sim), path)
    assert (reply.status, len(reply.body), reply.header("content-length")) == (200, size, str(size))
    assert reply.body.startswith(b'[ {"Filler": "pitlink-sim-padding-')
    lines = reply.body.split(b"\r\n")
    assert len(set(lines[1:-1])) == 1 and lines[1].startswith(b'  {"Filler": ')
    assert reply.header("content-type") is None
    head = await fetch(port_of(sim), path, "HEAD")
    assert (head.body, head.header("content-length")) == (b"", str(size))


async def test_client_leaving_a_huge_reply_frees_the_server(sim: Simulator) -> None:
    path, port = f"{sim.event_path}/Event.json", port_of(sim)
    sim.huge[path] = 256 * 1024 * 1024
    async with connection(port) as (reader, writer):
        writer.write(request(port, path))
        await reader.readuntil(b"\r\n\r\n")
        await reader.readexactly(64 * 1024)
    await wait_for(
        lambda: sim.in_flight == 0,
        what="the abandoned reply to end",
        timeout=5.0,
        interval=0.002,
    )
    sim.huge.clear()
    assert (await fetch(port, path)).status == 200


# --- the generated live event ---------------------------------------------------------------


async def test_advance_grows_the_race_then_writes_results(sim: Simulator) -> None:
    port, race_id, path = port_of(sim), sim.current_race_id, sim.race_path()
    results_path = f"{sim.event_path}/Results.json"
    race = json.loads((await fetch(port, path)).body)[0]
    assert (race["Laps"], race["End"]) == ([], NULL_DATE)
    assert race["Start"] != NULL_DATE
    assert (await fetch(port, results_path)).body == b""
    sizes, steps = [len((await fetch(port, path)).body)], 0
    while sim.races_finished == 0:
        assert (await fetch(port, results_path)).body == b""
        sim.advance()
        steps += 1
        body = (await fetch(port, path)).body
        assert len(json.loads(body)[0]["Laps"]) == steps
        sizes.append(len(body))
    assert sizes == sorted(set(sizes))  # grew with every detection

    race = json.loads((await fetch(port, path)).body)[0]
    pilots = {pc["Pilot"] for pc in race["PilotChannels"]}
    assert steps == len(pilots) * (race["TargetLaps"] + 1)  # holeshot, then TargetLaps laps
    assert race["End"] != NULL_DATE
    detections = {d["ID"]: d for d in race["Detections"]}
    assert {lap["Detection"] for lap in race["Laps"]} == set(detections)
    finishers = {d["Pilot"] for d in detections.values() if d["LapNumber"] == race["TargetLaps"]}
    assert finishers == pilots

    results = json.loads((await fetch(port, results_path)).body)
    assert sorted(r["Position"] for r in results) == list(range(1, len(pilots) + 1))
    assert {r["Pilot"] for r in results} == pilots
    assert {r["Race"] for r in results} == {race_id}

    assert sim.current_race_id != race_id
    following = json.loads((await fetch(port, sim.race_path())).body)[0]
    assert (following["Laps"], following["End"]) == ([], NULL_DATE)
    assert following["Start"] != NULL_DATE


async def test_background_task_advances_the_live_race() -> None:
    async with Simulator(seed=2, lap_interval=0.01) as sim:
        port, path = port_of(sim), sim.race_path()
        laps: list[object] = []
        deadline = time.monotonic() + 5
        while len(laps) < 3:
            assert time.monotonic() < deadline, "the live race did not advance"
            laps = json.loads((await fetch(port, path)).body)[0]["Laps"]
            await asyncio.sleep(0.01)


async def test_generation_is_deterministic_for_a_seed() -> None:
    a, b, c = (Simulator(seed=s, lap_interval=None) for s in (7, 7, 8))
    try:
        for generated in (a, b, c):
            for _ in range(30):
                generated.advance()
        assert a.event_id == b.event_id != c.event_id
        assert snapshot(a.root) == snapshot(b.root)
        assert snapshot(a.root) != snapshot(c.root)
        assert any(name.endswith("Results.json") for name in snapshot(a.root))
    finally:
        for generated in (a, b, c):
            await generated.stop()
    assert not any(generated.root.exists() for generated in (a, b, c))


async def test_generated_event_is_realistic() -> None:
    async with Simulator(seed=11, lap_interval=None, pilots=6) as sim:
        event_dir = sim.root / "events" / sim.event_id
        event = json.loads((event_dir / "Event.json").read_bytes())[0]
        pilots = json.loads((event_dir / "Pilots.json").read_bytes())
        channels = json.loads((sim.root / "httpfiles" / "Channels.json").read_bytes())
        assert len(pilots) == event["PilotsRegistered"] == 6
        assert len({p["Name"] for p in pilots}) == 6
        assert len(set(event["Channels"])) == 6
        assert set(event["Channels"]) <= {c["ID"] for c in channels}
        assert len(json.loads((event_dir / "Rounds.json").read_bytes())) == len(event["Rounds"])
        for race_id in event["Races"]:
            race = json.loads((event_dir / race_id / "Race.json").read_bytes())[0]
            assert race["Event"] == sim.event_id and race["Round"] in event["Rounds"]
            assert race["TargetLaps"] == event["Laps"]
            heat = race["PilotChannels"]
            assert 0 < len(heat) == len({pc["Channel"] for pc in heat}) <= 4


async def test_generated_files_have_the_fixture_field_names(fixtures_root: Path) -> None:
    real_event = next((fixtures_root / "events").iterdir())
    real_races = [json.loads(p.read_bytes())[0] for p in real_event.glob("*/Race.json")]
    real_race = max(real_races, key=lambda r: len(r["Laps"]))
    sim = Simulator(seed=5, lap_interval=None)
    try:
        for _ in range(3):
            sim.advance()
        event_dir = sim.root / "events" / sim.event_id
        race = json.loads((sim.root / sim.race_path().lstrip("/")).read_bytes())[0]

        def first(path: Path) -> list[str]:
            return list(json.loads(path.read_bytes())[0])

        for name in ("Event.json", "Pilots.json", "Rounds.json"):
            assert first(event_dir / name) == first(real_event / name), name
        channels = "httpfiles/Channels.json"
        assert first(sim.root / channels) == first(fixtures_root / channels)
        assert list(race) == list(real_race)
        for key in ("Laps", "Detections", "PilotChannels"):
            assert list(race[key][0]) == list(real_race[key][0]), key
    finally:
        await sim.stop()


async def test_serves_the_real_fixture_event(fixtures_root: Path) -> None:
    event_dir = next((fixtures_root / "events").iterdir())
    async with Simulator(root=fixtures_root) as sim:
        port = port_of(sim)
        match = EVENT_RE.search((await fetch(port, "/")).body.decode())
        assert match and match.group(1) == event_dir.name == sim.event_id
        files = sorted(event_dir.rglob("*.json"))
        assert len(files) > 3
        for file in files:
            reply = await fetch(port, "/" + file.relative_to(fixtures_root).as_posix())
            assert reply.body == file.read_bytes(), file
            assert reply.header("content-type") is None
        assert (await fetch(port, f"{sim.event_path}/Results.json")).body == b""
        channels = await fetch(port, "/httpfiles/Channels.json")
        assert channels.header("content-type") == "text/json"
        assert channels.body == (fixtures_root / "httpfiles" / "Channels.json").read_bytes()
        assert sim.current_race_id is None
        with pytest.raises(RuntimeError):
            sim.advance()
        assert sim.traversals == []
    assert (event_dir / "Event.json").is_file()  # stop() never touches a served root


# --- lifecycle and command line -------------------------------------------------------------


async def test_stop_cuts_held_requests_and_removes_the_event() -> None:
    sim = Simulator(seed=4, lap_interval=0.5)
    port = await sim.start()
    sim.hold = asyncio.Event()
    held = [asyncio.create_task(fetch(port, "/")) for _ in range(2)]
    try:
        await wait_for(
            lambda: sim.in_flight == 1 and sim.queued == 1,
            what="requests to pile up",
            timeout=5.0,
            interval=0.002,
        )
    finally:
        await asyncio.wait_for(sim.stop(), timeout=5)
        outcomes = await asyncio.gather(*held, return_exceptions=True)
    assert not sim.root.exists()
    assert [type(o) for o in outcomes] == [ConnectionError] * 2  # cut off, never answered
    assert (sim.in_flight, sim.queued) == (0, 0)
    with pytest.raises(OSError):
        await fetch(port, "/")


async def test_command_line_serves_until_sigterm() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(SCRIPT),
        "--port=0",
        "--seed=9",
        "--lap-interval=0.05",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), timeout=15)).decode()
        match = re.search(r"serving http://127\.0\.0\.1:(\d+)/ \(web root (.+)\) event (\S+)", line)
        assert match, line
        port, root, event_id = int(match.group(1)), match.group(2), match.group(3)
        page = (await fetch(port, "/")).body.decode()
        found = EVENT_RE.search(page)
        assert found and found[1] == event_id
        assert await asyncio.to_thread(os.path.isdir, root)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(proc.communicate(), timeout=15)
    assert proc.returncode == 0, stderr.decode()
    assert b"Traceback" not in stderr
    assert not await asyncio.to_thread(os.path.exists, root)
