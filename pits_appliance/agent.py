"""The agent as one object: origin, executor, cloud link, watchdog and status server."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import Mapping

import tornado.netutil

from pits_appliance import __version__
from pits_appliance.clock import WallClock
from pits_appliance.config import AgentConfig
from pits_appliance.dialing import DialFailure, FailureLog, relay_tls
from pits_appliance.executor import Executor
from pits_appliance.extension import Extension
from pits_appliance.link import CloudLink
from pits_appliance.metrics import AgentMetrics
from pits_appliance.origin import Origin, OriginReply
from pits_appliance.pinfile import status_pin
from pits_appliance.rauc import Rauc, booted_slot, box_compatible, image_version
from pits_appliance.sdnotify import Notifier
from pits_appliance.server import StatusServer
from pits_appliance.state import AgentState
from pits_appliance.status import make_status_app
from pits_appliance.tokens import TokenStore, pits_id_from_token, token_claims, validity
from pits_appliance.update import Updater
from pits_appliance.update_race import RaceForwarder, RaceGate
from pits_appliance.upstream import TRAIT_CURRENT, UpstreamWatch
from pits_appliance.watchdog import Watchdog
from pits_appliance.watcher import Watcher
from wire import ErrorCode, ProtocolError
from wire.event import event_id_from_page, event_name
from wire.paths import Allowlist

log = logging.getLogger("pitlink.pits.agent")

# How often the agent collects reference cycles itself (see Agent._collect_loop).
COLLECT_INTERVAL = 10.0


class Agent:
    """Everything that runs on the pits box."""

    def __init__(self, config: AgentConfig, *, env: Mapping[str, str] | None = None):
        self.config = config
        version = image_version(config.update_version_file, __version__)
        self.state = AgentState(
            paused=config.paused, fpvtrackside_url=config.fpvtrackside, sw_version=version
        )
        self.metrics = AgentMetrics()
        self.origin = Origin(
            config.fpvtrackside,
            max_body_bytes=config.max_body_bytes,
            concurrency=config.origin_concurrency,
        )
        self.executor = Executor(
            self.origin, Allowlist(config.allowlist), fetch_timeout=config.fetch_timeout
        )
        self.upstream = UpstreamWatch(self.origin, timeout=config.fetch_timeout)
        self.tokens = TokenStore(config.token_file, configured=config.token)
        self.tls = relay_tls(config.cloud_ca)
        # Never during a race: ExtensionMode's word, else the race files, else the fetches.
        self.race_gate = RaceGate(
            files_running=lambda: (
                None if self.watcher.race.path is None else self.watcher.race.running
            ),
            last_fetch=lambda: self.state.last_fetch,
            last_push=lambda: self.state.last_push,
            fetch_window=config.update_race_fetch_window,
            rate=None if config.update_race_rate is None else int(config.update_race_rate),
            poll=config.update_race_poll,
        )
        self.updater = Updater(
            state_dir=config.state_dir,
            slot=booted_slot(config.update_cmdline),
            version=version,
            compatible=box_compatible(),
            rauc=Rauc(config.update_rauc),
            reboot=config.update_reboot_command,
            bundle_dirs=config.update_dirs,
            idle_restart=config.update_idle_restart,
            scan_interval=config.update_scan_interval,
            attempts=config.update_attempts,
            relay_url=lambda: self.state.relay_url or config.cloud_url,
            token=self.tokens.current,
            last_fetch=lambda: self.state.last_fetch,
            tls=self.tls,
            race=None if config.update_during_races else self.race_gate,
            usb_dir=config.update_usb_dir,
        )
        self.updater.on_change = self._update_changed
        self.link = CloudLink(
            config=config,
            executor=self.executor,
            state=self.state,
            metrics=self.metrics,
            tokens=self.tokens,
            tls=self.tls,
            updater=self.updater,
        )
        # The race watched on the LAN; what changes, and what FPVTrackside says, pushed up.
        self.watcher = Watcher(
            self.executor,
            self.state,
            self.metrics,
            watch_interval=config.watch_interval,
            event_interval=config.watch_event_interval,
            look_interval=config.race_look_interval,
            lan_budget=config.lan_budget,
            timeout=config.fetch_timeout,
        )
        self.forwarder = RaceForwarder(self.metrics, self.race_gate)
        self.extension = Extension(
            fpvtrackside_url=config.fpvtrackside,
            state=self.state,
            metrics=self.metrics,
            forwarder=self.forwarder,
            poke_race=self.watcher.poke_race,
            look_now=self.watcher.look_now,
        )
        self.link.frames.push_listeners += [self.watcher, self.forwarder]
        self.link.frames.watch = self.watcher.relay_watch
        self.wall_clock = WallClock(
            saved=None if config.state_dir is None else config.state_dir / "clock",
            may_set=config.set_clock,
        )
        self.watchdog = Watchdog(
            config=config,
            state=self.state,
            metrics=self.metrics,
            reconnect=self.link.reconnect_now,
            dial=self.link.dial_now,
            wall_clock=self.wall_clock,
            tls=self.tls,
        )
        self.systemd = Notifier(env)
        self.status_port: int | None = None
        self._server: StatusServer | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.collect_interval = COLLECT_INTERVAL
        self._origin_failures = FailureLog()
        self._check_failures = FailureLog()  # the check itself failing (see _watch_origin)
        self._reported_dead: set[asyncio.Task[None]] = set()

    # -- start and stop -----------------------------------------------------------------------

    def import_token(self) -> None:
        """Take a TOKEN from the settings into the token file (see TokenStore.import_configured)."""
        self.tokens.import_configured()

    async def start(self) -> None:
        """Serve the status page, then dial the relay, watch FPVTrackside and the uplink."""
        self.import_token()
        token = self.tokens.current()
        token_claims(token)  # a plain error on the page when the file holds no token
        self.state.pits_id = self.config.pits_id or pits_id_from_token(token)
        self.state.token_issued, self.state.token_expires = validity(token)
        sockets = tornado.netutil.bind_sockets(self.config.status_port, self.config.status_host)
        self._server = StatusServer(make_status_app(self, status_pin(self.config)))
        self._server.add_sockets(sockets)
        self.status_port = sockets[0].getsockname()[1]
        await self.updater.start()
        self._tasks = [
            asyncio.create_task(self.link.run(), name="the link to the relay"),
            asyncio.create_task(self._watch_origin(), name="the FPVTrackside check"),
            asyncio.create_task(self.watchdog.run(), name="the connectivity watchdog"),
            asyncio.create_task(self.watcher.run(), name="the race watcher"),
            asyncio.ensure_future(self._systemd_loop()),
            asyncio.ensure_future(self._collect_loop()),
            asyncio.ensure_future(self.updater.run()),
        ]
        self.systemd.ready()
        log.info(
            "agent started",
            extra={
                "pits_id": self.state.pits_id,
                "status_port": self.status_port,
                "relay": self.config.cloud_url,
            },
        )

    async def stop(self) -> None:
        """Stop every task, then wait (a little, all at once) for what they leave running: the
        last link's closing handshake, and the HTTP requests a cancelled task was waiting on
        (a probe, an origin check, a bundle range; see pits_appliance.httpclient)."""
        self.systemd.stopping()
        self.link.stop()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await asyncio.gather(
            self.link.settle(), self.updater.close(), self.origin.close(), self.watchdog.close()
        )
        if self._server is not None:
            self._server.stop()
            await self._server.close_all_connections()
        self.systemd.close()
        log.info("agent stopped")

    # -- what runs ----------------------------------------------------------------------------

    async def _watch_origin(self) -> None:
        """Check now and then that FPVTrackside answers, and which event it has open.

        One check that fails in a way nobody foresaw (an answer no parser expected) must not
        end the task: that withholds the watchdog, and systemd would restart the agent for
        as long as FPVTrackside answers so. It is logged with its traceback, when it starts or
        changes and every five minutes while it lasts, and the checks go on.
        """
        while True:
            try:
                await self.extension.refresh_addresses()
                await self.check_origin()
            except Exception as exc:
                failure = DialFailure("network", f"{type(exc).__name__}: {str(exc)[:200]}")
                held = self._check_failures.should_log(failure, time.monotonic())
                if held is not None:
                    log.error(
                        "the FPVTrackside check failed; it goes on",
                        exc_info=exc,
                        extra={"error": failure.text, "failed_since_last_line": held},
                    )
            else:
                self._check_failures.reset()
            await asyncio.sleep(self.config.origin_check_interval)

    async def check_origin(self) -> None:
        """Ask FPVTrackside for its page: does it answer, and which event has it open?

        A failure goes in the log (WARNING, with the address and the error) when it starts or
        changes and every five minutes while it lasts; its return, at INFO.
        """
        url = self.config.fpvtrackside
        try:
            reply = await self.origin.get("/", self.config.fetch_timeout)
            if reply.status != 200:
                raise ProtocolError(
                    ErrorCode.ORIGIN_UNREACHABLE,
                    f"FPVTrackside at {url} answered HTTP {reply.status}",
                )
        except ProtocolError as exc:
            self.upstream.lost()
            self.state.set("origin_reachable", False)
            self.state.origin_error = exc.message
            held = self._origin_failures.should_log(
                DialFailure("network", exc.message), time.monotonic()
            )
            if held is not None:
                log.warning(
                    "FPVTrackside is not answering",
                    extra={"url": url, "error": exc.message, "failed_since_last_line": held},
                )
        else:
            if self.state.origin_reachable is False:
                log.info("FPVTrackside answers again", extra={"url": url})
            self._origin_failures.reset()
            self.state.set("origin_reachable", True)
            self.state.origin_error = None
            event = event_id_from_page(reply.body)
            event_json = None
            if event != self.state.origin_event or (event and not self.state.origin_event_name):
                event_json = await self._event_json(event)
                self.state.origin_event_name = (
                    event_name(event_json.body)
                    if event_json is not None and event_json.status == 200
                    else None
                )
                log.info(
                    "FPVTrackside event",
                    extra={"event_id": event, "event_name": self.state.origin_event_name},
                )
            self.state.set("origin_event", event)
            self.watcher.set_event(event)
            await self._which_fpvtrackside(event, reply.server, event_json)
        self.state.origin_checked = time.time()

    async def _which_fpvtrackside(
        self, event: str | None, server: str | None, event_json: OriginReply | None
    ) -> None:
        """Look again at which FPVTrackside answers when it is time; tell the relay of a change."""
        now = time.monotonic()
        if not self.upstream.due(now, event=event, server=server):
            return
        if await self.upstream.look(now, event=event, server=server, event_json=event_json):
            seen = self.state.fpvtrackside = self.upstream.seen
            self.watcher.set_current(seen is not None and TRAIT_CURRENT in seen.traits)
            self.link.frames.send_fpvtrackside()

    async def _event_json(self, event: str | None) -> OriginReply | None:
        """The open event's Event.json (its name, and how FPVTrackside types it), if it answers."""
        if event is None:
            return None
        try:
            return await self.origin.get(f"/events/{event}/Event.json", self.config.fetch_timeout)
        except ProtocolError:
            return None

    def healthy(self) -> bool:
        """The loop runs (we are here) and none of the agent's tasks has died.

        A task that died is logged once, by name and with what killed it.
        """
        dead = [task for task in self._tasks[:4] if task.done()]
        for task in dead:
            if task not in self._reported_dead:
                self._reported_dead.add(task)
                error = None if task.cancelled() else task.exception()
                log.error(
                    "an agent task died; withholding the watchdog so systemd restarts us",
                    extra={"task": task.get_name(), "error": repr(error) if error else "cancelled"},
                    exc_info=error,
                )
        return not dead

    def status_line(self) -> str:
        s = self.state
        link = (
            "cloud link up"
            if s.ws_connected
            else f"cloud link down ({s.cloud_error or 'connecting'})"
        )
        origin = {
            True: "FPVTrackside answering",
            False: "FPVTrackside not answering",
            None: "FPVTrackside not checked yet",
        }[s.origin_reachable]
        return f"{link}; {origin}; Internet {s.connectivity}{'; paused' if s.paused else ''}"

    def systemd_tick(self) -> bool:
        """Tell systemd we are alive, if we are healthy; True when WATCHDOG=1 went out."""
        self.systemd.status(self.status_line())
        if not self.healthy():
            return False
        return self.systemd.watchdog_interval is not None and self.systemd.watchdog()

    async def _systemd_loop(self) -> None:
        """WATCHDOG=1 from the event loop itself: a blocked loop sends nothing and is restarted."""
        interval = self.systemd.watchdog_interval or 5.0
        while True:
            self.systemd_tick()
            await asyncio.sleep(interval)

    async def _collect_loop(self) -> None:
        """Collect reference cycles every few seconds instead of when CPython gets round to it.

        Every dropped link and failed origin request leaves cycles behind (an exception's
        traceback holds the frames that hold the stream or future that holds the exception).
        CPython's full collection waits until the long-lived objects grow by a quarter, so on a
        flaky uplink that garbage piled up for minutes and the agent's memory crept upwards
        (the soak measured 34 to 40 MB in 30 minutes). Collecting on a timer keeps it flat; with
        about 30,000 objects one collection takes a few milliseconds.
        """
        while True:
            await asyncio.sleep(self.collect_interval)
            gc.collect()

    # -- local actions (status page) ----------------------------------------------------------

    def _update_changed(self) -> None:
        self.state.update = self.updater.view()

    def install_now(self) -> dict[str, object]:
        """The status page's Install now."""
        return self.updater.install_now()

    def downgrade(self, bundle: str) -> dict[str, object]:
        """The status page's "Install this older version" (a bundle on the USB stick)."""
        return self.updater.downgrade(bundle)

    def set_paused(self, paused: bool) -> None:
        self.state.set("paused", paused)
        self.link.frames.paused()
        log.warning("answering the cloud " + ("paused" if paused else "resumed") + " at the pits")
