"""Signed A/B updates: take a bundle the relay offers (or one on a USB stick or the boot
partition), let RAUC check and install it into the slot not running, and restart into it only
when the organiser says so or when nobody has fetched anything for a while.

Nothing here trusts the offer: the download must match the offer's size and sha256, RAUC checks
the signature against the box's own keyring, and the bundle's compatible and version (as RAUC
reads them) must be this box's and the offer's. After the restart, RAUC and the bootloader keep
the new slot or fall back to the old one; the agent only reads which happened (`start`).

The rooms around this one: the download (pits_appliance/update_download.py, into
`STATE_DIR/update/<bundle>.raucb.part`, resumed from its size), the state files
(update_files.py), bundles without a relay (update_local.py) and the restart command
(update_restart.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import shlex
import ssl
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from pits_appliance.rauc import Rauc, RaucError, clean
from pits_appliance.update_checks import bundle_refusal
from pits_appliance.update_download import BundleDownload, Stop, bundles_url
from pits_appliance.update_files import (
    OTHER,
    RECORD,
    REPORT,
    Pending,
    UpdateFiles,
)
from pits_appliance.update_floor import Floor
from pits_appliance.update_hold import HoldSide
from pits_appliance.update_local import MAX_LOCAL_CHECKED, MAX_LOCAL_LISTED, newest_unhandled
from pits_appliance.update_race import Pace, RaceGate
from pits_appliance.update_restart import RestartSide, installed_text
from pits_appliance.update_usb import UsbBundle, UsbSide
from wire.messages import Offer, UpdateReport

__all__ = ["MAX_LOCAL_CHECKED", "MAX_LOCAL_LISTED", "Pending", "Updater", "bundles_url"]

log = logging.getLogger("pitlink.pits.update")

MIB = 1024 * 1024
CHUNK = 4 * MIB  # bytes asked for in one request: each is short, and a cut costs at most this
KEEP_FREE = 32 * MIB  # left free in the state folder after a download
REPORT_EVERY = 1.0  # seconds between progress reports while a download runs
NOT_AN_APPLIANCE = "this agent was not started from an appliance image with two slots"
NO_STATE_DIR = "the agent has no STATE_DIR to keep an update in"


class Updater(RestartSide, HoldSide, UsbSide):
    """One update at a time, from an offer or a local bundle to a restart into the new slot."""

    def __init__(
        self,
        *,
        state_dir: Path | None,
        slot: str | None,
        version: str,
        compatible: str,
        rauc: Rauc,
        reboot: str | Sequence[str] = "systemctl reboot",
        bundle_dirs: Sequence[Path] = (),
        idle_restart: float | None = 1200.0,
        scan_interval: float = 60.0,
        attempts: int = 20,
        relay_url: Callable[[], str] = lambda: "",
        token: Callable[[], str] = lambda: "",
        last_fetch: Callable[[], float | None] = lambda: None,
        tls: ssl.SSLContext | None = None,
        now: Callable[[], float] = time.time,
        rand: Callable[[], float] = random.random,
        chunk: int = CHUNK,
        keep_free: int = KEEP_FREE,
        retry_base: float = 1.0,
        race: RaceGate | None = None,
        usb_dir: Path | None = None,
    ):
        self.state_dir = state_dir
        self.slot = slot
        self.version = version
        self.compatible = compatible
        self.rauc = rauc
        self.reboot = shlex.split(reboot) if isinstance(reboot, str) else list(reboot)
        self.bundle_dirs = list(bundle_dirs)
        self.idle_restart = idle_restart
        self.scan_interval = scan_interval
        self.attempts = attempts
        self.relay_url = relay_url
        self.token = token
        self.last_fetch = last_fetch
        self.tls = tls
        self.now = now
        self.rand = rand
        self.chunk = chunk
        self.keep_free = keep_free
        self.retry_base = retry_base
        self.race = race
        self.usb_dir = usb_dir
        self.usb: list[UsbBundle] = []  # the USB stick's bundles (update_usb.py)
        self._usb_seen: dict[tuple[str, int, float], UsbBundle] = {}
        self.held: dict[str, str] | None = None  # the step waiting for a race to end, and why
        self._pace = Pace(race) if race is not None else None
        self.why_not = NOT_AN_APPLIANCE if slot is None else NO_STATE_DIR if not state_dir else None
        self.floor = Floor(state_dir) if self.why_not is None and state_dir else None
        # Told of every change: the link sends the report, the agent refreshes the page.
        self.send: Callable[[UpdateReport], None] = lambda report: None
        self.on_change: Callable[[], None] = lambda: None
        self.report: UpdateReport | None = None
        self.pending: Pending | None = None
        self.restart_requested = False
        self.restarting = False
        self.awaiting_good = False  # restarted into an update, waiting to hear it is good
        self.on_trial = False  # the slot running is not marked good: nothing is installed
        self.trial_known = False  # RAUC has answered (it may not be up when the agent starts)
        self.after_good: Offer | None = None  # an offer held until it is
        self._offer: Offer | None = None
        self._job: asyncio.Task[None] | None = None
        self._installing = False
        self._refused: set[str] = set()  # bundle ids refused: a re-offer is not downloaded again
        self._last_progress = 0.0
        self._next_scan = 0.0
        self._sha_cache: dict[tuple[str, int, float], str] = {}
        self._wake = asyncio.Event()

    @property
    def files(self) -> UpdateFiles:
        assert self.state_dir is not None
        return UpdateFiles(self.state_dir)

    # -- reports ------------------------------------------------------------------------------

    def _set(
        self,
        state: str,
        version: str,
        message: str = "",
        *,
        done: int | None = None,
        total: int | None = None,
        persist: bool = True,
    ) -> None:
        self.report = UpdateReport(
            state=state,
            version=version,
            done=done,
            total=total,
            message=clean(message, 1000),
            at_ms=int(self.now() * 1000),
        )
        if persist and self.state_dir is not None:
            self.files.save(REPORT, self.report.payload())
        log.info("update", extra={"state": state, "version": version, "detail": message[:300]})
        self.send(self.report)
        self.on_change()

    def view(self) -> dict[str, Any]:
        """What the status page shows of updates."""
        r = self.report
        return {
            "available": self.why_not is None,
            "whyNot": self.why_not,
            "slot": self.slot,
            "version": self.version,
            "state": r.state if r else None,
            "updateVersion": r.version if r else None,
            "done": r.done if r else None,
            "total": r.total if r else None,
            "message": r.message if r else "",
            "canInstall": self.pending is not None and not self.restarting,
            "requested": self.restart_requested,
            "idleRestart": self.idle_restart,
            "held": self.held,
            "usb": self.usb_view(),
        }

    # -- start: what became of the last update -------------------------------------------------

    async def start(self) -> None:
        """Read the last report and the restart record, and say how the last update ended."""
        if self.why_not is not None:
            self.on_change()
            return
        if self.floor is not None:
            self.floor.raise_to(self.version)
        saved = self.files.load(REPORT)
        try:
            self.report = UpdateReport.parse(saved) if saved else None
        except Exception:
            self.report = None
        record = self.files.load(RECORD)
        if record is not None:
            self._outcome(record)
        elif self.report is not None and self.report.state == "installed" and self.slot in OTHER:
            # Installed, then the agent (not the box) restarted: the slot is still waiting.
            self.pending = Pending(self.report.version, OTHER[self.slot], self.now())
        elif self.report is not None and self.report.state in (
            "offered",
            "downloading",
            "installing",
            "restarting",
        ):
            self._set(
                "failed",
                self.report.version,
                "The agent restarted before the update was done; nothing changed. It carries "
                "on when the relay offers the update again.",
            )
        await self.check_good()
        self.on_change()

    # -- offers ---------------------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        job = self._job is not None and not self._job.done()
        trial = self.awaiting_good or self.on_trial
        return job or trial or self._installing or self.pending is not None or self.restarting

    def offer(self, offer: Offer) -> None:
        """An offer from the relay: start on it, replace a pending download, or withdraw one."""
        working = self._job is not None and not self._job.done()
        if offer.bundle is None:
            self.after_good = None
            if working and not self._installing and self._offer is not None:
                assert self._job is not None
                self._job.cancel()
                self._set(
                    "failed",
                    self._offer.version,
                    "The relay withdrew the offer before it was installed; nothing changed.",
                )
                self._offer = None
            return
        if self.why_not is not None:
            self._set("refused", offer.version, self.why_not[0].upper() + self.why_not[1:] + ".")
            return
        if self._offer is not None and self._offer.bundle == offer.bundle and self.busy:
            return  # already on it (the relay offers again on each connection)
        if offer.bundle in self._refused:
            return
        if self._installing or self.pending is not None or self.restarting:
            log.info("update offer held: one is already installed", extra={"bundle": offer.bundle})
            return
        if offer.version == self.version:
            log.info("update offer for the version running", extra={"version": offer.version})
            return
        why = (
            f"The bundle is for {offer.compatible}; this box is {self.compatible}."
            if offer.compatible != self.compatible
            else self.floor.refuses(offer.version)
            if self.floor is not None
            else None
        )
        if why is not None:
            self._refused.add(offer.bundle)
            self._set("refused", offer.version, why)
            return
        if self.awaiting_good or self.on_trial:
            if self.after_good != offer:
                log.info(
                    "update offer held: this slot is on trial until it is marked good",
                    extra={"bundle": offer.bundle, "version": offer.version},
                )
            self.after_good = offer
            return
        if working:
            assert self._job is not None
            self._job.cancel()
        self._offer = offer
        self._set("offered", offer.version, done=0, total=offer.size)
        self._job = asyncio.create_task(self._take(offer), name="update download")

    async def _take(self, offer: Offer) -> None:
        await self._hold("downloading", "offered", offer.version)  # before the first byte
        try:
            path = await BundleDownload(
                url=bundles_url(self.relay_url(), offer.bundle or ""),
                token=self.token,
                tls=self.tls,
                chunk=self.chunk,
                attempts=self.attempts,
                retry_base=self.retry_base,
                rand=self.rand,
                keep_free=self.keep_free,
                progress=lambda done, force: self._progress(offer, done, force=force),
                pace=None if self.race is None else lambda chunk: self._paced(offer, chunk),
            ).run(offer, self.files.path("update"))
        except Stop as stop:
            if stop.state == "refused":
                assert offer.bundle is not None
                self._refused.add(offer.bundle)
            self._set(stop.state, offer.version, stop.message)
            return
        await self._install(path, offered=offer.version, delete=True)

    def _progress(self, offer: Offer, done: int, *, force: bool = False) -> None:
        now = self.now()
        if force or now - self._last_progress >= REPORT_EVERY:
            self._last_progress = now
            self._set("downloading", offer.version, done=done, total=offer.size, persist=False)

    # -- install --------------------------------------------------------------------------------

    async def _install(
        self, bundle: Path, *, offered: str | None, delete: bool, downgrade: str | None = None
    ) -> None:
        """RAUC checks the bundle, then writes it to the other slot; `downgrade`: the version
        the status page's downgrade action chose (its permit is removed once this ends)."""
        self._installing = True
        version = offered or "?"
        try:
            await self._hold("installing", "installing", version)
            self._set("installing", version, "RAUC is checking the bundle's signature.")
            try:
                info = await self.rauc.info(bundle)
            except RaucError as exc:
                self._set("refused", version, exc.message)
                return
            why = bundle_refusal(
                info,
                compatible=self.compatible,
                offered=offered,
                running=self.version,
                floor=self.floor,
                downgrade=downgrade,
            )
            if why is not None:
                self._set("refused", info.version, why)
                return
            to_slot = OTHER.get(self.slot or "", "?")
            self._set("installing", info.version, f"RAUC is writing slot {to_slot}.")
            try:
                await self.rauc.install(bundle)
            except RaucError as exc:
                self._set("failed", info.version, exc.message)
                return
            self.pending = Pending(info.version, to_slot, self.now())
            self._set(
                "installed",
                info.version,
                installed_text(info.version, to_slot, self.idle_restart),
            )
        finally:
            self._installing = False
            if downgrade is not None and self.floor is not None:
                self.floor.end_permit()
            if delete:
                bundle.unlink(missing_ok=True)  # noqa: ASYNC240 (local, tiny)

    # -- local bundles --------------------------------------------------------------------------

    async def scan_local(self) -> None:
        """Install the newest `*.raucb` in the update folders not dealt with before."""
        if self.why_not is not None or self.busy:
            return
        handled = self.files.handled()
        chosen = await newest_unhandled(self.bundle_dirs, handled, self._sha_cache)
        if chosen is None:
            return
        self.files.save_handled(handled)
        log.info("local update bundle", extra={"path": str(chosen)})
        self._job = asyncio.create_task(self._local(chosen), name="local update")

    async def _local(self, path: Path) -> None:
        try:
            info = await self.rauc.info(path)
        except RaucError:
            info = None
        if info is not None and info.version == self.version:
            log.info("local bundle holds the version running", extra={"path": str(path)})
            return  # left on the stick or the boot partition after its own update
        await self._install(path, offered=None, delete=False)

    # -- the loop -------------------------------------------------------------------------------

    async def tick(self) -> None:
        """One look: restart if due, look in the update folders, read RAUC's verdict."""
        now = self.now()
        reason = self.restart_due(now)
        if reason is not None and not self._hold_restart():
            await self.restart(reason)
        if now >= self._next_scan:
            self._next_scan = now + self.scan_interval
            if self.why_not is None and (
                self.awaiting_good or self.on_trial or not self.trial_known
            ):
                await self.check_good()
            await self.scan_local()
            await self.look_usb()

    async def run(self) -> None:
        while True:
            await self.tick()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 1.0)
            self._wake.clear()

    def _start_job(self, job: Coroutine[Any, Any, None], name: str) -> None:
        self._job = asyncio.create_task(job, name=name)

    async def close(self) -> None:
        if self._job is not None and not self._job.done():
            self._job.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._job
