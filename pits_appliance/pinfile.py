"""Where the status page's PIN comes from, and where the organiser finds it.

`STATUS_PIN` in the settings wins. Without it the box makes one (pits_appliance.pin) at its
first start and writes it where the organiser found the token:

- into the `--config` file (`pitlink.conf` on the card's boot partition), by appending two
  lines to its end in one write, then fsync. An append never rewrites the bytes already in
  the file, the token among them, so a power cut cannot lose them: it leaves the file as it
  was (the box makes a PIN again at the next start) or with the new lines. (Only if the
  kernel wrote the file's new length out in the instant between the write and the fsync,
  and the power went then, could the file end in a torn line, which the status page would
  show as a settings error, the token still intact.) Writing a new file and renaming it
  over the old is atomic on ext4 but not on FAT, where a cut can fall between removing the
  old name and writing the new, and lose the whole file. On the image the boot partition is
  mounted read-only: the box remounts it read-write for the append, and read-only again.
- without a `--config` file (a developer's machine, the demo): into `STATE_DIR/status-pin`
  (beside the token file when there is no STATE_DIR), made once and kept, readable by its
  owner alone; the log says where.

When neither can be written, the box makes up a PIN for this run that nobody knows, and the
status page says to set STATUS_PIN: its buttons stay locked rather than open.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pits_appliance.config import PIN, PIN_WORDS, AgentConfig
from pits_appliance.pin import make_pin
from wire.settings import SettingsError, parse_conf

log = logging.getLogger("pitlink.pits.agent")

ON_THE_CARD = (
    "STATUS_PIN in pitlink.conf on the card's boot partition (the PITLINK drive), beside the token"
)
PIN_FILE = "status-pin"
REMOUNT_TIMEOUT = 20.0
COMMENT = (
    "# The status page's PIN, for its buttons (Pause, Reconnect, Install now), made by the "
    f"box at its first start. Change it if you like: {PIN_WORDS}."
)


@dataclass(frozen=True)
class StatusPin:
    """The PIN, and where the organiser finds it, in words for the status page."""

    pin: str
    where: str


def status_pin(config: AgentConfig, *, mount: str = "mount") -> StatusPin:
    """The PIN for this run (see the module's docstring); `mount` is the command that
    remounts a read-only boot partition."""
    conf = config.config_file
    if config.status_pin is not None:
        if conf is not None and _in_file(conf) == config.status_pin:
            return StatusPin(config.status_pin, _where(conf))
        return StatusPin(
            config.status_pin, "the PIN the agent was given (--status-pin or PITLINK_STATUS_PIN)"
        )
    if conf is not None:
        kept = _in_file(conf)
        if kept is not None and PIN.fullmatch(kept):
            # There, though the settings said none (an empty PITLINK_STATUS_PIN, say): one PIN
            # in the file is enough, not one more at every start.
            return StatusPin(kept, _where(conf))
        pin = make_pin()
        try:
            append_pin(conf, pin, mount=mount)
        except OSError as exc:
            log.warning(
                "could not write the status page's PIN into the settings file: the page's "
                "buttons stay locked until STATUS_PIN is set there",
                extra={"file": str(conf), "error": exc.strerror or str(exc)},
            )
            return StatusPin(make_pin(), _unwritable(conf))
        log.info(
            "made the status page's PIN and wrote it into the settings file",
            extra={"file": str(conf)},
        )
        return StatusPin(pin, _where(conf))
    folder = config.state_dir if config.state_dir is not None else config.token_file.parent
    path = folder / PIN_FILE
    try:
        pin = kept_pin(path)
    except OSError as exc:
        log.warning(
            "could not keep the status page's PIN: the page's buttons stay locked until "
            "STATUS_PIN is set",
            extra={"file": str(path), "error": exc.strerror or str(exc)},
        )
        return StatusPin(make_pin(), f"nowhere yet: set STATUS_PIN ({PIN_WORDS}) and restart")
    log.info("the status page's PIN is in its file", extra={"file": str(path)})
    return StatusPin(pin, f"the file {path} on this machine")


def _where(conf: Path) -> str:
    return ON_THE_CARD if conf.name == "pitlink.conf" else f"STATUS_PIN in {conf}"


def _unwritable(conf: Path) -> str:
    name = "pitlink.conf on the card's boot partition" if conf.name == "pitlink.conf" else conf
    return (
        f"nowhere yet: the box could not write one into {name}. Set STATUS_PIN there "
        f"({PIN_WORDS}) and restart the box"
    )


def _in_file(conf: Path) -> str | None:
    try:
        return parse_conf(conf.read_text(encoding="utf-8-sig")).get("STATUS_PIN")
    except (OSError, UnicodeDecodeError, SettingsError):
        return None


def kept_pin(path: Path) -> str:
    """The PIN kept in `path`, made and written there (owner only) when it holds none."""
    with contextlib.suppress(FileNotFoundError):
        text = path.read_text(encoding="utf-8", errors="replace").strip()
        if PIN.fullmatch(text):
            return text
    pin = make_pin()
    part = path.with_name(path.name + ".part")
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, (pin + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(part, path)
    return pin


def append_pin(conf: Path, pin: str, *, mount: str = "mount") -> None:
    """Add `STATUS_PIN=<pin>` to the end of a settings file, in one append (see the module's
    docstring); on a read-only filesystem, remount it read-write for the append."""
    data = conf.read_bytes()
    newline = b"\r\n" if b"\r\n" in data else b"\n"  # as Notepad left it, if it did
    lead = newline if data and not data.endswith((b"\n", b"\r")) else b""
    text = lead + COMMENT.encode() + newline + b"STATUS_PIN=" + pin.encode() + newline
    try:
        _append(conf, text)
    except OSError as exc:
        if exc.errno != errno.EROFS:
            raise
        with writable(_mount_point(conf), mount=mount):
            _append(conf, text)


def _append(path: Path, text: bytes) -> None:
    # O_APPEND and one write: the bytes already in the file are never written again.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        written = os.write(fd, text)
        if written != len(text):
            raise OSError(f"wrote {written} of {len(text)} bytes")
        os.fsync(fd)
    finally:
        os.close(fd)


def _mount_point(path: Path) -> Path:
    path = path.resolve().parent
    while not os.path.ismount(path):
        path = path.parent
    return path


@contextlib.contextmanager
def writable(mount_point: Path, *, mount: str = "mount") -> Iterator[None]:
    """A read-only filesystem read-write for a moment, and read-only again (which writes out
    all it holds, as the boot partition's update hook does)."""
    _remount(mount, mount_point, "rw")
    try:
        yield
    finally:
        try:
            _remount(mount, mount_point, "ro")
        except OSError as exc:
            log.warning(
                "could not make the boot partition read-only again",
                extra={"mount_point": str(mount_point), "error": str(exc)},
            )


def _remount(mount: str, mount_point: Path, mode: str) -> None:
    try:
        done = subprocess.run(
            [mount, "-o", f"remount,{mode}", str(mount_point)],
            capture_output=True,
            text=True,
            timeout=REMOUNT_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise OSError(f"mount -o remount,{mode} {mount_point}: {exc}") from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        raise OSError(f"mount -o remount,{mode} {mount_point}: {last[:200]}")
