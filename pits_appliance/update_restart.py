"""The restart into a newly installed slot, and what became of it: when it is due (Install
now, or a quiet box), the record written before it, the reboot command, and after it the
slot RAUC booted and whether the box marked it good.

The reboot command runs in a thread, not as an asyncio subprocess: the agent may be stopped
(by this very restart) while the command runs, and a thread simply finishes, where a
cancelled asyncio subprocess would leave its pipes behind.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
from collections.abc import Callable, Sequence
from typing import Any

from pits_appliance.rauc import Rauc, RaucError, clean
from pits_appliance.update_files import RECORD, Pending, UpdateFiles
from pits_appliance.update_race import RaceGate
from wire.messages import Offer

log = logging.getLogger("pitlink.pits.update")


async def run_reboot(command: Sequence[str], timeout: float = 60.0) -> str | None:
    """Run the reboot command; None when it worked, else why not (cleaned, bounded)."""
    try:
        done = await asyncio.to_thread(
            subprocess.run,
            list(command),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=timeout,
            check=False,
        )
        code, err = done.returncode, done.stderr[-4096:]
    except (OSError, subprocess.TimeoutExpired) as exc:
        code, err = -1, str(exc).encode()
    if code == 0:
        return None
    return clean(err.decode("utf-8", "replace"), 200)


def installed_text(version: str, to_slot: str, idle_restart: float | None) -> str:
    """What the page says of an installed update waiting for its restart."""
    when = "Press Install now to restart into it"
    if idle_restart is not None:
        when += f", or it restarts by itself after {idle_restart / 60:g} min without spectators"
    return f"Version {version} is in slot {to_slot}. {when}."


def restart_outcome(record: dict[str, Any], slot: str | None, running: str) -> tuple[str, str, str]:
    """What became of the restart `record` (update.json) on a box now on `slot` running
    `running`: (state, version, message); `installed` means it came up and waits to be
    marked good."""
    version = str(record.get("version", ""))[:64]
    to_slot = str(record.get("toSlot", ""))
    if slot == to_slot and running == version:
        return (
            "installed",
            version,
            f"Version {version} is running in slot {to_slot}; the box marks it good once "
            "it has run well for a while.",
        )
    if slot == to_slot:
        return "failed", version, f"slot {to_slot} came up with version {running}, not {version}"
    return (
        "rolled-back",
        version,
        f"Version {version} did not come up healthy in slot {to_slot}; back on slot "
        f"{slot} (version {running}).",
    )


class RestartSide:
    """The Updater's restart half (pits_appliance.update.Updater holds the state)."""

    slot: str | None
    version: str
    rauc: Rauc
    reboot: list[str]
    idle_restart: float | None
    last_fetch: Callable[[], float | None]
    now: Callable[[], float]
    pending: Pending | None
    restart_requested: bool
    restarting: bool
    awaiting_good: bool
    on_trial: bool
    trial_known: bool
    after_good: Offer | None
    race: RaceGate | None
    _wake: asyncio.Event

    @property
    def files(self) -> UpdateFiles:
        raise NotImplementedError

    def _set(self, state: str, version: str, message: str = "") -> None:
        raise NotImplementedError

    def offer(self, offer: Offer) -> None:
        raise NotImplementedError

    def _outcome(self, record: dict[str, Any]) -> None:
        state, version, message = restart_outcome(record, self.slot, self.version)
        self._set(state, version, message)
        if state == "installed":
            self.awaiting_good = True
        else:
            self.files.remove(RECORD)

    async def check_good(self) -> None:
        """Is the slot running marked good yet? Until it is (a trial boot after an update, or
        any boot RAUC does not count good), nothing is installed: RAUC would write the other
        slot, the one the box falls back to. An offer that came meanwhile is taken now."""
        try:
            status = await self.rauc.boot_status()
        except RaucError as exc:
            log.warning("cannot read RAUC's status", extra={"error": exc.message})
            return
        was, self.trial_known = self.on_trial, True
        self.on_trial = status["booted"] == self.slot and status["boot_status"] != "good"
        if self.on_trial:
            if not was:
                log.info("slot on trial: no update is installed until it is marked good")
            return
        if self.awaiting_good:
            self.awaiting_good = False
            self._set(
                "good",
                self.version,
                f"Version {self.version} is running in slot {self.slot} and is marked good.",
            )
            self.files.remove(RECORD)
        elif was:
            log.info("slot marked good: updates go on")
        if self.after_good is not None:
            held, self.after_good = self.after_good, None
            self.offer(held)

    def install_now(self) -> dict[str, Any]:
        """The organiser's Install now: restart into the installed slot."""
        if self.pending is None or self.restarting:
            return {"ok": False, "message": "There is no installed update waiting."}
        self.restart_requested = True
        self._wake.set()
        why = self.race.running() if self.race is not None else None
        if why is not None:
            return {
                "ok": True,
                "message": f"Restarts into version {self.pending.version} once the race ends "
                f"({why}).",
            }
        return {
            "ok": True,
            "message": f"Restarting into version {self.pending.version} now: the box is back "
            "in a minute or two.",
        }

    def restart_due(self, now: float) -> str | None:
        """Why the box should restart into the installed slot now, if it should."""
        if self.pending is None or self.restarting:
            return None
        if self.restart_requested:
            return "Install now"
        if self.idle_restart is None:
            return None
        quiet_since = max(self.pending.at, self.last_fetch() or 0.0)
        if now - quiet_since >= self.idle_restart:
            return f"no fetch for {self.idle_restart:g} s"
        return None

    async def restart(self, reason: str) -> None:
        """Write what is being tried (read back after the restart), then restart."""
        assert self.pending is not None and self.slot is not None
        pending = self.pending
        self.restarting = True
        self.files.save(
            RECORD,
            {
                "version": pending.version,
                "fromSlot": self.slot,
                "toSlot": pending.to_slot,
                "fromVersion": self.version,
                "atMs": int(self.now() * 1000),
            },
        )
        self._set(
            "restarting",
            pending.version,
            f"Restarting into version {pending.version} in slot {pending.to_slot} ({reason}).",
        )
        await asyncio.sleep(0.2)  # let the report reach the relay before the box goes
        err = await run_reboot(self.reboot)
        if err is not None:
            self.restarting = False
            self.restart_requested = False
            self.files.remove(RECORD)
            self._set(
                "installed",
                pending.version,
                f"The restart failed ({err}); press Install now to try again.",
            )
