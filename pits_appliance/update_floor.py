"""Versions only go forward: the floor and the one-shot downgrade permit.

`STATE_DIR/update/highest-version` (one line) is the newest version this box has run. The
agent raises it at start when the running version is newer (or the file is missing or
damaged), and refuses any update not newer than it. It is never lowered: a box put back onto
an older version still refuses the versions between (a downgrade needs the stick again).

`STATE_DIR/update/allow-downgrade` (one line, the exact version) is written by the status
page's downgrade action just before it installs a bundle from a USB stick, and removed once
that install ends, either way. The image's RAUC pre-install handler reads both files, so the
floor holds however a bundle arrives.
"""

from __future__ import annotations

import logging
from pathlib import Path

from wire.files import write_private
from wire.versions import MAX_VERSION, is_version, newer

log = logging.getLogger("pitlink.pits.update")

FLOOR = Path("update") / "highest-version"
PERMIT = Path("update") / "allow-downgrade"


def refusal(floor: str) -> str:
    """The words of a refused downgrade (the relay and the page show them)."""
    return (
        f"older than version {floor}, the newest this box has run: a downgrade needs a USB "
        "stick and the box's PIN"
    )


def _read_line(path: Path) -> str | None:
    """The file's first line if it is a version; None when missing or not one (said)."""
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_VERSION + 2)
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("cannot read an update file", extra={"path": str(path), "error": str(exc)})
        return None
    text = raw.decode("utf-8", "replace").split("\n", 1)[0].strip()
    if not is_version(text):
        log.warning("an update file holds no version; taken as absent", extra={"path": str(path)})
        return None
    return text


class Floor:
    """The newest version this box has run, kept in STATE_DIR; None: none known."""

    def __init__(self, state_dir: Path):
        self.state_dir = state_dir
        self.version: str | None = None

    def raise_to(self, running: str) -> str | None:
        """At start: read the file; write `running` there (atomically) when it is newer or
        the file says nothing. Returns the floor."""
        self.version = _read_line(self.state_dir / FLOOR)
        if not is_version(running):
            log.warning(
                "the running version is not one updates can be ordered by",
                extra={"version": running[:MAX_VERSION]},
            )
            return self.version
        if self.version is None or newer(running, self.version):
            try:
                write_private(self.state_dir / FLOOR, running + "\n")
            except OSError as exc:
                log.warning("cannot write the version floor", extra={"error": str(exc)})
            else:
                log.info("version floor", extra={"version": running, "was": self.version})
            self.version = running
        return self.version

    def refuses(self, version: str) -> str | None:
        """Why `version` may not be installed over this floor; None when it may."""
        if not is_version(version):
            return f"{version[:MAX_VERSION]!r} is not a version this box can order"
        if self.version is not None and not newer(version, self.version):
            return refusal(self.version)
        return None

    # -- the one-shot downgrade permit ---------------------------------------------------------

    def permit(self, version: str) -> None:
        """Allow exactly `version` for the next install (OSError if it cannot be written)."""
        write_private(self.state_dir / PERMIT, version + "\n")

    def permitted(self) -> str | None:
        return _read_line(self.state_dir / PERMIT)

    def end_permit(self) -> None:
        try:
            (self.state_dir / PERMIT).unlink(missing_ok=True)
        except OSError as exc:
            log.warning("cannot remove the downgrade permit", extra={"error": str(exc)})
