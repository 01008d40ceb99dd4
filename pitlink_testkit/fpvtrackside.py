"""Simulate FPVTrackside, quirks included, for Pitlink tests and demos: its web server and its race.

FPVTrackside serves its event files from a single HttpListener loop on port 8080, and the pits
agent polls that origin. Tests therefore need an origin that misbehaves exactly like the real one
(see tests/fixtures/README.md): one request at a time, no Content-Type on event files, an
empty 200 for a missing event file, index.html for unknown paths, no ETag or Last-Modified, no
protection against ``..``, and files rewritten in place while a race runs. Test switches
(``slow``, ``hold``, ``half_written``, ``huge``) add the faults a real pits network produces.

Two modes: ``Simulator(root=DIR)`` serves an existing web root read-only (e.g. the real fixture
event); ``Simulator(seed=N)`` generates a seeded event in a temporary directory and runs a live
race in it, one lap detection every ``lap_interval`` seconds or per ``advance()`` call.

``Simulator(notification_url=URL)`` also turns on FPVTrackside's ExtensionMode: the live race's
events go to URL, one PUT each, as the real program sends them.

The parts, one module each: the generated event and its race (``fpvtrackside_race``), the web
server (``fpvtrackside_web``) and its pages (``fpvtrackside_pages``), ExtensionMode's events
(``fpvtrackside_messages``), its sender (``fpvtrackside_extension``) and HTTP client
(``fpvtrackside_http``), and the command line (``fpvtrackside_cli``, run by
``python scripts/fpvtrackside_sim.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import shutil
import tempfile
import time
import weakref
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import tornado.netutil
import tornado.web

from pitlink_testkit.fpvtrackside_extension import ExtensionSender, ExtensionSettings
from pitlink_testkit.fpvtrackside_messages import Notifier
from pitlink_testkit.fpvtrackside_pages import EVENT_PLACEHOLDER, EVENT_RE
from pitlink_testkit.fpvtrackside_race import NULL_DATE, LiveEvent, dump_json, format_date
from pitlink_testkit.fpvtrackside_web import (
    CONTENT_TYPES,
    IDLE_TIMEOUT_S,
    SERVER_HEADER,
    CountingServer,
    Reply,
    _Handler,
    filler,
    find_event_id,
    resolve,
)

__all__ = [
    "CONTENT_TYPES",
    "EVENT_PLACEHOLDER",
    "EVENT_RE",
    "IDLE_TIMEOUT_S",
    "NULL_DATE",
    "SERVER_HEADER",
    "VERSIONS",
    "ExtensionSender",
    "ExtensionSettings",
    "LiveEvent",
    "Reply",
    "Simulator",
    "dump_json",
    "filler",
    "find_event_id",
    "format_date",
    "resolve",
]

log = logging.getLogger("pitlink.sim.fpvtrackside")

LOG_LIMIT = 10_000  # bound on request_log and traversals
# The FPVTrackside versions whose web servers differ in what Pitlink sees (see Simulator).
VERSIONS = ("2.70", "2.71", "2.76")


class Simulator:
    """A fake FPVTrackside origin on Tornado: one request at a time, quirks and fault switches.

    Switches tests set at runtime: ``slow`` (seconds each request waits holding the lock),
    ``hold`` (an Event every request waits for, holding the lock), ``half_written`` (URL paths
    served with half their bytes), ``huge`` (URL path -> a streamed body of that many bytes).
    Switches match the raw request path, e.g. ``/events/<id>/Event.json``.

    Connections stay open between requests, as HttpListener's do, until idle for
    ``idle_timeout`` seconds; ``connections_total`` and ``connections_open`` count them.

    ``version`` is which FPVTrackside to answer as, in what its web server shows (tests may
    change it at runtime, as an upgrade at the venue would): "2.70" as the fixture's (event
    files with no Content-Type), "2.71" (event files as ``application/json``), "2.76" (also
    ``GET /current``). ``server`` is its Server header (Windows' http.sys by default).

    ``notification_url`` turns FPVTrackside's ExtensionMode on (a generated event only): from
    ``start()`` its events go to that URL as the real program sends them (``extension`` is the
    sender, with its counts and ``drop_next``; ``extension_settings`` its constants; events are
    stamped by ``wall_clock``). ``event_before_file`` sends a detection's event before the race
    file has it (FPVTrackside writes first): the file gets it ``file_lag`` seconds after the
    event has gone. ``restart_extension()`` is FPVTrackside restarted.
    ``photos`` gives every pilot a photo, so that events carry ``photoPath`` strings.
    """

    def __init__(
        self,
        *,
        root: Path | None = None,
        seed: int = 0,
        lap_interval: float | None = 2.0,
        pilots: int = 6,
        idle_timeout: float = IDLE_TIMEOUT_S,
        version: str = "2.70",
        notification_url: str | None = None,
        extension_settings: ExtensionSettings | None = None,
        event_before_file: bool = False,
        file_lag: float = 0.5,
        photos: bool = False,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if lap_interval is not None and lap_interval <= 0:
            raise ValueError("lap_interval must be positive, or None to disable the live race")
        if version not in VERSIONS:
            raise ValueError(f"version must be one of {', '.join(VERSIONS)}")
        if file_lag < 0:
            raise ValueError("file_lag must be 0 or more seconds")
        if notification_url is not None and root is not None:
            raise ValueError("ExtensionMode needs a generated event (no root) whose race runs")
        self.notification_url = notification_url
        self.extension_settings = extension_settings or ExtensionSettings()
        self.extension: ExtensionSender | None = None
        self.wall_clock = wall_clock
        self.file_lag = file_lag
        self._notifier: Notifier | None = None
        self.version = version
        self.server = SERVER_HEADER
        self.slow: float = 0.0
        self.hold: asyncio.Event | None = None
        self.half_written: set[str] = set()
        self.huge: dict[str, int] = {}
        self.requests_total = 0  # counted on arrival, before queueing for the lock
        self.queued = 0  # arrived and waiting for the lock
        self.in_flight = 0  # holding the lock: never more than 1
        self.max_in_flight = 0
        self.max_open = 0  # most requests ever arrived and unanswered at once (queued + in flight)
        self.request_log: list[tuple[str, str]] = []
        self.traversals: list[str] = []
        self.lap_interval = lap_interval
        self.idle_timeout = idle_timeout
        self._live: LiveEvent | None = None
        self._cleanup: Callable[[], object] | None = None
        if root is None:
            tmp = Path(tempfile.mkdtemp(prefix="fpvtrackside-sim-"))
            self._cleanup = weakref.finalize(self, shutil.rmtree, tmp, ignore_errors=True)
            try:
                self._live = LiveEvent(tmp, seed=seed, pilots=pilots, photos=photos)
                self._live.event_before_file = event_before_file
            except BaseException:
                self._cleanup()
                raise
            self.root = tmp
            self.event_id = self._live.event_id
        else:
            self.root = Path(root).resolve()
            self.event_id = find_event_id(self.root)
        self._lock = asyncio.Lock()
        self._closing = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._active = 0
        self._server: CountingServer | None = None
        self._accepted_before = 0  # connections counted by a server already stopped
        self._task: asyncio.Task[None] | None = None
        self._address: tuple[str, int] | None = None

    @property
    def url(self) -> str:
        """``http://host:port`` of the running server."""
        if self._address is None:
            raise RuntimeError("the simulator has not been started")
        host, port = self._address
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    @property
    def connections_total(self) -> int:
        """TCP connections accepted so far."""
        running = 0 if self._server is None else self._server.accepted
        return self._accepted_before + running

    @property
    def connections_open(self) -> int:
        """TCP connections open now (closed by either side, they no longer count)."""
        if self._server is None:
            return 0
        return sum(1 for stream in self._server.streams if not stream.closed())

    @property
    def event_path(self) -> str:
        """URL path of the event directory, ``/events/<event id>``."""
        return f"/events/{self.event_id}"

    @property
    def current_race_id(self) -> str | None:
        """Id of the race running now (None when serving an existing root)."""
        return None if self._live is None else self._live.current_race["ID"]

    @property
    def races_finished(self) -> int:
        """How many races of the generated event have ended."""
        return 0 if self._live is None else self._live.races_finished

    def race_path(self, race_id: str | None = None) -> str:
        """URL path of a race's Race.json, the current race's by default."""
        race_id = race_id or self.current_race_id
        if race_id is None:
            raise RuntimeError("no generated event: pass a race id")
        return f"{self.event_path}/{race_id}/Race.json"

    def make_app(self) -> tornado.web.Application:
        """The Tornado application: every path goes to the one handler."""
        return tornado.web.Application([(r".*", _Handler, {"sim": self})])

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Listen on ``host:port`` (0: any free port), start the live race; return the port."""
        if self._server is not None or self._closing.is_set():
            raise RuntimeError("a simulator starts once")
        sockets = tornado.netutil.bind_sockets(port, address=host)
        self._server = CountingServer(self.make_app(), idle_connection_timeout=self.idle_timeout)
        self._server.add_sockets(sockets)
        self._address = (host, sockets[0].getsockname()[1])
        if self._live is not None and self.lap_interval is not None:
            self._task = asyncio.create_task(self._run_live(self.lap_interval), name="live-race")
        log.info("serving %s on %s, event %s", self.root, self.url, self.event_id)
        if self.notification_url is not None:
            self._open_extension(self.notification_url)
        return self._address[1]

    async def stop(self) -> None:
        """Stop listening and racing, close open connections, remove a generated event."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._close_extension()
        if self._server is not None:
            self._server.stop()
            await self._server.close_all_connections()
            self._accepted_before += self._server.accepted
            self._server = None
            log.info("stopped serving event %s", self.event_id)
        # Only now release requests waiting on hold or slow: their connections are closed, so
        # they end without answering rather than racing the shutdown.
        self._closing.set()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout=5.0)
        except TimeoutError:
            log.warning("%d requests still running at stop", self._active)
        if self._cleanup is not None:
            self._cleanup()

    async def __aenter__(self) -> Simulator:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def event_before_file(self) -> bool:
        """Whether a detection's ExtensionMode event goes before the race file has it."""
        return self._live is not None and self._live.event_before_file

    @event_before_file.setter
    def event_before_file(self, value: bool) -> None:
        if self._live is None:
            raise RuntimeError("no generated event")
        self._live.event_before_file = value

    async def restart_extension(self) -> ExtensionSender:
        """FPVTrackside restarted (or the event opened again): the sender closes, and a new one
        starts over, ``seq`` from 1 and Hello until acknowledged. The new sender."""
        if self.notification_url is None or self._server is None:
            raise RuntimeError("ExtensionMode is not on, or the simulator is not running")
        await self._close_extension()
        return self._open_extension(self.notification_url)

    def _open_extension(self, url: str) -> ExtensionSender:
        assert self._live is not None  # the constructor refused ExtensionMode without one
        notifier = Notifier(self._live, self.extension_settings, file_lag=self.file_lag)
        sender = ExtensionSender(
            url,
            hello=notifier.hello,
            settings=self.extension_settings,
            clock=self.wall_clock,
        )
        notifier.sender = sender
        self._live.listener = notifier
        self._notifier, self.extension = notifier, sender
        sender.start()
        log.info("ExtensionMode on: events go to %s", url)
        return sender

    async def _close_extension(self) -> None:
        if self._live is not None:
            self._live.listener = None
        if self.extension is not None:
            await self.extension.close()
        if self._notifier is not None:
            self._notifier.flush()  # no race file left behind its events

    def advance(self) -> None:
        """Add one lap detection to the live race (what the background task does each interval)."""
        if self._live is None:
            raise RuntimeError("advance() needs a generated event (root=None)")
        self._live.step()

    def end_race(self) -> None:
        """Step the live race to its end; the next race is loaded but starts only at the
        next ``advance()`` (a gap between races)."""
        if self._live is None:
            raise RuntimeError("end_race() needs a generated event (root=None)")
        self._live.hold_next = True
        while not self._live.between:
            self._live.step()

    def reply(self, raw_path: str) -> Reply:
        """The reply to ``raw_path``, with traversals recorded and ``half_written`` applied."""
        built = tuple(int(part) for part in self.version.split("."))
        segments = [s for s in raw_path.split("/") if s]
        if built >= (2, 76) and segments[:1] == ["current"]:
            race = None if self._live is None else self._live.current_race
            running = race["ID"] if race is not None and race["End"] == NULL_DATE else None
            body = json.dumps({"CurrentRace": running}).encode()
            return Reply(body, "application/json", False)
        reply = resolve(self.root, self.event_id, raw_path)
        if built >= (2, 71) and segments[:1] == ["events"] and raw_path.endswith(".json"):
            if reply.body:  # as 2.71 does: only for a file that exists
                reply = dataclasses.replace(reply, content_type="application/json")
        if reply.escapes_root:
            log.warning("request path %r leaves the web root", raw_path)
            _remember(self.traversals, raw_path)
        if raw_path in self.half_written:
            reply = dataclasses.replace(reply, body=reply.body[: len(reply.body) // 2])
        return reply

    @contextlib.asynccontextmanager
    async def turn(self, method: str, raw_path: str) -> AsyncIterator[None]:
        """Queue a request behind the one lock, like the real single HttpListener loop."""
        self.requests_total += 1
        _remember(self.request_log, (method, raw_path))
        self.queued += 1
        self.max_open = max(self.max_open, self.queued + self.in_flight)
        self._active += 1
        self._idle.clear()
        waiting = True
        try:
            async with self._lock:
                self.queued -= 1
                waiting = False
                self.in_flight += 1
                self.max_in_flight = max(self.max_in_flight, self.in_flight)
                try:
                    await self._gates()
                    yield
                finally:
                    self.in_flight -= 1
        finally:
            if waiting:
                self.queued -= 1
            self._active -= 1
            if not self._active:
                self._idle.set()

    async def _gates(self) -> None:
        """Wait for ``hold`` then ``slow``; both give way when the simulator stops."""
        closing = asyncio.ensure_future(self._closing.wait())
        try:
            hold = self.hold
            if hold is not None and not hold.is_set():
                opened = asyncio.ensure_future(hold.wait())
                await asyncio.wait({opened, closing}, return_when=asyncio.FIRST_COMPLETED)
                opened.cancel()
            if self.slow > 0 and not closing.done():
                await asyncio.wait({closing}, timeout=self.slow)
        finally:
            closing.cancel()

    async def _run_live(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)  # a timer, not a wait for a condition
            try:
                self.advance()
            except OSError:
                log.exception("could not write the live race")


def _remember(log_list: list[Any], item: Any) -> None:
    log_list.append(item)
    if len(log_list) > LOG_LIMIT:
        del log_list[: len(log_list) - LOG_LIMIT]
