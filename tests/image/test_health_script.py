"""The image's trial-boot health check (image/rootfs/usr/lib/pitlink/pitlink-health), run here
where it decides without waiting: a boot that is no trial, and a boot partition that cannot say.

It asks pitlink-slots (beside it) whether this boot is a trial: 0 yes, 1 no (marked good
before), anything else it cannot tell, and then the slot must not be marked good (the check
fails, so boot-complete.target does, and pitlink-mark-good never runs) nor the box restarted.
`systemctl` is a stand-in first on the PATH that writes down what it was asked and does
nothing, so that no mistake here restarts this machine.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "image" / "rootfs" / "usr" / "lib" / "pitlink"

FAKE_SYSTEMCTL = '#!/bin/bash\necho "$*" >>"$FAKE_CALLS"\n'
# A stand-in for pitlink-slots: `booted` says B, `on-trial` exits with $FAKE_TRIAL.
FAKE_SLOTS = """#!/bin/bash
case "$1" in
booted) echo B ;;
on-trial) echo "pitlink-slots (stand-in): on-trial -> $FAKE_TRIAL" >&2; exit "$FAKE_TRIAL" ;;
*) exit 2 ;;
esac
"""


def entry(slot: str, sort_key: str) -> str:
    return (
        f"title    Pitlink (slot {slot})\nsort-key {sort_key}\nlinux    /{slot.lower()}/vmlinuz\n"
    )


@pytest.fixture
def esp(tmp_path: Path) -> Path:
    """B updated and on trial: its entry's one try used by the boot loader."""
    entries = tmp_path / "esp" / "loader" / "entries"
    entries.mkdir(parents=True)
    (entries / "pitlink-a.conf").write_text(entry("A", "pitlink-2"))
    (entries / "pitlink-b+0-1.conf").write_text(entry("B", "pitlink-1"))
    return tmp_path / "esp"


def health(
    tmp_path: Path, esp: Path, booted: str | None, *, slots_dir: Path = SCRIPTS, **env: str
) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """pitlink-health (from `slots_dir`, with the pitlink-slots there) for a boot of slot
    `booted` (None: no rauc.slot=): what it did, and what it asked of systemctl."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "systemctl").write_text(FAKE_SYSTEMCTL)
    (bin_dir / "systemctl").chmod(0o755)
    cmdline = tmp_path / "cmdline"
    cmdline.write_text(f"root=x ro{f' rauc.slot={booted}' if booted else ''} quiet\n")
    calls = tmp_path / "systemctl-calls"
    calls.unlink(missing_ok=True)
    done = subprocess.run(
        ["bash", str(slots_dir / "pitlink-health")],
        env={
            "PATH": f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "PITLINK_ESP": str(esp),
            "PITLINK_CMDLINE": str(cmdline),
            "FAKE_CALLS": str(calls),
            **env,
        },
        capture_output=True,
        text=True,
        # The trial itself polls for minutes: reaching it here is a failure, not a wait.
        timeout=20,
    )
    return done, calls.read_text().splitlines() if calls.exists() else []


def test_a_slot_marked_good_before_has_nothing_to_check(tmp_path: Path, esp: Path) -> None:
    done, calls = health(tmp_path, esp, "A")
    assert done.returncode == 0, done
    assert "pitlink-health: slot A was marked good before: nothing to check" in done.stdout
    assert calls == []


def test_a_boot_without_a_slot_has_nothing_to_check(tmp_path: Path, esp: Path) -> None:
    done, calls = health(tmp_path, esp, None)
    assert done.returncode == 0, done
    assert "this boot names no root slot (no rauc.slot=): nothing to check" in done.stdout
    assert calls == []


def test_a_damaged_boot_partition_is_not_read_as_marked_good(tmp_path: Path, esp: Path) -> None:
    """Two entries for B (a copy left by hand, say): pitlink-slots cannot tell, and the check
    neither passes the slot nor restarts the box."""
    (esp / "loader" / "entries" / "pitlink-b.conf").write_text(entry("B", "pitlink-1"))
    done, calls = health(tmp_path, esp, "B")
    assert done.returncode == 1, done
    assert "marked good" not in done.stdout.replace("not marking it good", "")
    assert (
        "pitlink-health: cannot tell whether slot B is on trial (pitlink-slots exited with 2):"
        " not checking its health and not marking it good"
    ) in done.stdout
    assert "expected one boot entry for slot B" in done.stderr
    assert calls == []


@pytest.mark.parametrize("status", ["2", "3", "126", "127", "139"])
def test_any_failure_of_the_slot_tool_is_not_read_as_marked_good(
    tmp_path: Path, esp: Path, status: str
) -> None:
    """Whatever way pitlink-slots fails (its own error, not executable, missing, a crash)."""
    here = tmp_path / "scripts"
    here.mkdir()
    for name in ("pitlink-health", "conf.sh"):
        shutil.copy(SCRIPTS / name, here / name)
    (here / "pitlink-slots").write_text(FAKE_SLOTS)
    (here / "pitlink-slots").chmod(0o755)
    done, calls = health(tmp_path, esp, "B", slots_dir=here, FAKE_TRIAL=status)
    assert done.returncode == 1, done
    assert f"cannot tell whether slot B is on trial (pitlink-slots exited with {status})" in (
        done.stdout
    )
    assert "was marked good before" not in done.stdout
    assert calls == []
    # The same stand-in answering 1 is a slot marked good before.
    done, calls = health(tmp_path, esp, "B", slots_dir=here, FAKE_TRIAL="1")
    assert done.returncode == 0 and "slot B was marked good before" in done.stdout, done
