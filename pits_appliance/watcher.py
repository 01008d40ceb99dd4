"""The box watches the race on the LAN and pushes what changed to the relay, unasked.

While the link is up to a relay that takes pushes (feature `push`, wire.push), the watcher
re-reads, one request at a time and within the LAN budget (pits_appliance.lanbudget):

- the race running now's `Race.json` every `--watch-interval` (pits_appliance.racenow says
  which race that is, and looks for it now and then);
- the open event's `Results.json` and `Rounds.json` every `--watch-event-interval`;
- the paths the relay asks for in its `watch` frame (those its spectators read lately), at the
  relay's interval; each checked as a fetch would be (normalized, allowlisted).

What each read comes to is pits_appliance.changes': a `change` with the new body when it
changed, a `still` after a quiet round. A `watching` frame says what is watched whenever that
or the race now changes. FPVTrackside's ExtensionMode events (pits_appliance.extension) poke
it: any event re-reads the race file at once, a race loaded, started or ended looks for the
race now at once.

With a relay that does not take pushes nothing of this runs: the box answers fetches as ever.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable

from pits_appliance.changes import Changes, Read
from pits_appliance.executor import Executor
from pits_appliance.lanbudget import LOOK, Schedule
from pits_appliance.metrics import AgentMetrics
from pits_appliance.origin import OriginReply
from pits_appliance.racenow import RaceNow
from pits_appliance.state import AgentState
from wire import ProtocolError
from wire.budget import Throttle
from wire.paths import normalize_path
from wire.push import (
    MAX_INTERVAL_MS,
    MAX_WATCHED,
    MIN_INTERVAL_MS,
    TYPES,
    PushMessage,
    Still,
    Watch,
)
from wire.push import Watching as WatchingFrame

log = logging.getLogger("pitlink.pits.watcher")

EVENT_FILES = ("Results.json", "Rounds.json")


class Watcher:
    """Reads the watched paths on their schedule and hands what changed to `send`."""

    def __init__(
        self,
        executor: Executor,
        state: AgentState,
        metrics: AgentMetrics,
        *,
        watch_interval: float = 0.2,
        event_interval: float = 1.0,
        look_interval: float = 2.0,
        lan_budget: float = 20.0,
        timeout: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.executor = executor
        self.state = state
        self.metrics = metrics
        self.watch_interval = watch_interval
        self.event_interval = event_interval
        self.timeout = timeout
        self.clock = clock
        now = clock()
        self.race = RaceNow(look_interval=look_interval, quick_interval=watch_interval, now=now)
        self.schedule = Schedule(budget=lan_budget, now=now)
        self.changes = Changes(executor.known)
        self.send: Callable[[PushMessage], bool] | None = None  # while pushing
        self._relay: tuple[str, ...] = ()
        self._relay_interval = 1.0
        self._watching: WatchingFrame | None = None  # what `watching` said last on this link
        self._replan = True
        self._wake = asyncio.Event()
        self._failures = Throttle(60.0)

    # -- what the link and the agent say ------------------------------------------------------

    @property
    def pushing(self) -> bool:
        return self.send is not None

    def start(self, send: Callable[[PushMessage], bool]) -> None:
        """The link is up to a relay that takes pushes: push everything anew through `send`."""
        self.send = send
        self._relay = ()
        self._watching = None
        self.changes.forget()
        self._changed()
        log.info("pushing to the relay")

    def stop(self) -> None:
        """The link is down (or the relay takes no pushes): watching stops."""
        if self.send is not None:
            log.info("not pushing any more")
        self.send = None
        self._relay = ()

    def relay_watch(self, watch: Watch) -> None:
        """The relay's `watch`: the paths its spectators read lately (replaces the last)."""
        paths: list[str] = []
        refused = 0
        for raw in watch.paths:
            try:
                path = normalize_path(raw)
                self.executor.allowlist.check(path)
            except ProtocolError:
                refused += 1
                continue
            paths.append(path)
        if refused:
            log.debug("relay asked to watch paths it may not fetch", extra={"refused": refused})
        self._relay = tuple(dict.fromkeys(paths))
        self._relay_interval = watch.interval_ms / 1000
        self._changed()

    def set_event(self, event: str | None) -> None:
        """The event FPVTrackside has open (the agent reads it from its page)."""
        before = self.race.event
        self.race.set_event(event, self.clock())
        if self.race.event != before:
            self._changed()

    def set_current(self, answers_current: bool) -> None:
        """Whether FPVTrackside answers GET /current (it is 2.76 or later)."""
        self.race.set_current(answers_current)

    def poke_race(self) -> None:
        """Re-read the race now's file as soon as the budget allows."""
        path = self.race.path
        if path is not None:
            self.schedule.poke(path, self.clock())
            self._wake.set()

    def look_now(self) -> None:
        """Look for the race now at once."""
        self.race.poke(self.clock())
        self._wake.set()

    # -- what is watched ------------------------------------------------------------------------

    def wanted(self) -> dict[str, float]:
        """Every path to watch and its interval: the race file, the event's, the relay's."""
        allowed = self.executor.allowlist.allows
        wanted: dict[str, float] = {}
        race = self.race.path
        if race is not None and allowed(race):
            wanted[race] = self.watch_interval
        for name in EVENT_FILES:
            path = self.race.event_file(name)
            if path is not None and allowed(path):
                wanted[path] = self.event_interval
        for path in self._relay:
            wanted[path] = min(wanted.get(path, math.inf), self._relay_interval)
        return dict(list(wanted.items())[:MAX_WATCHED])

    def watching(self) -> WatchingFrame:
        """The `watching` frame for what is watched now."""
        paths = tuple(self.schedule.interval)
        race = self.schedule.first if self.schedule.first in paths else None
        interval = round(self.schedule.round_length() * 1000)
        return WatchingFrame(
            paths=paths,
            interval_ms=min(MAX_INTERVAL_MS, max(MIN_INTERVAL_MS, interval)),
            race=race,
        )

    def _changed(self) -> None:
        self._replan = True
        self._wake.set()

    def _plan(self, now: float) -> None:
        """Bring the schedule and the rounds up to date with what is wanted; say it."""
        if self._replan:
            self._replan = False
            wanted = self.wanted()
            race = self.race.path if self.race.path in wanted else None
            if self.schedule.plan(wanted, race, now) or tuple(wanted) != self.changes.paths:
                self.changes.watch(wanted)
            self.metrics.watched_paths.set(len(wanted))
            self.state.watched = len(wanted)
            self.state.race_now = race
        frame = self.watching()
        if frame != self._watching and self._send(frame):
            self._watching = frame
            log.info(
                "watching",
                extra={
                    "paths": len(frame.paths),
                    "interval_ms": frame.interval_ms,
                    "race": frame.race,
                },
            )

    # -- the loop -------------------------------------------------------------------------------

    async def run(self) -> None:
        """Read what is due, one request at a time, while pushing; idle otherwise.

        A step that fails in a way nobody foresaw (an answer no parser expected) is logged,
        at most once a minute, and watching goes on after a second.
        """
        while True:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise asyncio.CancelledError  # a cancellation something below swallowed
            try:
                await self._step()
            except Exception as exc:
                held = self._failures.allow("step", self.clock())
                if held is not None:
                    log.error(
                        "the watcher failed; it goes on", exc_info=exc, extra={"held_back": held}
                    )
                await asyncio.sleep(1.0)

    async def _step(self) -> None:
        """One read of what is due, or a wait until something is."""
        if not self.pushing:
            await self._sleep(math.inf)
            return
        now = self.clock()
        self._plan(now)
        key, wait = self.schedule.next(now, look=self.race.next_look())
        if key is None:
            await self._sleep(wait)
            return
        path = self.race.next_read(now) if key == LOOK else key
        if path is None:
            self.schedule.done(key, now)
            return
        reply = await self._get(path)
        self.schedule.done(key, now)
        self._answer(key, path, reply, self.clock())

    def _answer(self, key: str, path: str, reply: OriginReply | None, now: float) -> None:
        """Hand one read's answer to whoever waits for it (the race finder, the rounds)."""
        if key == LOOK:
            self.metrics.lan_requests.labels("look").inc()
            if reply is None:
                self.race.failed(path, now)
            elif self.race.answer(path, reply.status, reply.body, now):
                self._changed()
            return
        if reply is None:
            self.metrics.lan_requests.labels("failed").inc()
            return
        if path == self.race.path:
            self.race.race_read(reply.body, now)
        outcome, change = self.changes.read(path, reply.status, reply.body)
        self.metrics.lan_requests.labels(outcome.value).inc()
        if change is not None and self._send(change):
            self.changes.pushed(change)
            self.state.last_push = time.time()
        if outcome is not Read.BAD and self.changes.still(now, self.schedule.round_length()):
            self._send(Still())

    async def _get(self, path: str) -> OriginReply | None:
        try:
            return await self.executor.origin_get(path, self.timeout)
        except ProtocolError as exc:
            log.debug("watched path not read", extra={"path": path[:200], "error": exc.message})
            return None

    def _send(self, message: PushMessage) -> bool:
        send = self.send
        if send is None or not send(message):
            return False
        self.metrics.push_frames.labels(TYPES[type(message)]).inc()
        return True

    async def _sleep(self, seconds: float) -> None:
        """Wait `seconds` (inf: until woken), or until something changes.

        asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow a cancellation that
        comes as the event is set, and the agent's stop would then wait for this task forever.
        """
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(None if math.isinf(seconds) else seconds):
                await self._wake.wait()
        self._wake.clear()
