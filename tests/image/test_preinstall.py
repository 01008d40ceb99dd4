"""RAUC's pre-install handler (image/rootfs/usr/lib/pitlink/pitlink-preinstall), run here with
the environment RAUC gives it, against a state folder standing for the state partition.

Versions only go forward: the handler lets a bundle through only when its version is newer than
the newest this box has run (STATE_DIR/update/highest-version, or the running version), unless
STATE_DIR/update/allow-downgrade names exactly that version. Its order is the agent's
(wire/versions.py): it is run over that module's own table of cases. What real RAUC does with
it (runs it, stops on its refusal) is tests/image/test_rauc_refuses.py.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
from pathlib import Path

import pytest
from appliance import REPO

HANDLER = REPO / "image" / "rootfs" / "usr" / "lib" / "pitlink" / "pitlink-preinstall"


def _cases() -> list[tuple[str, str, int | None]]:
    """The table of version pairs the agent's order is tested against."""
    path = REPO / "tests" / "wire" / "test_versions.py"
    spec = importlib.util.spec_from_file_location("pitlink_version_cases", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cases: list[tuple[str, str, int | None]] = module.CASES
    return cases


CASES = _cases()


def handler(
    state: Path,
    version: str | None,
    *,
    running: str | None = None,
    manifest: bytes | None = None,
) -> subprocess.CompletedProcess[str]:
    """The handler as RAUC runs it for a bundle of `version` (RAUC_MF_VERSION, as RAUC 1.10
    and later give it; None: not given) and, when `manifest` is given, with the bundle
    mounted (RAUC 1.8 gives only that), with the box's state folder at `state` and `running`
    in the root's version file (none when None)."""
    version_file = state.parent / "version"
    version_file.unlink(missing_ok=True)
    if running is not None:
        version_file.write_text(running + "\n")
    env = {
        "PATH": os.environ["PATH"],
        "RAUC_CURRENT_BOOTNAME": "A",
        "PITLINK_STATE_DIR": str(state),
        "PITLINK_VERSION_FILE": str(version_file),
    }
    if version is not None:
        env["RAUC_MF_VERSION"] = version
    if manifest is not None:
        mounted = state.parent / "bundle"
        mounted.mkdir(exist_ok=True)
        (mounted / "manifest.raucm").write_bytes(manifest)
        env["RAUC_BUNDLE_MOUNT_POINT"] = str(mounted)
    return subprocess.run(
        ["bash", str(HANDLER)], env=env, capture_output=True, text=True, timeout=30
    )


@pytest.fixture
def state(tmp_path: Path) -> Path:
    (tmp_path / "state" / "update").mkdir(parents=True)
    return tmp_path / "state"


def set_floor(state: Path, version: str | bytes | None) -> None:
    floor = state / "update" / "highest-version"
    if version is None:
        floor.unlink(missing_ok=True)
    else:
        floor.write_bytes(version if isinstance(version, bytes) else version.encode() + b"\n")


def allowed(done: subprocess.CompletedProcess[str]) -> bool:
    """Whether the handler let the bundle through, checking that it said so either way."""
    assert done.returncode in (0, 1), done
    assert done.stdout == "", done.stdout
    word = "allowed:" if done.returncode == 0 else "refused:"
    assert f"pitlink-preinstall: {word}" in done.stderr, done.stderr
    return done.returncode == 0


@pytest.mark.parametrize(("a", "b", "expected"), CASES)
def test_the_handler_orders_versions_as_the_agent_does(
    state: Path, a: str, b: str, expected: int | None
) -> None:
    """A bundle of `a` on a box whose newest version is `b` goes in exactly when a is newer;
    and the other way round."""
    set_floor(state, b)
    done = handler(state, a)
    assert allowed(done) == (expected == 1), done.stderr
    if expected is None:
        assert "is not a version" in done.stderr or "not a version: not counted" in done.stderr
        return
    set_floor(state, a)
    assert allowed(handler(state, b)) == (expected == -1)


def test_a_refusal_names_both_versions(state: Path) -> None:
    set_floor(state, "2.0.0+20261207T070618")
    done = handler(state, "1.9.9+20270101T000000")
    assert done.returncode == 1
    assert (
        "refused: version 1.9.9+20270101T000000 is not newer than 2.0.0+20261207T070618, the"
        " newest this box has run: a downgrade needs a USB stick and the box's PIN"
    ) in done.stderr
    # The same version again is no update either.
    assert not allowed(handler(state, "2.0.0+20261207T070618"))


def test_the_running_version_stands_in_for_a_missing_or_unreadable_record(state: Path) -> None:
    set_floor(state, None)
    assert not allowed(handler(state, "1.0.0", running="1.2.0"))
    assert allowed(handler(state, "1.2.1", running="1.2.0"))
    for damaged in (b"", b"\xff\xfe\0garbage\n", b"9" * 10_000, b"1.2.3-rc1\n"):
        set_floor(state, damaged)
        done = handler(state, "1.0.0", running="1.2.0")
        assert not allowed(done), damaged
        assert "not newer than 1.2.0" in done.stderr
        assert len(done.stderr) < 1000  # what the file held is shown bounded
    # The higher of the two counts: a record above the running version (the box ran a newer
    # slot, and then was rolled back) ...
    set_floor(state, "1.5.0")
    assert not allowed(handler(state, "1.4.0", running="1.2.0"))
    # ... and the running version above the record (the agent has not written it yet).
    set_floor(state, "1.0.0")
    assert not allowed(handler(state, "1.1.0", running="1.2.0"))
    # A box that knows no version at all has nothing to protect.
    set_floor(state, None)
    assert allowed(handler(state, "0.0.1", running=None))
    assert "knows no version" in handler(state, "0.0.1", running="garbage").stderr


def test_a_downgrade_goes_in_only_with_a_permit_for_exactly_its_version(state: Path) -> None:
    set_floor(state, "2.0.0")
    permit = state / "update" / "allow-downgrade"
    for wrong in ("1.0.1", "1.0.0+1", "1.0.0 ", "1.0", "", "\n1.0.0"):
        permit.write_text(wrong + "\n")
        done = handler(state, "1.0.0")
        assert not allowed(done), wrong
    permit.write_text("1.0.0+20261207T070618\n")
    done = handler(state, "1.0.0")
    assert (
        "allow-downgrade allows '1.0.0+20261207T070618', not this bundle's version" in done.stderr
    )
    permit.write_text("1.0.0\n")
    done = handler(state, "1.0.0")
    assert allowed(done)
    assert "the downgrade was asked for on the status page" in done.stderr
    # Without the trailing newline, as much as with it; the permit is never removed here (the
    # agent removes it once the install ends).
    permit.write_text("1.0.0")
    assert allowed(handler(state, "1.0.0"))
    assert permit.read_text() == "1.0.0"
    # The floor file is never written by the handler.
    assert (state / "update" / "highest-version").read_text() == "2.0.0\n"


def test_a_bundle_without_a_version_is_refused(state: Path) -> None:
    set_floor(state, None)
    for version in ("", "9.0.0-good", "../../etc/passwd", "1.0.0\x1b[31m", "x" * 5000):
        done = handler(state, version, running=None)
        assert not allowed(done), version
        assert "is not a version (MAJOR.MINOR.PATCH, optionally +BUILD)" in done.stderr
        assert "\x1b" not in done.stderr and len(done.stderr) < 300


def test_the_handler_reads_the_state_folder_the_agent_writes() -> None:
    """The handler's STATE_DIR is the agent's --state-dir in the image's unit."""
    unit = (REPO / "pits_appliance" / "systemd" / "pits-agent.service").read_text()
    assert " --state-dir /var/lib/pitlink " in unit
    assert 'state="${PITLINK_STATE_DIR:-/var/lib/pitlink}"' in HANDLER.read_text()


def manifest(version: str) -> bytes:
    return (
        f"[update]\ncompatible=pitlink-amd64\nversion={version}\n\n[bundle]\nformat=verity\n\n"
        "[image.rootfs]\nfilename=root.ext4\n"
    ).encode()


def test_the_version_is_read_from_the_bundles_own_manifest(state: Path) -> None:
    """RAUC 1.8 gives the handler the bundle, mounted, and no RAUC_MF_VERSION."""
    set_floor(state, "1.0.0")
    assert allowed(handler(state, None, manifest=manifest("1.0.1")))
    done = handler(state, None, manifest=manifest("0.9.0"))
    assert not allowed(done)
    assert "refused: version 0.9.0 is not newer than 1.0.0" in done.stderr
    # As RAUC's key files are read: blanks around the key and before the value, the last
    # `version` of [update] counts, other sections' do not.
    odd = b"[bundle]\nversion=9.9.9\n[update]\n version = 0.5.0\nversion=  1.2.0\n[x]\nversion=0.1.0\n"
    assert "allowed: version 1.2.0 is newer" in handler(state, None, manifest=odd).stderr
    for broken in (
        b"",
        b"[update]\ncompatible=pitlink-amd64\n",
        b"version=9.0.0\n",
        b"\0" * 100_000,
    ):
        done = handler(state, None, manifest=broken)
        assert not allowed(done), broken[:40]
        assert "the bundle's manifest names no version" in done.stderr
    done = handler(state, None, manifest=manifest("2.0.0\r"))
    assert not allowed(done) and "is not a version" in done.stderr


def test_rauc_and_the_manifest_must_agree(state: Path) -> None:
    set_floor(state, "1.0.0")
    assert allowed(handler(state, "2.0.0", manifest=manifest("2.0.0")))
    done = handler(state, "2.0.0", manifest=manifest("3.0.0"))
    assert not allowed(done)
    assert "RAUC says version '2.0.0', the bundle's manifest '3.0.0'" in done.stderr
    done = handler(state, None)
    assert not allowed(done) and "RAUC gave no bundle" in done.stderr
