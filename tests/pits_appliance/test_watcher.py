"""The box watches the race on the LAN and pushes what changed, to a relay that takes pushes
(a double of the relay's WebSocket, against the FPVTrackside simulator); to an older relay, and
with --no-push, nothing of it is sent and fetches are answered as ever."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from pitlink_testkit.fpvtrackside import Simulator
from pitlink_testkit.relaydouble import NEW_RELAY, box_and_double, newest
from pitlink_testkit.waiting import wait_for
from wire import messages as m
from wire.canonical import prepare_body
from wire.push import FEATURE_PUSH, Change, FpvtEvent, Still, Watch, Watching

pytestmark = pytest.mark.timeout(60)

FETCH = m.Fetch(method="GET", path="/httpfiles/Channels.json", timeout_ms=5000)
FAST = {
    "watch_interval": 0.05,
    "watch_event_interval": 0.1,
    "race_look_interval": 0.1,
    "lan_budget": 100.0,
}


def body_of(sim: Simulator, path: str) -> tuple[bytes, str]:
    return prepare_body(path, sim.reply(path).body)


def pushed(double, path: str, etag: str) -> Change | None:
    return newest(double, Change, lambda c: c.path == path and c.etag == etag)


async def test_the_race_now_is_watched_and_its_changes_pushed(
    tmp_path: Path, sim: Simulator
) -> None:
    async with box_and_double(tmp_path, sim, **FAST) as (agent, double, _):
        hello = double.of(m.PitsHello)[0]
        assert FEATURE_PUSH in hello.features
        race = sim.race_path()
        event = sim.event_path
        watching = await wait_for(
            lambda: newest(double, Watching, lambda w: w.race == race),
            what="watching with the race now",
        )
        assert set(watching.paths) == {race, f"{event}/Results.json", f"{event}/Rounds.json"}
        assert watching.interval_ms == 100  # the longest interval: a round
        for path in watching.paths:
            body, etag = body_of(sim, path)
            change = await wait_for(lambda p=path, e=etag: pushed(double, p, e), what=path)
            assert change.body == body
        # A lap: its new body goes up unasked.
        sim.advance()
        body, etag = body_of(sim, race)
        change = await wait_for(lambda: pushed(double, race, etag), what="the lap pushed")
        assert change.body == body
        assert change.content_type == "application/json; charset=utf-8"
        # Quiet rounds are said, at most once a round.
        stills = len(double.of(Still))
        await wait_for(lambda: len(double.of(Still)) >= stills + 2, what="stills")
        assert agent.state.pushing and agent.state.race_now == race
        assert agent.metrics.registry.get_sample_value(
            "pitlink_lan_requests_total", {"outcome": "same"}
        )


async def test_a_half_written_race_file_is_not_pushed(tmp_path: Path, sim: Simulator) -> None:
    async with box_and_double(tmp_path, sim, **FAST) as (agent, double, _):
        race = sim.race_path()
        _, etag = body_of(sim, race)
        await wait_for(lambda: pushed(double, race, etag), what="the race file pushed")
        sim.half_written.add(race)
        sim.advance()
        reads = agent.metrics.registry.get_sample_value
        await wait_for(
            lambda: (reads("pitlink_lan_requests_total", {"outcome": "bad"}) or 0) >= 3,
            what="reads of the half-written file",
        )
        changes = [c for c in double.of(Change) if c.path == race]
        assert [c.etag for c in changes] == [etag]  # nothing pushed of it
        sim.half_written.clear()
        _, whole = body_of(sim, race)
        await wait_for(lambda: pushed(double, race, whole), what="the whole file pushed")


async def test_the_relays_paths_are_watched_as_fetches_are_checked(
    tmp_path: Path, sim: Simulator
) -> None:
    async with box_and_double(tmp_path, sim, **FAST) as (_, double, _s):
        race = sim.race_path()
        await wait_for(lambda: newest(double, Watching, lambda w: w.race == race), what="watching")
        double.send(
            Watch(
                paths=(
                    "/httpfiles/Channels.json",
                    "/httpfiles/../../secret.json",
                    "/not/allowed.json",
                    race,
                ),
                interval_ms=200,
            )
        )
        watching = await wait_for(
            lambda: newest(double, Watching, lambda w: "/httpfiles/Channels.json" in w.paths),
            what="watching the relay's path",
        )
        assert "/not/allowed.json" not in watching.paths
        assert not any(".." in p or "secret" in p for p in watching.paths)
        assert watching.race == race and watching.paths[0] == race
        assert watching.interval_ms == 200
        _, etag = body_of(sim, "/httpfiles/Channels.json")
        await wait_for(lambda: pushed(double, "/httpfiles/Channels.json", etag), what="pushed")


async def test_a_new_race_is_found_and_said(tmp_path: Path, sim: Simulator) -> None:
    async with box_and_double(tmp_path, sim, **FAST) as (agent, double, _):
        first = sim.race_path()
        await wait_for(lambda: newest(double, Watching, lambda w: w.race == first), what="first")
        finished = sim.races_finished
        while sim.races_finished == finished:
            sim.advance()
        second = sim.race_path()
        assert second != first
        watching = await wait_for(
            lambda: newest(double, Watching, lambda w: w.race == second), what="the next race"
        )
        assert first not in watching.paths
        assert agent.state.race_now == second


async def test_an_older_relay_gets_nothing_of_it_and_fetches_as_ever(
    tmp_path: Path, sim: Simulator
) -> None:
    async with box_and_double(tmp_path, sim, (m.FEATURE_FPVTRACKSIDE,), **FAST) as (
        agent,
        double,
        _,
    ):
        double.send(FETCH)
        await wait_for(lambda: double.of(m.Response), what="the fetch answered")
        assert not agent.state.pushing
        pushes = (Watching, Change, Still, FpvtEvent)
        assert not [f for f in double.frames if isinstance(f.message, pushes)]
        # Nothing is watched: FPVTrackside is asked only what the relay fetches.
        assert [p for _, p in sim.request_log if p.endswith("Race.json")] == []
        assert agent.metrics.registry.get_sample_value("pitlink_watched_paths") == 0


async def test_a_box_told_not_to_push_names_no_push(tmp_path: Path, sim: Simulator) -> None:
    async with box_and_double(tmp_path, sim, NEW_RELAY, no_push=True, **FAST) as (
        agent,
        double,
        _,
    ):
        hello = double.of(m.PitsHello)[0]
        assert FEATURE_PUSH not in hello.features
        double.send(Watch(paths=("/httpfiles/Channels.json",), interval_ms=100))
        double.send(FETCH)
        await wait_for(lambda: double.of(m.Response), what="the fetch answered")
        assert not agent.state.pushing
        assert not double.of(Watching) and not double.of(Change)
        dropped = agent.metrics.registry.get_sample_value(
            "pitlink_frames_dropped_total", {"reason": "unexpected"}
        )
        assert dropped == 1


async def test_pausing_stops_pushing_and_resuming_starts_it(tmp_path: Path, sim: Simulator) -> None:
    async with box_and_double(tmp_path, sim, **FAST) as (agent, double, _):
        race = sim.race_path()
        await wait_for(lambda: newest(double, Watching, lambda w: w.race == race), what="watching")
        agent.set_paused(True)
        assert not agent.state.pushing
        sim.advance()
        _, etag = body_of(sim, race)
        double.send(FETCH)
        error = await wait_for(lambda: double.of(m.Error), what="the paused answer")
        assert error[0].code == "UNAVAILABLE"
        assert pushed(double, race, etag) is None
        agent.set_paused(False)
        assert agent.state.pushing
        await wait_for(lambda: pushed(double, race, etag), what="pushed after resuming")


async def test_the_lan_budget_holds(tmp_path: Path, sim: Simulator) -> None:
    """Intervals that would ask far more than the budget: FPVTrackside gets the budget's
    requests a second (and a second's worth at once), one at a time."""
    budget = 10.0
    greedy = {**FAST, "watch_interval": 0.05, "watch_event_interval": 0.05, "lan_budget": budget}
    async with box_and_double(tmp_path, sim, **greedy) as (_, double, _s):
        race = sim.race_path()
        await wait_for(lambda: newest(double, Watching, lambda w: w.race == race), what="watching")
        clock = time.monotonic
        started, before = clock(), sim.requests_total
        wanted = 25
        await wait_for(lambda: sim.requests_total >= before + wanted, what="requests")
        elapsed = clock() - started
        # At most a second's worth saved up, then the budget's pace (less a little for timing).
        assert elapsed >= (wanted - budget) / budget * 0.9
        assert sim.requests_total - before <= budget + budget * elapsed + 1
        assert sim.max_in_flight == 1
