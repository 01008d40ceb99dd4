"""Fetches through the replica that holds the pits connection.

A replica without the connection publishes the request on the holder's channel and waits for
the reply on its own; the holder serves it through its own cache and coalescing, so one path is
fetched once however spectators spread over the replicas.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from cloud.cache import Served
from cloud.ratelimit import RateLimited
from cloud.replica_messages import FetchReply, FetchRequest
from cloud.shared import SharedRedis, node_channel
from wire import ErrorCode, ProtocolError

log = logging.getLogger("pitlink.cloud.cluster")

# How the holder serves a request that came from another replica (cloud.relay.Relay.get).
Serve = Callable[[str, str, str], Awaitable[Served]]


@dataclass(frozen=True)
class Remote:
    """A reply from the holder replica."""

    status: int
    etag: str | None
    body: bytes | None  # None: unchanged from the ETag we sent
    age: float


class Forwarding:
    """Requests this replica sent to others, and requests others sent to it."""

    def __init__(
        self,
        redis: SharedRedis,
        *,
        serve: Serve,
        clock: Callable[[], float],
        default_timeout: float,
    ):
        self.redis = redis
        self.metrics = redis.metrics
        self.serve = serve
        self.clock = clock
        self.default_timeout = default_timeout
        self._pending: dict[str, asyncio.Future[FetchReply]] = {}
        self._serving: set[asyncio.Task[None]] = set()

    async def forward(
        self,
        node: str,
        pits_id: str,
        path: str,
        if_none_match: str | None,
        timeout: float,
        request_id: str,
    ) -> Remote:
        """Ask the holder replica for a path; raises ProtocolError like a local fetch would.

        Raises LookupError when no replica heard the request (the holder is gone).
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[FetchReply] = loop.create_future()
        self._pending[request_id] = future
        request = FetchRequest(
            id=request_id,
            sender=self.redis.node_id,
            pits=pits_id,
            path=path,
            if_none_match=if_none_match,
            timeout=timeout,
        )
        try:
            if not await self.redis.publish(node_channel(node), request):
                raise LookupError(node)
            try:
                reply = await asyncio.wait_for(future, timeout)
            except TimeoutError:
                raise ProtocolError(
                    ErrorCode.TIMEOUT, f"no answer through replica {node} in {timeout:g} s"
                ) from None
        finally:
            self._pending.pop(request_id, None)
        if reply.error is not None:
            if reply.retry_after is not None:
                raise RateLimited(reply.message[:500], reply.retry_after)
            raise ProtocolError(reply.error, reply.message[:500])
        return Remote(reply.status, reply.etag, reply.body, reply.age)

    def replied(self, reply: FetchReply) -> None:
        future = self._pending.get(reply.id)
        if future is not None and not future.done():
            future.set_result(reply)

    def asked(self, request: FetchRequest) -> None:
        task = asyncio.ensure_future(self._serve_remote(request))
        self._serving.add(task)
        task.add_done_callback(self._serving.discard)

    async def _serve_remote(self, request: FetchRequest) -> None:
        """Another replica asks for a pits we hold: serve it through our own cache."""
        reply: FetchReply
        try:
            served = await asyncio.wait_for(
                self.serve(request.pits, request.path, request.id),
                request.timeout or self.default_timeout,
            )
        except ProtocolError as exc:
            wait = exc.retry_after if isinstance(exc, RateLimited) else None
            reply = FetchReply(id=request.id, error=exc.code, message=exc.message, retry_after=wait)
        except TimeoutError as exc:
            reply = FetchReply(id=request.id, error=ErrorCode.TIMEOUT, message=str(exc))
        else:
            self.metrics.served_for_replicas.inc()
            unchanged = served.etag is not None and served.etag == request.if_none_match
            reply = FetchReply(
                id=request.id,
                status=served.status,
                etag=served.etag,
                age=max(0.0, self.clock() - served.fetched_at),
                body=None if unchanged else served.body,
            )
        await self.redis.publish(node_channel(request.sender), reply)

    def stop(self) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ProtocolError(ErrorCode.UNAVAILABLE, "replica stopping"))
