"""Which FPVTrackside the agent talks to: told from what its web server answers (it names no
version), against the simulator answering as each version, and from hostile answers."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import pytest

from pitlink_testkit.fpvtrackside import SERVER_HEADER, Simulator
from pits_appliance import upstream
from pits_appliance.origin import Origin
from pits_appliance.state import AgentState
from pits_appliance.status_view import fpvtrackside_row
from pits_appliance.upstream import UpstreamWatch, answers_current, describe, in_words
from wire import messages as m

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def origin(sim: Simulator) -> AsyncIterator[Origin]:
    got = Origin(sim.url)
    yield got
    await got.close()


async def look(sim: Simulator, origin: Origin, event: str | None = "open") -> m.FpvTrackside:
    watch = UpstreamWatch(origin, timeout=5.0)
    reply = await origin.get("/", 5.0)
    changed = await watch.look(
        0.0, event=sim.event_id if event == "open" else event, server=reply.server
    )
    assert changed and watch.seen is not None
    return watch.seen


@pytest.mark.parametrize(
    ("version", "said", "traits"),
    [
        ("2.70", "before 2.71", ("json-untyped",)),
        ("2.71", "2.71 to 2.75", ("json-typed",)),
        ("2.76", "2.76 or later", ("current", "json-typed")),
    ],
)
async def test_each_version_is_told_from_its_answers(
    sim: Simulator, origin: Origin, version: str, said: str, traits: tuple[str, ...]
) -> None:
    sim.version = version
    seen = await look(sim, origin)
    assert seen == m.FpvTrackside(version=said, server=SERVER_HEADER, traits=traits)
    assert in_words(seen) == f"FPVTrackside {said}, on Windows"


async def test_with_no_event_open_only_current_tells(sim: Simulator, origin: Origin) -> None:
    assert (await look(sim, origin, event=None)).version == "before 2.76"
    sim.version = "2.76"
    assert (await look(sim, origin, event=None)).version == "2.76 or later"


async def test_an_event_file_that_is_not_there_tells_nothing(
    sim: Simulator, origin: Origin
) -> None:
    """FPVTrackside answers a missing event file 200 with an empty body and no type."""
    sim.version = "2.71"
    seen = await look(sim, origin, event="00000000-0000-0000-0000-000000000000")
    assert seen.version == "before 2.76" and seen.traits == ()


async def test_the_server_header_names_the_platform(sim: Simulator, origin: Origin) -> None:
    sim.server = "Microsoft-NetCore/2.0"
    seen = await look(sim, origin)
    assert seen.server == "Microsoft-NetCore/2.0"
    assert in_words(seen) == "FPVTrackside before 2.71, on macOS or Linux"
    sim.server = "nginx"
    assert in_words(await look(sim, origin)) == "FPVTrackside before 2.71"


@pytest.mark.parametrize(
    ("header", "shown"),
    [
        ("Microsoft-HTTPAPI/2.0", "Microsoft-HTTPAPI/2.0"),
        ("  spaced  ", "spaced"),
        ("a\x00b\x7fc\u00e9d", "abcd"),  # never a control character or non-ASCII in a log
        ("x" * 10_000, "x" * m.MAX_SERVER),
        ("\x01\x02", None),
        (None, None),
    ],
)
def test_the_server_header_is_cleaned_and_bounded(header: str | None, shown: str | None) -> None:
    assert upstream.server_header(header) == shown
    seen = describe(header, False, None)
    assert m.FpvTrackside.parse(seen.payload()) == seen  # always a frame the relay takes


@pytest.mark.parametrize(
    ("status", "body", "answers"),
    [
        (200, b'{"CurrentRace": null}', True),
        (200, b'{"CurrentRace":"2b8b4f36-2f5a-4d8c-9c4e-6a6c6f1d2e3a"}', True),
        (200, b'\xef\xbb\xbf{"CurrentRace": null}', True),
        (200, b"<!DOCTYPE html><html>...", False),  # an older version's page
        (200, b"", False),
        (200, b'{"CurrentRace": 7}', False),
        (200, b'["CurrentRace"]', False),
        (200, b'{"Other": null}', False),
        (200, b'{"CurrentRace": null, "pad": "' + b"x" * 5000 + b'"}', False),
        (200, b"\xff\xfe", False),
        (200, b"[" * 4096, False),  # the attack: RecursionError out of the check, every time
        (200, b"[" * 4097, False),
        (200, b'{"CurrentRace": ' + b"[" * 900 + b"]" * 900 + b"}", False),
        (404, b'{"CurrentRace": null}', False),
    ],
)
def test_only_fpvtracksides_own_answer_to_current_counts(
    status: int, body: bytes, answers: bool
) -> None:
    assert answers_current(status, body) is answers


def test_the_content_type_of_an_event_file() -> None:
    assert describe(None, False, "application/json; charset=utf-8").version == "2.71 to 2.75"
    assert describe(None, False, "APPLICATION/JSON").version == "2.71 to 2.75"
    assert describe(None, False, "text/json").version == "before 2.71"
    assert describe(None, False, "").version == "before 2.71"


async def test_it_looks_again_only_when_something_may_have_changed(
    sim: Simulator, origin: Origin
) -> None:
    watch = UpstreamWatch(origin, timeout=5.0, reprobe=600.0)
    event, server = sim.event_id, SERVER_HEADER
    assert watch.due(0.0, event=event, server=server)
    await watch.look(0.0, event=event, server=server)
    assert not watch.due(599.0, event=event, server=server)
    assert watch.due(600.0, event=event, server=server)
    assert watch.due(1.0, event=None, server=server)  # another event, or none
    assert watch.due(1.0, event=event, server="Microsoft-NetCore/2.0")
    watch.lost()  # FPVTrackside stopped answering: it may come back upgraded
    assert watch.due(1.0, event=event, server=server)
    await watch.look(1.0, event=event, server=server)
    assert not watch.due(2.0, event=event, server=server)


async def test_an_upgrade_is_logged_once(
    sim: Simulator, origin: Origin, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pitlink.pits.upstream")
    watch = UpstreamWatch(origin, timeout=5.0)
    assert await watch.look(0.0, event=sim.event_id, server=SERVER_HEADER)
    assert not await watch.look(1.0, event=sim.event_id, server=SERVER_HEADER)
    sim.version = "2.76"
    assert await watch.look(2.0, event=sim.event_id, server=SERVER_HEADER)
    lines = [
        (r.getMessage(), getattr(r, "before", None))
        for r in caplog.records
        if r.name == "pitlink.pits.upstream"
    ]
    assert lines == [("FPVTrackside seen", None), ("FPVTrackside changed", "before 2.71")]


async def test_a_failed_look_keeps_what_was_seen() -> None:
    sim = Simulator(seed=3, lap_interval=None)
    await sim.start()
    origin = Origin(sim.url)
    try:
        watch = UpstreamWatch(origin, timeout=5.0)
        await watch.look(0.0, event=sim.event_id, server=SERVER_HEADER)
        before = watch.seen
        await sim.stop()
        assert not await watch.look(1.0, event=sim.event_id, server=SERVER_HEADER)
        assert watch.seen == before
        assert watch.due(2.0, event=sim.event_id, server=SERVER_HEADER)  # it tries again
    finally:
        await origin.close()
        await sim.stop()


def test_the_status_page_says_which_fpvtrackside() -> None:
    state = AgentState(origin_reachable=True, origin_event="e1", origin_event_name="Club night")
    assert fpvtrackside_row(state)["text"] == "Event “Club night” is open."
    state.fpvtrackside = describe(SERVER_HEADER, True, "application/json")
    assert fpvtrackside_row(state)["text"] == (
        "Event “Club night” is open. FPVTrackside 2.76 or later, on Windows."
    )
    state.origin_event = None
    assert fpvtrackside_row(state)["text"].endswith("FPVTrackside 2.76 or later, on Windows.")
