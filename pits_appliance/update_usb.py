"""The downgrade action: the update bundles on a USB stick (mounted read-only under the
`update_usb_dir` setting), listed with their versions for the status page, and one of them
installed even though it is older than the newest version this box has run, because the
organiser chose it on the page with the box's PIN.

The stick is hostile like any file: only `*.raucb` names in the folder itself are listed (at
most MAX_USB_SHOWN), each version is RAUC's reading of a signed bundle, and the page names a
bundle only by a name on that list, never by a path.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pits_appliance.rauc import Rauc, RaucError, clean
from pits_appliance.update_floor import Floor
from pits_appliance.update_local import listed
from wire.versions import is_version, newer

log = logging.getLogger("pitlink.pits.update")

MAX_USB_SHOWN = 8  # newest bundles on a stick read and listed
MAX_NAME = 120


@dataclass(frozen=True)
class UsbBundle:
    name: str
    size: int
    version: str | None  # None: RAUC refused it (`why` says why)
    why: str | None = None


class UsbSide:
    """The Updater's USB stick half (pits_appliance.update.Updater holds the state)."""

    usb_dir: Path | None
    usb: list[UsbBundle]
    version: str
    rauc: Rauc
    floor: Floor | None
    why_not: str | None
    on_trial: bool
    on_change: Callable[[], None]
    _usb_seen: dict[tuple[str, int, float], UsbBundle]

    @property
    def busy(self) -> bool:
        raise NotImplementedError

    async def _install(
        self, bundle: Path, *, offered: str | None, delete: bool, downgrade: str | None = None
    ) -> None:
        raise NotImplementedError

    def _start_job(self, job: Coroutine[Any, Any, None], name: str) -> None:
        raise NotImplementedError

    async def look_usb(self) -> None:
        """List the stick's newest bundles with their versions (RAUC reads each once)."""
        if self.usb_dir is None or self.why_not is not None:
            return
        found = sorted(listed([self.usb_dir]), reverse=True)[:MAX_USB_SHOWN]
        bundles: list[UsbBundle] = []
        for mtime, path, size in found:
            key = (path.name, size, mtime)
            seen = self._usb_seen.get(key)
            if seen is None:
                try:
                    info = await self.rauc.info(path)
                    seen = UsbBundle(clean(path.name, MAX_NAME), size, info.version)
                except RaucError as exc:
                    seen = UsbBundle(clean(path.name, MAX_NAME), size, None, exc.message)
                self._usb_seen[key] = seen
            bundles.append(seen)
        self._usb_seen = {k: v for k, v in self._usb_seen.items() if v in bundles}
        if bundles != self.usb:
            self.usb = bundles
            self.on_change()

    def usb_view(self) -> list[dict[str, Any]]:
        """The stick's bundles for the page; `older`: only the downgrade action installs it."""
        floor = (self.floor.version if self.floor else None) or self.version
        return [
            {
                "name": b.name,
                "version": b.version,
                "why": b.why,
                "older": b.version is not None
                and b.version != self.version
                and is_version(b.version)
                and is_version(floor)
                and not newer(b.version, floor),
            }
            for b in self.usb
        ]

    def downgrade(self, name: str) -> dict[str, Any]:
        """The page's "Install this older version": permit exactly that version, install it."""
        chosen = next((b for b in self.usb if b.name == name and b.version), None)
        if self.usb_dir is None or self.floor is None or chosen is None or not chosen.version:
            return {"ok": False, "message": "That bundle is not on the USB stick."}
        path = self.usb_dir / chosen.name
        if path.name != chosen.name or not path.is_file():
            return {"ok": False, "message": "That bundle is not on the USB stick."}
        if chosen.version == self.version:
            return {"ok": False, "message": f"Version {chosen.version} is already running."}
        if self.on_trial:
            return {
                "ok": False,
                "message": "This slot is on trial: the box marks it good after it has run well "
                "for a few minutes. Choose the bundle again then.",
            }
        if self.busy:
            return {"ok": False, "message": "Another update is under way; wait for it to end."}
        try:
            self.floor.permit(chosen.version)
        except OSError as exc:
            return {"ok": False, "message": f"Cannot write the downgrade permit: {exc.strerror}."}
        log.warning(
            "downgrade chosen on the status page",
            extra={
                "running": self.version,
                "version": chosen.version,
                "newest_run": self.floor.version,
                "bundle": chosen.name,
            },
        )
        self._start_job(
            self._install(path, offered=None, delete=False, downgrade=chosen.version),
            "downgrade",
        )
        return {
            "ok": True,
            "message": f"Installing version {chosen.version} from the USB stick; press Install "
            "now once it is ready.",
        }
