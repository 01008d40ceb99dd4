"""Where the status page's PIN comes from: the settings, or made at first start and written
where the organiser finds the token (pitlink.conf), or kept in STATE_DIR without one.

The read-only boot partition is a real read-only mount: a tmpfs in a mount namespace of the
test's own (`unshare`), remounted by the real `mount`, as on the box.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from pits_appliance.config import AgentConfig, load_config
from pits_appliance.pinfile import COMMENT, ON_THE_CARD, StatusPin, status_pin

REPO = Path(__file__).resolve().parents[2]
CONF = (
    "\ufeff# pitlink.conf as Notepad left it\r\n"
    "CLOUD_URL=https://relay.example.com\r\n"
    "TOKEN=eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJjbHViLTQyIn0.c2lnbmF0dXJl\r\n"
    "STATE_DIR=/var/lib/pitlink"  # no line end after the last line
).encode()


def config(**kwargs: Any) -> AgentConfig:
    kwargs.setdefault("token_file", Path("/nonexistent/token"))
    return AgentConfig(cloud_url="https://relay.example.com", **kwargs)


def test_a_pin_in_pitlink_conf_is_used_and_said_to_be_there(tmp_path: Path) -> None:
    conf = tmp_path / "pitlink.conf"
    conf.write_bytes(CONF + b"\r\nSTATUS_PIN=135792\r\n")
    got = status_pin(load_config(["--config", str(conf)], env={}))
    assert (got.pin, got.where) == ("135792", ON_THE_CARD)
    assert conf.read_bytes() == CONF + b"\r\nSTATUS_PIN=135792\r\n"  # not written to
    from_env = status_pin(
        load_config(["--config", str(conf)], env={"PITLINK_STATUS_PIN": "864200"})
    )
    assert from_env.pin == "864200"
    assert from_env.where == "the PIN the agent was given (--status-pin or PITLINK_STATUS_PIN)"


def test_without_a_pin_one_is_made_and_appended_to_pitlink_conf(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    conf = tmp_path / "pitlink.conf"
    conf.write_bytes(CONF)
    with caplog.at_level(logging.INFO, logger="pitlink.pits.agent"):
        got = status_pin(load_config(["--config", str(conf), "--token-file", "/t"], env={}))
    assert re.fullmatch(r"[0-9]{6}", got.pin) and got.where == ON_THE_CARD
    data = conf.read_bytes()
    # Everything that was there is there, byte for byte; two lines follow, as the file ends.
    assert (
        data == CONF + b"\r\n" + COMMENT.encode() + b"\r\nSTATUS_PIN=" + got.pin.encode() + b"\r\n"
    )
    again = load_config(["--config", str(conf), "--token-file", "/t"], env={})
    assert again.status_pin == got.pin
    assert again.token == "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJjbHViLTQyIn0.c2lnbmF0dXJl"
    assert status_pin(again).pin == got.pin
    assert conf.read_bytes() == data  # made once
    [line] = [r for r in caplog.records if "PIN" in r.getMessage()]
    assert line.getMessage() == "made the status page's PIN and wrote it into the settings file"
    assert got.pin not in caplog.text and got.pin not in str(vars(line))


def test_a_pin_already_in_the_file_is_not_made_again(tmp_path: Path) -> None:
    """An empty PITLINK_STATUS_PIN beats the file's line: the box uses the file's all the same."""
    conf = tmp_path / "pitlink.conf"
    conf.write_bytes(CONF + b"\r\nSTATUS_PIN=246802\r\n")
    loaded = load_config(["--config", str(conf)], env={"PITLINK_STATUS_PIN": ""})
    assert loaded.status_pin is None
    assert status_pin(loaded) == StatusPin("246802", ON_THE_CARD)
    assert conf.read_bytes() == CONF + b"\r\nSTATUS_PIN=246802\r\n"


def test_a_plain_unix_file_gets_plain_line_ends(tmp_path: Path) -> None:
    conf = tmp_path / "agent.conf"
    conf.write_text("CLOUD_URL=https://relay.example.com\n")
    got = status_pin(config(config_file=conf))
    assert conf.read_text().endswith(f"\nSTATUS_PIN={got.pin}\n")
    assert "\r" not in conf.read_text()
    assert got.where == f"STATUS_PIN in {conf}"


def test_without_a_settings_file_the_pin_is_kept_in_the_state_folder(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    with caplog.at_level(logging.INFO, logger="pitlink.pits.agent"):
        got = status_pin(config(state_dir=state))
    kept = state / "status-pin"
    assert kept.read_text() == got.pin + "\n"
    assert kept.stat().st_mode & 0o777 == 0o600
    assert got.where == f"the file {kept} on this machine"
    assert status_pin(config(state_dir=state)).pin == got.pin  # kept across restarts
    assert [r.file for r in caplog.records] == [str(kept), str(kept)]  # type: ignore[attr-defined]
    assert got.pin not in caplog.text
    kept.write_text("12ab\n")  # damaged: a new one
    fresh = status_pin(config(state_dir=state))
    assert re.fullmatch(r"[0-9]{6}", fresh.pin) and kept.read_text() == fresh.pin + "\n"
    assert not list(state.glob("*.part"))


def test_without_a_state_folder_the_pin_is_beside_the_token(tmp_path: Path) -> None:
    got = status_pin(config(token_file=tmp_path / "token"))
    assert (tmp_path / "status-pin").read_text() == got.pin + "\n"


def test_a_pin_that_cannot_be_kept_locks_the_buttons_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    missing = tmp_path / "no" / "such" / "folder"
    with caplog.at_level(logging.WARNING, logger="pitlink.pits.agent"):
        got = status_pin(config(state_dir=missing))
    assert re.fullmatch(r"[0-9]{6}", got.pin)  # nobody knows it: the buttons stay locked
    assert got.where.startswith("nowhere yet: set STATUS_PIN (6 to 12 digits (0-9))")
    assert "could not keep the status page's PIN" in caplog.text


# -- the boot partition, mounted read-only as on the box -----------------------------------------


def in_a_read_only_mount(tmp_path: Path, conf: bytes, code: str) -> dict[str, Any]:
    """Run `code` (which prints JSON) with `boot/pitlink.conf` on a read-only tmpfs in a mount
    namespace of its own; also returns the mount's options after it and the file's bytes."""
    if shutil.which("unshare") is None:
        pytest.fail("unshare (util-linux) is needed: the box's read-only boot partition")
    boot = tmp_path / "boot"
    boot.mkdir()
    source = tmp_path / "conf.in"
    source.write_bytes(conf)
    script = tmp_path / "run.py"
    script.write_text(code)
    shell = textwrap.dedent(
        f"""
        set -e
        mount -t tmpfs -o size=1m tmpfs {boot}
        cp {source} {boot}/pitlink.conf
        mount -o remount,ro {boot}
        {sys.executable} {script} {boot}/pitlink.conf
        echo "options=$(findmnt -rno OPTIONS --mountpoint {boot})"
        echo "conf=$(base64 -w0 {boot}/pitlink.conf)"
        """
    )
    done = subprocess.run(
        ["unshare", "--map-root-user", "--mount", "sh", "-c", shell],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    result = json.loads(lines[0])
    result["options"] = lines[1].removeprefix("options=").split(",")
    result["conf"] = base64.b64decode(lines[2].removeprefix("conf="))
    result["stderr"] = done.stderr
    return result


PRINT_PIN = """
import json, sys
from pits_appliance.config import load_config
from pits_appliance.pinfile import status_pin
from wire import jsonlog
jsonlog.setup("INFO")
got = status_pin(load_config(["--config", sys.argv[1], "--token-file", "/t"], env={{}}){mount})
print(json.dumps({{"pin": got.pin, "where": got.where}}))
"""


def test_on_a_read_only_boot_partition_the_box_remounts_it_for_the_append(tmp_path: Path) -> None:
    got = in_a_read_only_mount(tmp_path, CONF, PRINT_PIN.format(mount=""))
    assert got["where"] == ON_THE_CARD
    assert got["conf"].startswith(CONF) and got["conf"].endswith(
        f"\r\nSTATUS_PIN={got['pin']}\r\n".encode()
    )
    assert "ro" in got["options"]  # read-only again


def test_a_boot_partition_that_stays_read_only_locks_the_buttons_and_says_so(
    tmp_path: Path,
) -> None:
    """`mount` fails (here: `false` stands in for it): the file is left as it was."""
    got = in_a_read_only_mount(tmp_path, CONF, PRINT_PIN.format(mount=', mount="false"'))
    assert got["conf"] == CONF
    assert got["where"] == (
        "nowhere yet: the box could not write one into pitlink.conf on the card's boot "
        "partition. Set STATUS_PIN there (6 to 12 digits (0-9)) and restart the box"
    )
    assert "could not write the status page's PIN" in got["stderr"]
    assert "mount -o remount,rw" in got["stderr"]
    assert got["pin"] not in got["stderr"]
