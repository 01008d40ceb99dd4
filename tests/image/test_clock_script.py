"""The image's boot-time clock restore (image/rootfs/usr/lib/pitlink/pitlink-clock), run here.

The script sets the system clock, so here `date` is a stand-in first on the PATH: it answers
with the time the test chose and writes down what it was asked to set, instead of setting it.
The saved time comes from the box's state partition, which a power cut may have damaged: only a
plain number is a time, and the clock only ever moves forward.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "image" / "rootfs" / "usr" / "lib" / "pitlink" / "pitlink-clock"
NOW = 1_700_000_000  # 2023-11-14 22:13:20 UTC

FAKE_DATE = """#!/bin/bash
# date, as the test has it: the time is $FAKE_NOW; -s is written down, not done.
for arg in "$@"; do
    if [ "$prev" = "-s" ]; then echo "$arg" >>"$FAKE_SET"; exit 0; fi
    prev="$arg"
done
exec /bin/date -d "@$FAKE_NOW" "$@"
"""


def run(tmp_path: Path, saved: bytes | None) -> tuple[str, list[str]]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "date"
    fake.write_text(FAKE_DATE)
    fake.chmod(0o755)
    clock = tmp_path / "clock"
    if saved is not None:
        clock.write_bytes(saved)
    set_log = tmp_path / "set"
    env = {
        "PATH": f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "PITLINK_CLOCK_FILE": str(clock),
        "FAKE_NOW": str(NOW),
        "FAKE_SET": str(set_log),
        "prev": "",
    }
    done = subprocess.run(
        ["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    sets = set_log.read_text().split() if set_log.exists() else []
    return done.stdout, sets


def test_a_later_saved_time_moves_the_clock_forward(tmp_path: Path) -> None:
    out, sets = run(tmp_path, f"{NOW + 86400}\n".encode())
    assert sets == [f"@{NOW + 86400}"]
    assert "clock moved forward" in out


def test_an_earlier_saved_time_leaves_the_clock_alone(tmp_path: Path) -> None:
    out, sets = run(tmp_path, f"{NOW - 86400}\n".encode())
    assert sets == []
    assert out == "pitlink-clock: clock at 2023-11-14 22:13:20 UTC\n"


@pytest.mark.parametrize(
    "saved",
    [
        None,  # a new box: no file yet
        b"",
        b"not a time\n",
        b"-1800000000\n",
        b"1800000000.5\n",
        b"99999999999999999999999999999999\n",  # would overflow bash's arithmetic
        b"1800000000; reboot\n",
        b"\x00\xff" * 40,
    ],
)
def test_a_damaged_or_missing_file_is_no_time_at_all(tmp_path: Path, saved: bytes | None) -> None:
    out, sets = run(tmp_path, saved)
    assert sets == []
    assert out.startswith("pitlink-clock: clock at ")


def test_crlf_from_a_laptop_still_reads(tmp_path: Path) -> None:
    _, sets = run(tmp_path, f"{NOW + 60}\r\n".encode())
    assert sets == [f"@{NOW + 60}"]
