"""Fixtures every test may ask for, and the check of every log line of the run."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Generator
from pathlib import Path

import pytest

from pitlink_testkit.fpvtrackside import Simulator
from pitlink_testkit.logcheck import RECORDER, Expected, find_secrets, not_json, unexpected, unseen
from pitlink_testkit.system import System

# pytester runs the log check on tests written for it (tests/pitlink_testkit/test_logcheck.py).
pytest_plugins = ["pytester"]

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "fpvtrackside"


@pytest.fixture
def fixtures_root() -> Path:
    """The real FPVTrackside event kept in the repo (tests/fixtures/README.md says whence)."""
    assert (FIXTURES / "events").is_dir(), f"the real event is missing from {FIXTURES}"
    return FIXTURES


# -- the real parts on loopback --------------------------------------------------------------


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    simulator = Simulator(seed=7, lap_interval=None)
    await simulator.start()
    yield simulator
    await simulator.stop()


@pytest.fixture
async def system(tmp_path: Path, sim: Simulator) -> AsyncIterator[System]:
    """Simulator, relay and a connected agent; freshness 0 (every request revalidates) and no
    rate limits, so that tests see the chain itself. Limits have tests of their own. The box
    pulls only (NO_PUSH): what these tests count (fetches, cache entries, requests at the
    origin) is what spectators' requests cause; pushing has tests of its own (test_live_*)."""
    s = System(tmp_path, sim)
    await s.start_relay(freshness=0.0, client_rate=None, pits_fetch_rate=None)
    await s.start_agent(no_push=True)
    yield s
    await s.close()


# -- every log line of the run: JSON, no secrets, no error a test did not declare ------------

_CALL_PASSED = pytest.StashKey[bool]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "provokes_error(logger, message, *, why, required=True): the test logs, on purpose, an"
        " ERROR (or a traceback) from `logger` whose message matches the regular expression"
        " `message`, because `why`; any other such record fails it",
    )
    root = logging.getLogger()
    root.addHandler(RECORDER)
    root.setLevel(logging.DEBUG)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(
    item: pytest.Item, nextitem: pytest.Item | None
) -> Generator[None, object, object]:
    RECORDER.test = item.nodeid
    try:
        return (yield)
    finally:
        RECORDER.test = None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.when == "call":
        item.stash[_CALL_PASSED] = report.passed
    return report


def _declared(item: pytest.Item) -> list[Expected]:
    return [Expected(*m.args, **m.kwargs) for m in item.iter_markers("provokes_error")]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A malformed provokes_error stops the run before any test, naming the test."""
    for item in items:
        try:
            _declared(item)
        except (TypeError, ValueError, re.error) as e:
            raise pytest.UsageError(
                f"{item.nodeid}: provokes_error(logger, message, *, why, required=True): {e}"
            ) from e


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(
    item: pytest.Item, nextitem: pytest.Item | None
) -> Generator[None, object, object]:
    """After the test's fixtures are gone: every error it logged was declared, and (if it
    passed) every declared error was logged."""
    result = yield
    errors, expected = RECORDER.errors_of(item.nodeid), _declared(item)
    problems = [f"unexpected in the log: {e}" for e in unexpected(errors, expected)]
    if item.stash.get(_CALL_PASSED, False):
        problems += [f"declared but not logged: {x}" for x in unseen(errors, expected)]
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)
    return result


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    leaks = find_secrets(RECORDER.lines) + not_json(RECORDER.lines)
    stray = RECORDER.errors_of(None)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(
            f"\nlog check: {len(RECORDER.lines)} log lines captured, {len(leaks)} not JSON or"
            f" with secrets, {len(RECORDER.errors)} errors or tracebacks"
            f" ({len(stray)} outside any test)"
        )
        for leak in leaks[:10]:
            reporter.write_line(f"  bad log line: {leak}")
        for error in stray[:10]:
            reporter.write_line(f"  error outside any test: {error}")
    if leaks or stray:
        session.exitstatus = 1
