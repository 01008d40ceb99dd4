"""Waiting for a condition with a deadline: `wait_for` in a test's event loop, `poll` outside it.

Every wait in the tests and benches is one of these two. A condition is checked until it holds
or the deadline passes, so that nothing sleeps for a guessed time, and a hang fails with the
name of what it waited for instead of at the test's timeout.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any


class TimedOut(AssertionError):
    """A condition did not hold before its deadline.

    An AssertionError, so that a test reports it as the broken promise it is.
    """


async def wait_for(
    predicate: Callable[[], Any] | Callable[[], Awaitable[Any]],
    *,
    timeout: float = 10.0,
    interval: float = 0.01,
    what: str = "condition",
) -> Any:
    """Poll `predicate` (plain or async) until it is truthy, and return its value.

    Between checks the event loop runs, so the parts under test make progress. Raises TimedOut
    naming `what` after `timeout` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimedOut(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(interval)


def poll(
    check: Callable[[], Any],
    *,
    timeout: float = 30.0,
    interval: float = 0.05,
    what: str = "condition",
) -> Any:
    """Call `check` until it is truthy, sleeping between calls, and return its value.

    For code without an event loop: tests and benches that run the programs as processes, which
    take longer to start than parts in the test's loop (hence the longer default). Raises
    TimedOut naming `what` after `timeout` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimedOut(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)
