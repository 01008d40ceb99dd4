"""An FPVTrackside Extension on a loopback port that records every request the simulator sends.

What it answers is the test's to say (``answer``), and how long it takes (``delay``, ``gate``),
so that the simulator's sender meets a receiver that refuses, stalls or hangs.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import tornado.httpserver
import tornado.iostream
import tornado.netutil
import tornado.web

from pitlink_testkit.fpvtrackside import ExtensionSettings, Simulator
from pitlink_testkit.fpvtrackside_web import CountingServer

PATH = "/fpvtrackside/events"
# Short Hello retries; every other constant FPVTrackside's own.
FAST = ExtensionSettings(hello_interval=0.05)


@dataclasses.dataclass
class Put:
    """One request as it arrived."""

    method: str
    path: str
    headers: list[tuple[str, str]]
    body: bytes
    event: dict[str, Any]
    arrived: float  # loop time
    open_before: int  # requests already open when it arrived
    events_open_before: int  # of them, events other than Hello
    answered: bool = False
    status: int = 0


class Receiver:
    """Records every request; answers ``answer(event)`` after ``delay(event)`` seconds, events
    other than Hello only once ``gate`` (when set) is open."""

    def __init__(self) -> None:
        self.puts: list[Put] = []
        self.answer: Callable[[dict[str, Any]], int] = lambda event: 200
        self.delay: Callable[[dict[str, Any]], float] = lambda event: 0.0
        self.gate: asyncio.Event | None = None
        self.on_event: Callable[[dict[str, Any]], None] | None = None
        self.open = self.events_open = self.max_open = self.max_events_open = 0
        self.url = ""
        self.server: CountingServer | None = None

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        return [p.event for p in self.puts if kind is None or p.event.get("type") == kind]

    def seqs(self, kind: str | None = None) -> list[int]:
        return [int(e["seq"]) for e in self.events(kind)]

    @property
    def connections(self) -> int:
        return 0 if self.server is None else self.server.accepted

    @property
    def connections_open(self) -> int:
        if self.server is None:
            return 0
        return sum(1 for stream in self.server.streams if not stream.closed())


class _Handler(tornado.web.RequestHandler):
    SUPPORTED_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")

    def initialize(self, receiver: Receiver) -> None:
        self.receiver = receiver

    async def prepare(self) -> None:
        r, request = self.receiver, self.request
        event = json.loads(request.body) if request.body else {}
        is_event = event.get("type") != "Hello"
        put = Put(
            method=request.method or "",
            path=request.path,
            headers=list(request.headers.get_all()),
            body=request.body,
            event=event,
            arrived=asyncio.get_running_loop().time(),
            open_before=r.open,
            events_open_before=r.events_open,
        )
        r.puts.append(put)
        r.open += 1
        r.max_open = max(r.max_open, r.open)
        r.events_open += is_event
        r.max_events_open = max(r.max_events_open, r.events_open)
        try:
            if r.on_event is not None:
                r.on_event(event)
            if is_event and r.gate is not None:
                await r.gate.wait()
            delay = r.delay(event)
            if delay:
                await asyncio.sleep(delay)  # a slow Extension, not a wait for a condition
            put.status = r.answer(event)
            self.set_status(put.status)
            if 300 <= put.status < 400:
                self.set_header("Location", "/elsewhere")
            with contextlib.suppress(tornado.iostream.StreamClosedError):
                await self.finish()
            put.answered = True
        finally:
            r.open -= 1
            r.events_open -= is_event


@contextlib.asynccontextmanager
async def receiving(port: int = 0, **server_settings: Any) -> AsyncIterator[Receiver]:
    """A Receiver listening on loopback ``port`` (0: any)."""
    receiver = Receiver()
    sockets = tornado.netutil.bind_sockets(port, "127.0.0.1")
    # Its refusals are the test's doing: not logged (tornado logs a 5xx at ERROR).
    app = tornado.web.Application(
        [(r"/.*", _Handler, {"receiver": receiver})], log_function=lambda handler: None
    )
    receiver.server = server = CountingServer(app, **server_settings)
    server.add_sockets(sockets)
    receiver.url = f"http://127.0.0.1:{sockets[0].getsockname()[1]}{PATH}"
    try:
        yield receiver
    finally:
        if receiver.gate is not None:
            receiver.gate.set()
        server.stop()
        await server.close_all_connections()


@contextlib.asynccontextmanager
async def sending(url: str, **kwargs: Any) -> AsyncIterator[Simulator]:
    """A started Simulator in ExtensionMode whose race moves only by ``advance()``."""
    kwargs.setdefault("extension_settings", FAST)
    sim = Simulator(seed=5, lap_interval=None, notification_url=url, **kwargs)
    await sim.start()
    try:
        yield sim
    finally:
        await sim.stop()


def race_files(sim: Simulator) -> list[dict[str, Any]]:
    """Every race of the simulator's event, in the schedule's order, as its Race.json says now."""
    folder = Path(sim.root, "events", sim.event_id)
    (event,) = json.loads((folder / "Event.json").read_bytes())
    found = []
    for race_id in event["Races"]:
        found.extend(json.loads((folder / race_id / "Race.json").read_bytes()))
    return found


def detection_ids_on_disk(sim: Simulator) -> set[str]:
    return {d["ID"] for race in race_files(sim) for d in race["Detections"]}


def results_file(sim: Simulator) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = json.loads(
        Path(sim.root, "events", sim.event_id, "Results.json").read_bytes()
    )
    return results
