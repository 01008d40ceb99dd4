"""The image's trial-boot health check (image/rootfs/usr/lib/pitlink/pitlink-health), run here.

Where it decides at once: a boot that is no trial, and a boot partition that cannot say. And
the trial itself, made seconds long, against a real agent on a loopback port: linked to a real
relay (good), running but never linking (restart, unless the box had no network at all), and
an agent that hangs (its port takes connections and never answers: restart).

It asks pitlink-slots (beside it) whether this boot is a trial: 0 yes, 1 no (marked good
before), anything else it cannot tell, and then the slot must not be marked good (the check
fails, so boot-complete.target does, and pitlink-mark-good never runs) nor the box restarted.
`systemctl` is a stand-in first on the PATH that writes down what it was asked and does
nothing, so that no mistake here restarts this machine.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from pitlink_testkit.fpvtrackside import Simulator
from pitlink_testkit.system import System

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


# -- the trial ---------------------------------------------------------------------------------

TRIAL = 4  # UPDATE_TRIAL_SECONDS, for the test
HEALTHY = 1  # UPDATE_HEALTHY_SECONDS
ROUTES = "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\n"
DEFAULT_ROUTE = "eth0\t00000000\t0102000A\t0003\t0\t0\t0\t00000000\n"


async def trial(
    tmp_path: Path, esp: Path, port: int, *, routed: bool
) -> tuple[int, str, list[str]]:
    """pitlink-health on B's trial boot, asking the agent on `port`, with or without a default
    route: its exit status, what it said, and what it asked of systemctl."""
    conf = tmp_path / "pitlink.conf"
    conf.write_text(f"UPDATE_TRIAL_SECONDS={TRIAL}\nUPDATE_HEALTHY_SECONDS={HEALTHY}\n")
    routes = tmp_path / "route"
    routes.write_text(ROUTES + (DEFAULT_ROUTE if routed else ""))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "systemctl").write_text(FAKE_SYSTEMCTL)
    (bin_dir / "systemctl").chmod(0o755)
    cmdline = tmp_path / "cmdline"
    cmdline.write_text("root=x ro rauc.slot=B quiet\n")
    calls = tmp_path / "systemctl-calls"
    calls.unlink(missing_ok=True)
    proc = await asyncio.create_subprocess_exec(
        "bash", str(SCRIPTS / "pitlink-health"),
        env={
            "PATH": f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "PITLINK_ESP": str(esp), "PITLINK_CMDLINE": str(cmdline),
            "PITLINK_CONF": str(conf), "PITLINK_ROUTES": str(routes),
            "PITLINK_STATUS_PORT": str(port), "FAKE_CALLS": str(calls),
        },
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=TRIAL + 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), calls.read_text().splitlines() if calls.exists() else []


async def test_a_trial_linked_to_the_relay_is_good(
    tmp_path: Path, esp: Path, sim: Simulator
) -> None:
    s = System(tmp_path, sim)
    try:
        await s.start_relay()
        port = (await s.start_agent()).status_port
        assert port is not None
        code, said, calls = await trial(tmp_path, esp, port, routed=True)
        assert code == 0, said
        assert f"slot B is on trial: it must be healthy for {HEALTHY} s within {TRIAL} s" in said
        assert f"slot B is healthy (linked to the relay for {HEALTHY} s): marking it good" in said
        assert calls == []
    finally:
        await s.close()


async def test_an_agent_that_runs_but_never_links_is_rolled_back(
    tmp_path: Path, esp: Path, sim: Simulator
) -> None:
    """Its status page answers (503: not linked) all along; with a network to link over, the
    trial fails and the box restarts into the other slot. A box that had no network at all is
    judged on its agent answering."""
    s = System(tmp_path, sim)
    try:
        await s.start_relay()
        port = (await s.start_agent()).status_port
        assert port is not None
        await s.stop_relay()  # the agent runs on, and never links again
        code, said, calls = await trial(tmp_path, esp, port, routed=True)
        assert code == 1, said
        assert "agent health: 503 (not linked to the relay)" in said
        assert f"slot B did not become healthy within {TRIAL} s (last: 503)" in said
        assert calls == ["--no-block reboot"]
        code, said, calls = await trial(tmp_path, esp, port, routed=False)
        assert code == 0, said
        assert "its agent answers; the box has had no network to link over" in said
        assert calls == []
    finally:
        await s.close()


async def test_an_agent_that_hangs_is_rolled_back(tmp_path: Path, esp: Path) -> None:
    """A hung agent's port still takes connections (the kernel does that) and never answers."""
    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(16)
        for routed in (True, False):
            code, said, calls = await trial(tmp_path, esp, hung.getsockname()[1], routed=routed)
            assert code == 1, said
            assert f"slot B did not become healthy within {TRIAL} s (last: no answer)" in said
            assert calls == ["--no-block reboot"]
