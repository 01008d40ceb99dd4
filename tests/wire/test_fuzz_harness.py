"""The fuzz harness (scripts/fuzz, scripts/fuzz_targets.py): a short run of each engine finds
nothing in wire/ nor in the parsers of files and local answers, and finds the bug the canary
target plants, saving the input that shows it.

Long runs are for people (`scripts/fuzz --runs 1000000 --seed 0`); this proves in CI that the
harness still works. The atheris engine runs where atheris is installed in .venv (scripts/fuzz
installs it); the Hypothesis-driven fallback runs everywhere.
"""

from __future__ import annotations

import importlib.util
import random
import subprocess
import sys
from pathlib import Path

import pytest

from pitlink_testkit import fuzz_parsers, fuzz_targets
from pitlink_testkit.fuzz_targets import ALL, SEEDS, TARGETS, FuzzFinding, check_accepted_path
from wire.paths import Allowlist

REPO = Path(__file__).resolve().parents[2]
FUZZ = REPO / "scripts" / "fuzz"

ENGINES = [
    pytest.param(
        "atheris",
        marks=pytest.mark.skipif(
            importlib.util.find_spec("atheris") is None,
            reason="atheris is not installed in .venv (scripts/fuzz installs it)",
        ),
    ),
    "hypothesis",
]
# Hypothesis runs an order of magnitude fewer inputs per second than libFuzzer.
RUNS = {"atheris": 2000, "hypothesis": 200}
PARSERS = list(fuzz_parsers.TARGETS)


def fuzz(tmp_path: Path, *args: str, wrapper: bool = True) -> subprocess.CompletedProcess[str]:
    """Run scripts/fuzz, or straight scripts/fuzz_targets.py (which skips the venv check)."""
    command = (
        [str(FUZZ)] if wrapper else [sys.executable, str(REPO / "scripts" / "fuzz_targets.py")]
    )
    return subprocess.run(
        [*command, "--crash-dir", str(tmp_path / "crashes"), *args],
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )


def mutations(seeds: list[bytes], count: int) -> list[bytes]:
    """Seeds with a slice replaced by random bytes: a fuzzer's first steps, reproducibly."""
    rnd = random.Random(1)
    out = []
    for _ in range(count):
        base = rnd.choice(seeds)
        at = rnd.randrange(len(base) + 1)
        piece = rnd.randbytes(rnd.randrange(4))
        out.append(base[:at] + piece + base[at + rnd.randrange(4) :])
    return out


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", ["frames", "paths"])
def test_targets_pass_on_seeds_and_mutations(name: str) -> None:
    assert len(SEEDS[name]) >= 10
    for data in SEEDS[name] + mutations(SEEDS[name], 500):
        TARGETS[name](data)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", PARSERS)
def test_parser_targets_pass_on_seeds_and_mutations(name: str) -> None:
    """Every seed list holds the inputs that raised RecursionError before issue 25's fixes."""
    assert b"[" * 5000 in SEEDS[name] and name in ALL
    for data in SEEDS[name] + mutations(SEEDS[name], 200):
        TARGETS[name](data)


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("out", "finding"),
    [
        ("/events/../x", "segment made only of dots"),
        ("/events/...", "segment made only of dots"),
        ("/events/a\\b", "backslash"),
        ("/events/a\x85", "control character"),
        ("/events/%2e", "percent sign left"),
        ("//events", "repeated slash"),
        ("events/x", "does not start with /"),
    ],
)
def test_path_checks_catch_bad_outputs(out: str, finding: str) -> None:
    with pytest.raises(FuzzFinding, match=finding):
        check_accepted_path(out)


@pytest.mark.timeout(120)
def test_path_checks_catch_a_wrong_normalizer_or_allowlist(monkeypatch: pytest.MonkeyPatch) -> None:
    check_accepted_path("/events/x")
    with pytest.raises(FuzzFinding, match="normalize is not idempotent"):
        check_accepted_path("/events/x", normalize=str.upper)
    monkeypatch.setattr(fuzz_targets, "ALLOWLIST", Allowlist(["/**"]))
    with pytest.raises(FuzzFinding, match="default allowlist disagrees"):
        check_accepted_path("/x")


@pytest.mark.timeout(120)
def test_canary_fails_on_a_seed() -> None:
    with pytest.raises(FuzzFinding, match="segment made only of dots"):
        TARGETS["canary"](b"/events/%2e%2e/x")
    TARGETS["paths"](b"/events/%2e%2e/x")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("engine", ENGINES)
def test_fuzz_finds_nothing_in_wire(tmp_path: Path, engine: str) -> None:
    runs = RUNS[engine]
    result = fuzz(tmp_path, "--engine", engine, "--runs", str(runs), "--seed", "1")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert output.count(f"Done {runs} runs") == len(ALL), output
    assert f"fuzz: {', '.join(ALL)}: {runs} runs each ({engine}), nothing found" in output
    assert ALL[:2] == ("frames", "paths") and set(PARSERS) <= set(ALL)
    assert not (tmp_path / "crashes").exists() or not any((tmp_path / "crashes").iterdir())


@pytest.mark.timeout(120)
@pytest.mark.parametrize("engine", ENGINES)
def test_fuzz_saves_what_it_finds(tmp_path: Path, engine: str) -> None:
    runs = str(RUNS[engine])
    result = fuzz(tmp_path, "--engine", engine, "--runs", runs, "--target", "canary", wrapper=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "FuzzFinding" in output
    assert "fuzz: found a failure in canary" in output
    [crash] = (tmp_path / "crashes").iterdir()
    assert crash.name.startswith("canary-crash-")
    # The saved input is the one that fails, and only the planted bug makes it fail.
    with pytest.raises(FuzzFinding):
        TARGETS["canary"](crash.read_bytes())
    TARGETS["paths"](crash.read_bytes())
    replay = fuzz(tmp_path, "--target", "canary", "--reproduce", str(crash), wrapper=False)
    assert replay.returncode == 1, replay.stdout + replay.stderr
    assert "FuzzFinding" in replay.stderr


def test_crash_folder_is_gitignored() -> None:
    assert fuzz_targets.CRASH_DIR == REPO / "fuzz" / "crashes"
    ignored = (REPO / ".gitignore").read_text().splitlines()
    assert "fuzz/crashes/" in ignored
