"""The relay's `fetch` commands: answered from FPVTrackside, each in a task of its own.

At most `max_concurrent_commands` at once; more are answered `BUSY` at once, and every fetch
`UNAVAILABLE` while answering is paused at the pits. Each answer, and how long it took, is
counted and logged (one line per fetch, without bodies).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from pits_appliance.executor import Executor
from pits_appliance.metrics import AgentMetrics
from pits_appliance.outbox import Outbox
from pits_appliance.state import AgentState
from wire import ErrorCode, ProtocolError
from wire import messages as m

log = logging.getLogger("pitlink.pits.link")
fetch_log = logging.getLogger("pitlink.pits.fetch")


class Fetches:
    """The fetches under way on the current link."""

    def __init__(
        self,
        *,
        executor: Executor,
        outbox: Outbox,
        state: AgentState,
        metrics: AgentMetrics,
        max_concurrent: int,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.executor = executor
        self.outbox = outbox
        self.state = state
        self.metrics = metrics
        self.max_concurrent = max_concurrent
        self.clock = clock
        self.tasks: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self.tasks)

    def take(self, frame_id: str, fetch: m.Fetch) -> None:
        """A fetch from the relay: refused at once, or answered when FPVTrackside has."""
        refusal: m.Error | None = None
        if self.state.paused:
            refusal = m.Error(code=ErrorCode.UNAVAILABLE, message="answering is paused at the pits")
        elif len(self.tasks) >= self.max_concurrent:
            refusal = m.Error(
                code=ErrorCode.BUSY,
                message=f"the pits is already handling {len(self.tasks)} fetches",
            )
        if refusal is not None:
            self.metrics.fetches.labels(str(refusal.code)).inc()
            self.outbox.send(refusal, frame_id)
            return
        task = asyncio.ensure_future(self._fetch(frame_id, fetch))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def cancel_all(self) -> None:
        """The link is gone: nobody waits for these answers any more."""
        for task in list(self.tasks):
            task.cancel()

    async def _fetch(self, frame_id: str, fetch: m.Fetch) -> None:
        started = self.clock()
        outcome = "ok"
        reply: m.Message
        try:
            reply = await self.executor.execute(fetch)
            now = time.time()
            self.state.last_success = now
            self.state.last_fetch = now
            self.state.set("origin_reachable", True)
            self.metrics.last_success.set(now)
        except ProtocolError as exc:
            outcome = str(exc.code)
            reply = m.Error(code=exc.code, message=exc.message, details=exc.details)
            self.state.last_fetch = time.time()
            if exc.code in (ErrorCode.ORIGIN_UNREACHABLE, ErrorCode.TIMEOUT):
                self.state.set("origin_reachable", False)
                self.state.origin_error = exc.message
        except Exception:
            log.exception("fetch failed", extra={"request_id": frame_id})
            outcome = "INTERNAL"
            reply = m.Error(code=ErrorCode.INTERNAL, message="the agent failed on this request")
        elapsed = self.clock() - started
        self.metrics.origin_fetch.observe(elapsed)
        self.metrics.fetches.labels(outcome).inc()
        fetch_log.info(
            "fetch",
            extra={
                "request_id": frame_id,
                "path": fetch.path[:200],
                "outcome": outcome,
                "latency_ms": round(elapsed * 1000, 1),
            },
        )
        self.outbox.send(reply, frame_id)
