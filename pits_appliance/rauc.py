"""The box's two root slots as RAUC and the image show them: the running slot and version, and
the `rauc` program (info, install, status) run with bounded output and a deadline.

RAUC is not ours: its words reach the relay and the status page, so they are trimmed, cleaned
of control characters and bounded before anyone sees them.
"""

from __future__ import annotations

import asyncio
import contextlib
import platform
import re
import shlex
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wire.errors import DamagedError
from wire.messages import MAX_SW_VERSION
from wire.untrusted import load_json

MAX_OUTPUT = 64 * 1024  # of stdout or stderr kept from one run
MAX_RAUC_JSON = MAX_OUTPUT
MAX_SHOWN = 300  # characters of RAUC's message shown on the page and sent to the relay
_SLOT = re.compile(r"(?:^|\s)rauc\.slot=([A-Za-z0-9_.-]{1,16})(?:\s|$)")
_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}


def booted_slot(cmdline: Path) -> str | None:
    """`A` or `B` from `rauc.slot=` on the kernel command line; None on a box without slots."""
    try:
        with cmdline.open("rb") as f:
            text = f.read(8192).decode("utf-8", "replace")
    except OSError:
        return None
    match = _SLOT.search(text)
    return match.group(1) if match else None


def image_version(version_file: Path, fallback: str) -> str:
    """The image's version (its first line, bounded), or `fallback` without the file."""
    try:
        with version_file.open("rb") as f:
            first = f.read(1024).decode("utf-8", "replace").splitlines()
    except OSError:
        return fallback
    version = clean(first[0] if first else "", MAX_SW_VERSION)
    return version or fallback


def box_compatible(machine: str | None = None) -> str:
    """`pitlink-amd64` or `pitlink-arm64`: what the image's RAUC system.conf says."""
    machine = platform.machine() if machine is None else machine
    return "pitlink-" + _ARCH.get(machine.lower(), machine.lower())


def clean(text: str, limit: int = MAX_SHOWN) -> str:
    """One line of someone else's text, safe to show: no control characters, bounded."""
    flat = " ".join(text.split())
    flat = "".join(ch for ch in flat if unicodedata.category(ch)[0] != "C").strip()
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def rauc_message(stderr: bytes, code: int | None) -> str:
    """What RAUC said went wrong: its last line that is not one of its progress notes."""
    lines = [ln.strip() for ln in stderr.decode("utf-8", "replace").splitlines() if ln.strip()]
    said = [ln for ln in lines if not ln.startswith("rauc-Message:")] or lines
    if not said:
        return f"RAUC failed (exit status {code}) without saying why"
    return clean(said[-1])


class RaucError(Exception):
    """RAUC said no (or could not be run); `message` is its own words, cleaned."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class BundleInfo:
    compatible: str
    version: str


async def _read_bounded(stream: asyncio.StreamReader | None) -> bytes:
    kept = bytearray()
    if stream is None:
        return b""
    while chunk := await stream.read(65536):
        if len(kept) < MAX_OUTPUT:
            kept += chunk[: MAX_OUTPUT - len(kept)]
    return bytes(kept)


class Rauc:
    """The `rauc` command line (a stand-in in the tests: the command is a setting)."""

    def __init__(self, command: str | Sequence[str] = "rauc"):
        self.command = shlex.split(command) if isinstance(command, str) else list(command)

    async def run(self, *args: str, timeout: float) -> bytes:
        """stdout of `rauc args...`; RaucError with its message on a non-zero exit."""
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.command,
                *args,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as exc:
            raise RaucError(f"cannot run {self.command[0]}: {exc.strerror}") from None
        try:
            async with asyncio.timeout(timeout):
                out, err = await asyncio.gather(
                    _read_bounded(proc.stdout), _read_bounded(proc.stderr)
                )
                code = await proc.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise RaucError(f"RAUC did not finish within {timeout:g} s") from None
        except asyncio.CancelledError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise
        if code != 0:
            raise RaucError(rauc_message(err, code))
        return out

    async def info(self, bundle: Path) -> BundleInfo:
        """The bundle's compatible and version, once RAUC has checked its signature."""
        doc = _json(await self.run("info", "--output-format=json", str(bundle), timeout=300.0))
        compatible, version = doc.get("compatible"), doc.get("version")
        if not isinstance(compatible, str) or not isinstance(version, str):
            raise RaucError("RAUC's description of the bundle lacks its compatible or version")
        return BundleInfo(clean(compatible, 64), clean(version, MAX_SW_VERSION))

    async def install(self, bundle: Path) -> None:
        """Check the bundle again and write it to the slot not running."""
        await self.run("install", str(bundle), timeout=3600.0)

    async def boot_status(self) -> dict[str, str]:
        """The booted slot's bootname, its `boot_status` (`good`, `bad`), from `rauc status`."""
        doc = _json(await self.run("status", "--output-format=json", timeout=60.0))
        booted = doc.get("booted")
        for entry in doc.get("slots") or []:
            if not isinstance(entry, dict):
                continue
            for slot in entry.values():
                if isinstance(slot, dict) and slot.get("bootname") == booted and booted:
                    return {"booted": str(booted), "boot_status": str(slot.get("boot_status"))}
        return {"booted": str(booted), "boot_status": "unknown"}


def _json(out: bytes) -> dict[str, Any]:
    """RAUC's JSON answer (a bundle's description, the slots' status) as an object."""
    try:
        doc = load_json(out.decode("utf-8", "replace"), limit=MAX_RAUC_JSON)
    except DamagedError as exc:
        raise RaucError(f"RAUC's answer is not JSON we can read: {exc}") from None
    if not isinstance(doc, dict):
        raise RaucError("RAUC's answer is not a JSON object")
    return doc
