"""The Updater's steps held while a race runs (pits_appliance/update_race.py knows whether
one runs): the download before each range and its pace, the install, the restart."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from pits_appliance.update_race import Pace, RaceGate
from wire.messages import Offer, UpdateReport

log = logging.getLogger("pitlink.pits.update")


class HoldSide:
    """Holds an update's steps while a race runs (pits_appliance.update.Updater holds the
    state)."""

    race: RaceGate | None
    held: dict[str, str] | None
    report: UpdateReport | None
    on_change: Callable[[], None]
    _pace: Pace | None

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
        raise NotImplementedError

    async def _hold(self, step: str, state: str, version: str) -> None:
        """Wait while a race runs before `step` (`downloading`, `installing`), saying so."""
        if self.race is None:
            return

        def on_hold(why: str) -> None:
            self.held = {"step": step, "why": why}
            r = self.report
            log.info("update waits for the race to end", extra={"step": step, "why": why})
            self._set(
                state,
                version,
                f"Waits for the race to end before {step} ({why}).",
                done=r.done if r else None,
                total=r.total if r else None,
                persist=False,
            )

        if await self.race.wait(on_hold):
            self.held = None
            log.info("the race has ended; the update goes on", extra={"step": step})
            self.on_change()

    async def _paced(self, offer: Offer, chunk: int) -> int:
        """Before each range of a download: no race running, and the pace while data flows."""
        await self._hold("downloading", "downloading", offer.version)
        assert self._pace is not None
        size, wait = self._pace.chunk(chunk)
        if wait > 0:
            await asyncio.sleep(wait)  # spacing the ranges: a pace, not a wait for a condition
        return size

    def _hold_restart(self) -> bool:
        """Whether a due restart must wait for a race to end (the page says so)."""
        why = self.race.running() if self.race is not None else None
        held = {"step": "restarting", "why": why} if why is not None else None
        if held != self.held:
            self.held = held
            log.info("update restart waits for the race to end" if why else "restart free")
            self.on_change()
        return why is not None
