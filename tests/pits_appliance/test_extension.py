"""The box as FPVTrackside's Extension: the simulator's ExtensionMode PUTs its events to the
box's status port, which answers at once, forwards them cleaned to a relay that takes pushes (a
double of the relay's WebSocket) and has the race read again; only FPVTrackside may send, a
bounded body, within a rate."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import tornado.httpclient

from pitlink_testkit.fpvtrackside import Simulator
from pitlink_testkit.relaydouble import NEW_RELAY, RelayDouble, box_and_double, newest
from pitlink_testkit.system import System
from pitlink_testkit.waiting import wait_for
from pits_appliance.agent import Agent
from pits_appliance.extension import PATH, Sequence
from wire import messages as m
from wire.budget import TokenBucket
from wire.canonical import prepare_body
from wire.fpvtevents import MAX_EVENT_BYTES, PRIVATE_KEYS
from wire.push import Change, FpvtEvent

pytestmark = pytest.mark.timeout(60)

# Reads only when poked (or at the start): a change seen soon after an event came of the event.
SLOW = {"watch_interval": 30.0, "watch_event_interval": 30.0, "race_look_interval": 0.1}
HELLO_SAYS = "FPVTrackside 2.77.4.891 on Windows"


def keys(value: Any) -> set[str]:
    if isinstance(value, dict):
        return {k for k, v in value.items() for k in {k, *keys(v)}}
    if isinstance(value, list):
        return {k for item in value for k in keys(item)}
    return set()


def count(agent: Agent, name: str, labels: dict[str, str] | None = None) -> float:
    return agent.metrics.registry.get_sample_value(name, labels or {}) or 0.0


def events(double: RelayDouble, kind: str) -> list[dict[str, Any]]:
    return [e.event for e in double.of(FpvtEvent) if e.event["type"] == kind]


@contextlib.asynccontextmanager
async def extension_on(
    tmp_path: Path, features: tuple[str, ...] = NEW_RELAY, **settings: Any
) -> AsyncIterator[tuple[Agent, RelayDouble, System, Simulator]]:
    """A box on a relay double, and a simulator whose ExtensionMode sends to the box."""
    sim = Simulator(seed=7, lap_interval=None, photos=True)
    await sim.start()
    try:
        async with box_and_double(tmp_path, sim, features, **{**SLOW, **settings}) as (
            agent,
            double,
            s,
        ):
            sim.notification_url = s.status_url + PATH
            sender = await sim.restart_extension()
            await wait_for(lambda: sender.hello_acknowledged, what="the Hello acknowledged")
            yield agent, double, s, sim
    finally:
        await sim.stop()


async def put(
    url: str,
    body: bytes | str,
    *,
    method: str = "PUT",
    source: str | None = None,
) -> tornado.httpclient.HTTPResponse:
    client = tornado.httpclient.AsyncHTTPClient()
    return await client.fetch(
        url + PATH,
        method=method,
        body=body if method in ("PUT", "POST") else None,
        headers={"Content-Type": "application/json; charset=utf-8"},
        network_interface=source,
        raise_error=False,
        request_timeout=10,
    )


async def test_hello_and_detections_are_forwarded_cleaned(tmp_path: Path) -> None:
    async with extension_on(tmp_path) as (agent, double, s, sim):
        hello = await wait_for(lambda: events(double, "Hello"), what="the Hello forwarded")
        assert "paths" not in hello[0] and hello[0]["fpvtVersion"] == "2.77.4.891"
        assert agent.state.fpvt_events_from == HELLO_SAYS
        assert agent.state.fpvt_events_last is not None
        race = sim.race_path()
        for _ in range(4):
            sim.advance()
        sender = sim.extension
        assert sender is not None
        await wait_for(lambda: not sender.busy, what="every event sent")
        built = [o.seq for o in sender.outcomes if o.type == "DetectionExt"]
        assert built and all(o.result == "acknowledged" for o in sender.outcomes)
        got = await wait_for(
            lambda: (d := events(double, "DetectionExt")) and len(d) == len(built) and d,
            what="the detections forwarded",
        )
        assert [e["seq"] for e in got] == built  # in order, none lost
        assert not keys(got) & PRIVATE_KEYS  # photo paths stayed at the pits
        assert all(e["positionSnapshot"] for e in got)
        # The events had the race file read again at once (its interval is 30 s).
        _, etag = prepare_body(race, sim.reply(race).body)
        await wait_for(
            lambda: newest(double, Change, lambda c: c.path == race and c.etag == etag),
            what="the lap pushed after its event",
        )
        assert count(agent, "pitlink_fpvtrackside_events_forwarded_total") == len(
            double.of(FpvtEvent)
        )
        assert count(agent, "pitlink_fpvtrackside_events_lost_total") == 0
        # The status page says both: the box pushes, FPVTrackside's events come.
        page = await tornado.httpclient.AsyncHTTPClient().fetch(s.status_url + "/status.json")
        rows = {r["key"]: r for r in json.loads(page.body)["rows"]}
        assert rows["push"]["title"] == "Pushing race changes to the relay"
        assert "last change sent" in rows["push"]["text"]
        assert rows["events"]["title"].startswith("FPVTrackside sends race events: yes, last ")
        assert HELLO_SAYS in rows["events"]["text"]


async def test_a_lost_event_and_a_restart_are_noticed(tmp_path: Path) -> None:
    async with extension_on(tmp_path) as (agent, double, _, sim):
        sender = sim.extension
        assert sender is not None
        sender.drop_next(1, "DetectionExt")
        sim.advance()
        sim.advance()
        await wait_for(
            lambda: count(agent, "pitlink_fpvtrackside_events_lost_total") == 1,
            what="the lost event counted",
        )
        # FPVTrackside restarts: seq starts over, with a Hello.
        before = len(events(double, "Hello"))
        sender = await sim.restart_extension()
        await wait_for(lambda: sender.hello_acknowledged, what="the new Hello")
        await wait_for(
            lambda: count(agent, "pitlink_fpvtrackside_restarts_total") == 1,
            what="the restart noticed",
        )
        assert len(events(double, "Hello")) == before + 1
        sim.advance()
        await wait_for(lambda: not sender.busy, what="sent")
        newest_seq = max(o.seq for o in sender.outcomes)
        await wait_for(
            lambda: any(f.event["seq"] == newest_seq for f in double.of(FpvtEvent)),
            what="events after the restart forwarded",
        )
        assert count(agent, "pitlink_fpvtrackside_events_lost_total") == 1  # nothing more


async def test_a_relay_without_push_gets_no_events(tmp_path: Path) -> None:
    async with extension_on(tmp_path, (m.FEATURE_FPVTRACKSIDE,)) as (agent, double, _, sim):
        sim.advance()
        await wait_for(
            lambda: (
                count(agent, "pitlink_fpvtrackside_events_dropped_total", {"reason": "not_pushing"})
                >= 2
            ),
            what="the events dropped",
        )
        assert not double.of(FpvtEvent)
        assert agent.state.fpvt_events_from == HELLO_SAYS  # heard all the same


async def test_only_fpvtracksides_address_a_bounded_body_within_the_rate(
    tmp_path: Path, sim: Simulator
) -> None:
    async with box_and_double(tmp_path, sim, **SLOW) as (agent, double, s):
        url = s.status_url
        event = {"type": "Hello", "seq": 1, "ts": "2026-05-03T12:00:00.000Z"}
        event |= {"fpvtVersion": "2.77", "platform": "Linux", "paths": {"a": "/home/x"}}
        # A neighbour on the LAN (another loopback address stands in for one).
        neighbour = await put(url, json.dumps(event), source="127.0.0.2")
        assert neighbour.code == 403
        assert "FPVTRACKSIDE" in json.loads(neighbour.body)["error"]
        # Too large: refused from its Content-Length, before it is read.
        huge = await put(url, b"{" + b" " * MAX_EVENT_BYTES + b"}")
        assert huge.code == 413
        assert str(MAX_EVENT_BYTES) in json.loads(huge.body)["error"]
        # Not JSON, or not one object.
        broken = await put(url, b'{"type": "Hello", ')
        assert broken.code == 400
        assert "JSON object" in json.loads(broken.body)["error"]
        assert (await put(url, b"[1, 2]")).code == 400
        # Not a PUT.
        wrong = await put(url, b"{}", method="POST")
        assert wrong.code == 405 and wrong.headers["Allow"] == "PUT"
        assert (await put(url, b"", method="GET")).code == 405
        assert not double.of(FpvtEvent)
        # FPVTrackside's own: answered at once, empty.
        ok = await put(url, json.dumps(event))
        assert ok.code == 200 and ok.body == b""
        hello = await wait_for(lambda: double.of(FpvtEvent), what="the Hello forwarded")
        assert "paths" not in hello[0].event
        # An object that is no event FPVTrackside names: answered, not forwarded.
        assert (await put(url, b'{"type": "Mystery", "seq": 2}')).code == 200
        await wait_for(
            lambda: (
                count(
                    agent, "pitlink_fpvtrackside_events_refused_total", {"reason": "not_an_event"}
                )
                == 1
            ),
            what="the mystery refused",
        )
        # A flood: past the rate, 429 (a small bucket, to cross it in a few requests).
        agent.extension.bucket = TokenBucket(1.0, 3.0, agent.extension.clock())
        codes = [(await put(url, b"{}")).code for _ in range(5)]
        assert codes[:3] == [200, 200, 200] and codes[3:] == [429, 429]
        refused = agent.metrics.registry.get_sample_value
        assert refused("pitlink_fpvtrackside_events_refused_total", {"reason": "address"}) == 1
        assert refused("pitlink_fpvtrackside_events_refused_total", {"reason": "too_large"}) == 1
        assert refused("pitlink_fpvtrackside_events_refused_total", {"reason": "rate"}) == 2
        assert len(double.of(FpvtEvent)) == 1
        assert count(agent, "pitlink_fpvtrackside_events_received_total") == 5


@pytest.mark.parametrize(
    ("seen", "expected"),
    [
        # (hello?, seq) in arrival order -> (restarted, lost) of the last
        ([(True, 1), (False, 2), (False, 3)], (False, 0)),
        ([(True, 1), (False, 2), (False, 4)], (False, 1)),
        ([(True, 1), (False, 2), (True, 3), (False, 4)], (False, 0)),  # a Hello between
        ([(False, 2), (False, 3), (True, 5), (False, 4), (False, 6)], (False, 0)),  # overtaken
        ([(True, 1), (False, 9), (False, 2)], (True, 0)),  # restarted without a Hello seen
        ([(True, 1), (False, 9), (True, 1)], (True, 0)),  # restarted, its Hello seen
        ([(True, 5), (False, 6)], (False, 0)),  # Hello attempts 1 to 4 failed
    ],
)
def test_sequence(seen: list[tuple[bool, int]], expected: tuple[bool, int]) -> None:
    sequence = Sequence()
    result = (False, 0)
    for hello, seq in seen:
        result = sequence.see(hello, seq)
    assert result == expected
