"""The log check: an undeclared ERROR or traceback fails its test, a declared one does not, and a
declaration that nothing matched fails a passing test."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from pitlink_testkit.logcheck import ErrorRecord, Expected, Recorder, unexpected, unseen

CONFTEST = Path(__file__).resolve().parents[1] / "conftest.py"


def record(recorder: Recorder, level: int, message: str, *, exc: bool = False) -> None:
    logger = logging.getLogger("pitlink.test.logcheck")
    exc_info = None
    if exc:
        try:
            raise ValueError("boom")
        except ValueError as e:
            exc_info = (type(e), e, e.__traceback__)
    recorder.handle(logger.makeRecord(logger.name, level, __file__, 1, message, (), exc_info))


def test_errors_and_tracebacks_are_kept_with_their_test() -> None:
    recorder = Recorder()
    recorder.test = "t1"
    record(recorder, logging.INFO, "fine")
    record(recorder, logging.ERROR, "broken")
    record(recorder, logging.WARNING, "retrying", exc=True)
    recorder.test = None
    record(recorder, logging.CRITICAL, "between tests")
    assert len(recorder.lines) == 4
    assert [(e.test, e.level, e.message, e.exception) for e in recorder.errors] == [
        ("t1", "ERROR", "broken", None),
        ("t1", "WARNING", "retrying", "ValueError: boom"),
        (None, "CRITICAL", "between tests", None),
    ]
    assert [e.message for e in recorder.errors_of("t1")] == ["broken", "retrying"]


def test_a_declaration_matches_by_logger_and_message_pattern() -> None:
    errors = [
        ErrorRecord("t", "tornado.access", "ERROR", "502 GET /pits/p/a.json 1.00ms", None),
        ErrorRecord("t", "pitlink.cloud", "ERROR", "502 GET /pits/p/a.json", None),
    ]
    declared = [Expected("tornado.access", r"^502 GET /pits/p/", why="the origin is down")]
    assert unexpected(errors, declared) == errors[1:]
    assert unseen(errors, declared) == []
    absent = Expected("tornado.access", r"^504 ", why="a timeout")
    optional = Expected("tornado.access", r"^503 ", why="maybe shed", required=False)
    assert unseen(errors, [*declared, absent, optional]) == [absent]


def test_a_declaration_says_why() -> None:
    with pytest.raises(ValueError, match="say why"):
        Expected("tornado.access", "^502", why=" ")


@pytest.mark.timeout(120)
def test_the_hooks_fail_what_was_not_declared(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(CONFTEST.read_text())
    pytester.makepyfile(
        test_inner="""
        import logging

        import pytest

        log = logging.getLogger("pitlink.inner")


        def test_quiet():
            log.warning("a warning is not an error")


        def test_undeclared_error():
            log.error("nobody expected this")


        def test_undeclared_traceback():
            try:
                raise KeyError("gone")
            except KeyError:
                log.info("handled", exc_info=True)


        @pytest.mark.provokes_error("pitlink.inner", "^on purpose$", why="the test says so")
        def test_declared_error():
            log.error("on purpose")


        @pytest.mark.provokes_error("pitlink.inner", "^on purpose$", why="but it never comes")
        def test_declared_but_absent():
            pass


        @pytest.mark.provokes_error("pitlink.inner", "^on purpose$", why="the test fails first")
        def test_failing_before_its_error():
            assert False
        """
    )
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-o", "asyncio_default_fixture_loop_scope=function"
    )
    result.assert_outcomes(passed=5, failed=1, errors=3)
    result.stdout.fnmatch_lines_random(
        [
            "*ERROR at teardown of test_undeclared_error*",
            "*unexpected in the log: ERROR pitlink.inner: nobody expected this",
            "*ERROR at teardown of test_undeclared_traceback*",
            "*unexpected in the log: INFO pitlink.inner: handled (traceback: KeyError: 'gone')",
            "*ERROR at teardown of test_declared_but_absent*",
            "*declared but not logged: pitlink.inner: /^on purpose$/ (but it never comes)",
        ]
    )
    result.stdout.no_fnmatch_line("*teardown of test_failing_before_its_error*")
