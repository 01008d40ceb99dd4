"""The simulator speaks FPVTrackside's ExtensionMode as the real program does, checked with a real
receiver on a loopback port: what each PUT carries, the Hello handshake, one event in flight, the
timeout, the queue's bound, keep-alive, lost events and a restart."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
from extension_receiver import (
    FAST,
    PATH,
    Receiver,
    detection_ids_on_disk,
    race_files,
    receiving,
    results_file,
    sending,
)

from pitlink_testkit.fpvtrackside import ExtensionSettings, Simulator
from pitlink_testkit.fpvtrackside_extension import ExtensionSender, stamp
from pitlink_testkit.fpvtrackside_http import Connections
from pitlink_testkit.fpvtrackside_messages import Notifier
from pitlink_testkit.fpvtrackside_race import LiveEvent, parse_date
from pitlink_testkit.loopback import free_port
from pitlink_testkit.waiting import wait_for
from wire.fpvtevents import PRIVATE_KEYS, REQUIRED, clean

pytestmark = pytest.mark.timeout(30)

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "fpvtrackside_sim.py"
TS_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
CAMEL_RE = re.compile(r"^[a-z][A-Za-z0-9]*$")
WINDOWS_DIR_RE = re.compile(r"^[A-Z]:\\(?:[^\\/:*?\"<>|]+\\)+$")
RACE_END = ["RaceResult", "RaceEnd", "RaceLoaded", "NextRace"]
RACE_START = ["RaceStartAnnouncement", "RacePreStart", "RaceStart"]


def keys(value: Any) -> list[str]:
    """Every key of every object nested in ``value``."""
    if isinstance(value, dict):
        return [k for k, v in value.items() for k in [k, *keys(v)]]
    if isinstance(value, list):
        return [k for item in value for k in keys(item)]
    return []


async def settled(sim: Simulator, receiver: Receiver, *, earlier: int = 0) -> None:
    """Every event built has gone, and every PUT made has reached the receiver (which has
    ``earlier`` PUTs of senders before this one)."""
    sender = sim.extension
    assert sender is not None
    await wait_for(
        lambda: (
            not sender.busy and len(receiver.puts) == earlier + sender.sent and receiver.open == 0
        ),
        what="the sender to settle",
    )


async def run_races(sim: Simulator, receiver: Receiver, races: int) -> None:
    await wait_for(lambda: sim.extension and sim.extension.hello_acknowledged, what="the Hello")
    while sim.races_finished < races:
        sim.advance()
    await settled(sim, receiver)


# -- what each PUT carries ---------------------------------------------------------------------


async def test_every_event_is_a_put_as_fpvtrackside_sends_it() -> None:
    async with receiving() as receiver, sending(receiver.url) as sim:
        await run_races(sim, receiver, races=2)
        sender = sim.extension
        assert sender is not None
    assert sender.failed == sender.dropped == sender.withheld == 0
    assert [p.event["seq"] for p in receiver.puts] == list(range(1, sender.seq + 1))
    for put in receiver.puts:
        event = put.event
        assert (put.method, put.path) == ("PUT", PATH)
        assert sorted(name for name, _ in put.headers) == ["Content-Length", "Content-Type", "Host"]
        assert dict(put.headers)["Content-Type"] == "application/json; charset=utf-8"
        compact = json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode()
        assert put.body == compact
        assert list(event)[:3] == ["type", "ts", "seq"]
        assert TS_RE.match(event["ts"])
        assert all(CAMEL_RE.match(k) for k in keys(event)), event["type"]
        assert set(REQUIRED[event["type"]]) <= set(event)
        clean(event)  # what the box and the relay check: every field there, with its type
    kinds = [e["type"] for e in receiver.events()]
    assert set(kinds) == {"Hello", "DetectionExt", *RACE_END, *RACE_START}
    assert kinds[0] == "Hello" and kinds.count("Hello") == 1
    end = kinds.index("RaceResult")
    assert kinds[end : end + 7] == RACE_END + RACE_START  # RaceResult comes BEFORE RaceEnd
    assert kinds.count("RaceResult") == kinds.count("RaceEnd") == 2


async def test_detection_events_agree_with_race_json() -> None:
    async with receiving() as receiver, sending(receiver.url) as sim:
        await run_races(sim, receiver, races=2)
        races = [r for r in race_files(sim) if r["Detections"]]
    detections = receiver.events("DetectionExt")
    by_id = {d["ID"]: (race, d) for race in races for d in race["Detections"]}
    assert sorted(e["detectionId"] for e in detections) == sorted(by_id)  # each once
    for event in detections:
        race, detection = by_id[event["detectionId"]]
        start = parse_date(race["Start"])
        assert event["race"] == race["RaceNumber"]
        assert event["lapNumber"] == detection["LapNumber"]
        assert event["raceSector"] == detection["RaceSector"] == detection["LapNumber"] * 100
        assert event["isLapEnd"] is True and event["valid"] is True
        assert event["raceTime"] == (parse_date(detection["Time"]) - start).total_seconds()
        snapshot = event["positionSnapshot"]
        assert len(snapshot) == len(race["PilotChannels"])
        assert [row["position"] for row in snapshot] == sorted(row["position"] for row in snapshot)
        detected = [row for row in snapshot if row["raceSector"] or row["lastDetectionTime"]]
        # further along first, then the earlier detection: the specification's order
        order = [(-row["raceSector"], row["lastDetectionTime"]) for row in detected]
        assert order == sorted(order)
        mine = next(row for row in snapshot if row["pilotName"] == event["pilotName"])
        assert mine["position"] == event["position"]
        assert mine["lastDetectionTime"] == event["raceTime"]
        if detection["LapNumber"] == 0:
            assert event["sectorTime"] is None and event["lapTimeSoFar"] == event["raceTime"]
        else:
            lap = next(lap for lap in race["Laps"] if lap["Detection"] == detection["ID"])
            assert abs(event["lapTimeSoFar"] - lap["LengthSeconds"]) < 0.002  # ms in the file
    finishers = [e for e in detections if e["raceFinishedForPilot"]]
    assert len(finishers) == sum(len(r["PilotChannels"]) for r in races if r["End"][:4] != "0001")


async def test_race_result_and_race_loaded_agree_with_the_files() -> None:
    async with receiving() as receiver, sending(receiver.url) as sim:
        await run_races(sim, receiver, races=1)
        first, second = race_files(sim)[:2]
        results = results_file(sim)
    (result,) = receiver.events("RaceResult")
    assert result["race"] == first["RaceNumber"] and result["round"] == 1
    ours = sorted((r for r in results if r["Race"] == first["ID"]), key=lambda r: r["Position"])
    assert [p["position"] for p in result["pilots"]] == [r["Position"] for r in ours]
    assert all(p["totalLaps"] == first["TargetLaps"] and not p["dnf"] for p in result["pilots"])
    (loaded,) = receiver.events("RaceLoaded")
    assert (loaded["race"], loaded["targetLaps"]) == (second["RaceNumber"], second["TargetLaps"])
    assert len(loaded["pilots"]) == len(second["PilotChannels"])
    (start,) = receiver.events("RaceStart")
    assert (
        start["actualStart"]
        == parse_date(second["Start"]).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    )
    (pre,) = receiver.events("RacePreStart")
    assert pre["scheduledStart"] == start["actualStart"] and "actualStart" not in pre


@pytest.mark.parametrize("photos", [False, True])
async def test_paths_and_photo_paths_are_there_for_the_box_to_strip(photos: bool) -> None:
    async with receiving() as receiver, sending(receiver.url, photos=photos) as sim:
        await run_races(sim, receiver, races=1)
    (hello,) = receiver.events("Hello")
    assert set(hello["paths"]) == {
        "workingDirectory",
        "baseDirectory",
        "eventsDirectory",
        "profileDirectory",
        "pilotsDirectory",
    }
    assert all(WINDOWS_DIR_RE.match(path) for path in hello["paths"].values()), hello["paths"]
    assert hello["paths"]["workingDirectory"] == FAST.working_directory
    assert hello["platform"] == "Windows" and hello["fpvtVersion"].startswith("2.77.")
    pilots = receiver.events("RaceLoaded")[0]["pilots"]
    photo_paths = {p["photoPath"] for p in pilots}
    if photos:
        assert all(re.fullmatch(r"pilots\\[a-z]+\.jpg", path) for path in photo_paths)
    else:
        assert photo_paths == {None}  # the key is there all the same
    for event in receiver.events():
        assert not PRIVATE_KEYS & set(keys(clean(event)))


# -- Hello ------------------------------------------------------------------------------------


async def test_hello_is_retried_until_a_2xx_and_each_attempt_uses_a_seq() -> None:
    async with receiving() as receiver, sending(receiver.url) as sim:
        receiver.answer = lambda e: 500 if len(receiver.seqs("Hello")) <= 2 else 200
        sender = sim.extension
        assert sender is not None
        await wait_for(lambda: sender.hello_acknowledged, what="the third Hello")
        await wait_for(lambda: sender.hello_task is not None and sender.hello_task.done())
        for _ in range(3):
            sim.advance()
        await settled(sim, receiver)
    assert receiver.seqs("Hello") == [1, 2, 3]
    assert [p.status for p in receiver.puts[:3]] == [500, 500, 200]
    assert (sender.hello_attempts, sender.failed) == (3, 2)
    assert receiver.seqs("DetectionExt") == [4, 5, 6]  # and never another Hello


async def test_events_do_not_wait_for_the_hello() -> None:
    async with receiving() as receiver, sending(receiver.url) as sim:
        receiver.answer = lambda e: 500 if e["type"] == "Hello" else 200
        await wait_for(lambda: len(receiver.seqs("Hello")) >= 2, what="a Hello retried")
        for _ in range(3):
            sim.advance()
        await wait_for(lambda: len(receiver.seqs("DetectionExt")) == 3, what="the events")
        await wait_for(lambda: len(receiver.seqs("Hello")) >= 4, what="more Hellos")
        sender = sim.extension
        assert sender is not None and not sender.hello_acknowledged
    seqs = sorted(receiver.seqs())
    assert seqs == list(range(1, len(seqs) + 1))  # Hellos and events share the count


async def test_an_extension_started_late_gets_a_hello_counting_every_attempt() -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}{PATH}"
    async with sending(url) as sim:
        sender = sim.extension
        assert sender is not None
        await wait_for(lambda: sender.hello_attempts >= 3, what="Hellos refused")
        assert sender.failed >= 3 and sender.outcomes[0].detail.startswith("cannot connect")
        async with receiving(port) as receiver:
            await wait_for(lambda: sender.hello_acknowledged, what="the Hello taken")
            (hello,) = receiver.events("Hello")
    assert hello["seq"] == sender.hello_attempts > 3


async def test_a_hello_overtakes_queued_events_outside_the_queue() -> None:
    slow = ExtensionSettings(hello_interval=0.05, timeout=10.0)
    async with receiving() as receiver, sending(receiver.url, extension_settings=slow) as sim:
        sender = sim.extension
        assert sender is not None
        receiver.gate = asyncio.Event()
        last_event = [sys.maxsize]  # Hellos are refused until one is made after the events
        receiver.answer = lambda e: (
            500 if e["type"] == "Hello" and e["seq"] < last_event[0] else 200
        )
        await wait_for(lambda: receiver.puts, what="the first Hello")
        lifecycle = {"round": 1, "race": 1, "raceType": "Race"}
        queued = [sender.send("RaceEnd", lifecycle) for _ in range(3)]
        last_event[0] = queued[-1]
        await wait_for(lambda: sender.hello_acknowledged, what="a Hello made after the events")
        assert [p.event["seq"] for p in receiver.puts if p.event["type"] != "Hello"] == queued[:1]
        taken = receiver.puts[-1]
        assert taken.event["type"] == "Hello" and taken.event["seq"] > queued[-1]
        assert taken.events_open_before == 1  # in flight beside the held event, ahead of two
        receiver.gate.set()
        await settled(sim, receiver)
    assert [s for s in receiver.seqs() if s in queued] == queued
    assert receiver.max_events_open == 1 and receiver.max_open == 2


# -- the queue --------------------------------------------------------------------------------


async def test_one_event_in_flight_in_order() -> None:
    async with receiving() as receiver, sending(receiver.url) as sim:
        receiver.delay = lambda e: 0.005
        await wait_for(lambda: sim.extension and sim.extension.hello_acknowledged)
        for _ in range(40):
            sim.advance()
        await settled(sim, receiver)
        sender = sim.extension
        assert sender is not None
    assert receiver.seqs() == sorted(receiver.seqs()) == list(range(1, sender.seq + 1))
    assert receiver.max_events_open == sender.max_in_flight == 1
    assert len(receiver.events("DetectionExt")) == 40


async def test_a_receiver_slower_than_the_timeout_loses_the_event_and_the_next_goes_on() -> None:
    async with receiving() as receiver, sending(receiver.url) as sim:  # the real 1.5 s timeout
        await wait_for(lambda: sim.extension and sim.extension.hello_acknowledged)
        receiver.delay = lambda e: 2.0 if e["seq"] == 2 else 0.0
        sim.advance()
        sim.advance()
        await wait_for(lambda: 3 in receiver.seqs(), timeout=5, what="the next event")
        slow, following = receiver.puts[1], receiver.puts[2]
        assert not slow.answered  # the sender did not wait for it
        assert following.arrived - slow.arrived >= 1.5
        await wait_for(lambda: slow.answered, timeout=5, what="the late answer")
        await settled(sim, receiver)
        sender = sim.extension
        assert sender is not None
    assert receiver.seqs() == [1, 2, 3]  # never sent again
    assert sender.failed == 1 and sender.acknowledged == 2
    assert [(o.seq, o.result, o.detail) for o in sender.outcomes][1] == (2, "failed", "timeout")


@pytest.mark.parametrize("status", [500, 503, 404, 307])
async def test_an_event_without_a_2xx_is_lost_for_good(status: int) -> None:
    async with receiving() as receiver, sending(receiver.url) as sim:
        await wait_for(lambda: sim.extension and sim.extension.hello_acknowledged)
        receiver.answer = lambda e: status if e["seq"] == 2 else 200
        for _ in range(3):
            sim.advance()
        await settled(sim, receiver)
        sender = sim.extension
        assert sender is not None
    assert receiver.seqs() == [1, 2, 3, 4]
    assert {p.path for p in receiver.puts} == {PATH}  # a redirect is not followed
    assert sender.failed == 1
    assert [(o.seq, o.result, o.detail) for o in sender.outcomes if o.result == "failed"] == [
        (2, "failed", f"HTTP {status}")
    ]


async def test_the_queue_holds_200_and_drops_new_events() -> None:
    patient = ExtensionSettings(hello_interval=0.05, timeout=30.0)
    async with receiving() as receiver, sending(receiver.url, extension_settings=patient) as sim:
        sender = sim.extension
        assert sender is not None
        await wait_for(lambda: sender.hello_acknowledged)
        receiver.gate = asyncio.Event()
        hello = sender.seq
        while sender.seq < hello + 250:
            sim.advance()
        built = sender.seq - hello
        assert sender.busy == 200  # the one in flight counts
        assert sender.dropped == built - 200
        dropped = [o for o in sender.outcomes if o.result == "dropped"]
        assert {o.detail for o in dropped} == {"queue full"}
        assert [o.seq for o in dropped] == list(range(hello + 201, hello + built + 1))
        receiver.gate.set()
        await settled(sim, receiver)
        sim.advance()  # room again
        await settled(sim, receiver)
    events = receiver.seqs()[1:]
    assert events == [*range(hello + 1, hello + 201), *range(hello + built + 1, sender.seq + 1)]


# -- connections --------------------------------------------------------------------------------


async def test_one_connection_carries_every_event() -> None:
    async with receiving() as receiver, sending(receiver.url) as sim:
        await run_races(sim, receiver, races=1)
        sender = sim.extension
        assert sender is not None
        assert receiver.connections == sender.connections_opened == 1
        assert receiver.connections_open == 1  # kept open between races


async def test_a_kept_connection_closed_by_the_receiver_is_replaced_without_a_loss() -> None:
    async with receiving(idle_connection_timeout=0.05) as receiver, sending(receiver.url) as sim:
        sender = sim.extension
        assert sender is not None
        await wait_for(lambda: sender.hello_acknowledged)
        await wait_for(lambda: receiver.connections_open == 0, what="the receiver to close")
        sim.advance()
        await settled(sim, receiver)
    assert receiver.seqs() == [1, 2] and sender.failed == 0
    assert receiver.connections == 2


async def test_a_connection_past_its_lifetime_is_not_used_again() -> None:
    short = ExtensionSettings(hello_interval=0.05, lifetime=0.0)
    async with receiving() as receiver, sending(receiver.url, extension_settings=short) as sim:
        await wait_for(lambda: sim.extension and sim.extension.hello_acknowledged)
        for _ in range(3):
            sim.advance()
        await settled(sim, receiver)
    assert receiver.connections == len(receiver.puts) == 4


# -- faults and restarts ----------------------------------------------------------------------


async def test_a_withheld_event_leaves_a_gap_in_seq() -> None:
    async with receiving() as receiver, sending(receiver.url) as sim:
        sender = sim.extension
        assert sender is not None
        await wait_for(lambda: sender.hello_acknowledged)
        sender.drop_next(1, "DetectionExt")
        for _ in range(3):
            sim.advance()
        sender.drop_next(2)
        sim.advance()
        sim.advance()
        sim.advance()
        await settled(sim, receiver)
    assert receiver.seqs() == [1, 3, 4, 7]
    assert sender.withheld == 3 and sender.sent == 4
    assert [o.seq for o in sender.outcomes if o.result == "withheld"] == [2, 5, 6]


async def test_a_restart_starts_seq_over_with_a_hello() -> None:
    async with receiving() as receiver, sending(receiver.url) as sim:
        before = sim.extension
        assert before is not None
        await wait_for(lambda: before.hello_acknowledged)
        for _ in range(4):
            sim.advance()
        await settled(sim, receiver)
        receiver.answer = lambda e: 500 if e["type"] == "Hello" and e["seq"] == 1 else 200
        after = await sim.restart_extension()
        assert after is sim.extension and after is not before
        assert before.hello_task is not None and before.hello_task.done()
        await wait_for(lambda: after.hello_acknowledged, what="the new session's Hello")
        sim.advance()
        await settled(sim, receiver, earlier=5)
    assert receiver.seqs() == [1, 2, 3, 4, 5, 1, 2, 3]  # seq went backwards: a restart
    assert [e["type"] for e in receiver.events()[5:]] == ["Hello", "Hello", "DetectionExt"]


async def test_a_detection_is_sent_once(tmp_path: Path) -> None:
    """FPVTrackside hears of some detections twice (a split and a lap); it sends them once."""
    live = LiveEvent(tmp_path, seed=1, pilots=3)
    async with receiving() as receiver:
        notifier = Notifier(live, FAST)
        sender = ExtensionSender(receiver.url, hello=notifier.hello, settings=FAST, clock=lambda: 0)
        notifier.sender, live.listener = sender, notifier
        sender.start()
        try:
            await wait_for(lambda: sender.hello_acknowledged)
            live.step()
            race = live.current_race
            notifier.detected(race, race["Detections"][-1])
            live.step()
            await wait_for(lambda: not sender.busy and len(receiver.puts) == sender.sent)
        finally:
            await sender.close()
    assert receiver.seqs() == [1, 2, 3]
    assert [e["detectionId"] for e in receiver.events("DetectionExt")] == [
        d["ID"] for d in race["Detections"]
    ]
    assert receiver.events("Hello")[0]["ts"] == "1970-01-01T00:00:00.000Z"  # the clock given


# -- the race file and the event ----------------------------------------------------------------


def on_disk(sim: Simulator, event: dict[str, Any], seen: list[bool]) -> None:
    """Whether the race file had the detection when its event arrived."""
    if event["type"] == "DetectionExt":
        seen.append(event["detectionId"] in detection_ids_on_disk(sim))


async def test_a_detection_event_comes_after_the_race_file_has_it() -> None:
    async with receiving() as receiver, sending(receiver.url) as sim:
        seen: list[bool] = []
        receiver.on_event = lambda e: on_disk(sim, e, seen)
        await run_races(sim, receiver, races=1)
    assert seen and all(seen)


async def test_event_before_file_sends_the_event_before_the_race_file_has_it() -> None:
    late = {"event_before_file": True, "file_lag": 0.05}
    async with receiving() as receiver, sending(receiver.url, **late) as sim:
        seen: list[bool] = []
        receiver.on_event = lambda e: on_disk(sim, e, seen)
        await run_races(sim, receiver, races=1)
        ids = {e["detectionId"] for e in receiver.events("DetectionExt")}
        await wait_for(lambda: ids <= detection_ids_on_disk(sim), what="the files to catch up")
        sim.advance()
        await settled(sim, receiver)
        await sim.restart_extension()  # the race file still to come is written at once
        sent = {e["detectionId"] for e in receiver.events("DetectionExt")}
        assert sent <= detection_ids_on_disk(sim)
    assert seen and not any(seen)


# -- the command line -------------------------------------------------------------------------


async def test_command_line_sends_extension_mode_and_restarts_on_sigusr1() -> None:
    async with receiving() as receiver:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(SCRIPT),
            "--port",
            "0",
            "--lap-interval",
            "0.05",
            "--extension-mode",
            "--notification-url",
            receiver.url,
            "--hello-interval",
            "0.05",
            "--photos",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            await wait_for(lambda: receiver.events("RaceLoaded"), what="a race loaded")
            proc.send_signal(signal.SIGUSR1)
            await wait_for(lambda: receiver.seqs("Hello") == [1, 1], what="a second Hello")
            await wait_for(lambda: receiver.seqs()[-1] > 1, what="events after the restart")
        finally:
            proc.send_signal(signal.SIGTERM)
            out, err = await asyncio.wait_for(proc.communicate(), timeout=10)
    assert proc.returncode == 0, err.decode()
    assert f"sending ExtensionMode events to {receiver.url}" in out.decode()
    assert all(p["photoPath"] for p in receiver.events("RaceLoaded")[0]["pilots"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--notification-url", "http://127.0.0.1:1/"], "add --extension-mode"),
        (["--extension-mode"], "needs --notification-url"),
        (["--extension-mode", "--notification-url", "http://x/", "--root", "."], "generated event"),
    ],
)
async def test_command_line_refuses_half_an_extension_mode(args: list[str], message: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(SCRIPT), *args, stderr=asyncio.subprocess.PIPE
    )
    _, err = await asyncio.wait_for(proc.communicate(), timeout=10)
    assert proc.returncode == 2 and message in err.decode()


def test_extension_mode_needs_a_generated_event(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="generated event"):
        Simulator(root=tmp_path, notification_url="http://127.0.0.1:1/")
    with pytest.raises(ValueError, match="http://"):
        Connections("https://example.invalid/", idle_timeout=1, lifetime=1)


def test_stamps_truncate_to_the_millisecond() -> None:
    moment = dt.datetime(2026, 5, 3, 12, 34, 56, 789999, tzinfo=dt.UTC).timestamp()
    assert stamp(moment) == "2026-05-03T12:34:56.789Z"
