"""The restart into a newly installed slot: run the box's reboot command in a thread.

In a thread, not as an asyncio subprocess: the agent may be stopped (by this very restart)
while the command runs, and a thread simply finishes, where a cancelled asyncio subprocess
would leave its pipes behind.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Sequence
from typing import Any

from pits_appliance.rauc import clean


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
