"""Executing one `fetch` command: the allowlist, the origin, the canonical body and the ETag.

This is the LAN's last line of defence: whatever the cloud asks, only GET and HEAD of an
allowed, normalized path ever reach FPVTrackside, and a `.json` body that does not decode is
refused (BAD_CONTENT) instead of replacing good data anywhere.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import OrderedDict

from pits_appliance.origin import Origin, OriginReply
from wire import ErrorCode, ProtocolError
from wire.canonical import etag_matches, is_json_path, prepare_body
from wire.flights import Flights
from wire.mediatypes import content_type_for_path
from wire.messages import RESPONSE_STATUSES, Fetch, Response
from wire.paths import Allowlist, check_method, normalize_path

log = logging.getLogger("pitlink.pits.fetch")


class KnownBodies:
    """The ETag of the last body FPVTrackside sent for each JSON path, by a digest of its bytes.

    Most fetches are revalidations of a file that has not changed. Decoding and re-encoding it
    canonically only to find the ETag the relay already holds is most of the agent's work on
    such a fetch (about 0.15 ms for 13 KB here, several times that on a Pi); the same bytes
    give the same ETag, so a digest of them is enough to answer 304. Bounded: the least
    recently used paths are forgotten first.
    """

    def __init__(self, max_paths: int = 1024):
        self.max_paths = max_paths
        self._known: OrderedDict[str, tuple[bytes, str]] = OrderedDict()

    @staticmethod
    def digest(raw: bytes) -> bytes:
        return hashlib.blake2b(raw, digest_size=16).digest()

    def etag(self, path: str, digest: bytes) -> str | None:
        """The ETag of `path`'s body if its bytes are the ones seen last, else None."""
        known = self._known.get(path)
        if known is None or known[0] != digest:
            return None
        self._known.move_to_end(path)
        return known[1]

    def remember(self, path: str, digest: bytes, etag: str) -> None:
        self._known[path] = (digest, etag)
        self._known.move_to_end(path)
        while len(self._known) > self.max_paths:
            self._known.popitem(last=False)

    def __len__(self) -> int:
        return len(self._known)


class Executor:
    """Turns a Fetch into a Response, or raises ProtocolError."""

    def __init__(self, origin: Origin, allowlist: Allowlist, *, fetch_timeout: float = 5.0):
        self.origin = origin
        self.allowlist = allowlist
        self.fetch_timeout = fetch_timeout
        self.known = KnownBodies()
        self._flights: Flights[str, asyncio.Future[OriginReply]] = Flights()

    async def origin_get(self, path: str, timeout: float) -> OriginReply:
        """One origin request per path at a time: identical fetches share it (the watcher's
        reads too, pits_appliance.watcher)."""
        flight = self._flights.join(
            path, lambda: asyncio.ensure_future(self.origin.get(path, timeout))
        )
        try:
            # asyncio.timeout, not wait_for: Python 3.11's wait_for returns the result when the
            # caller is cancelled just as the flight lands, and the cancellation is lost.
            async with asyncio.timeout(timeout):
                return await asyncio.shield(flight)
        except TimeoutError:
            raise ProtocolError(
                ErrorCode.TIMEOUT, f"FPVTrackside did not answer in {timeout:g} s"
            ) from None

    async def execute(self, fetch: Fetch) -> Response:
        method = check_method(fetch.method)
        path = normalize_path(fetch.path)
        self.allowlist.check(path)
        timeout = min(self.fetch_timeout, fetch.timeout_ms / 1000)
        # Always GET, even for HEAD: the ETag is the hash of the body.
        reply = await self.origin_get(path, timeout)
        if reply.status not in RESPONSE_STATUSES or reply.status == 304:
            # A redirect, a 204, a 1xx: nothing the relay could serve as this path's data.
            raise ProtocolError(
                ErrorCode.BAD_CONTENT, f"FPVTrackside answered HTTP {reply.status} for {path}"
            )
        if reply.status != 200:
            return Response(
                status=reply.status,
                content_type=content_type_for_path(path),
                body=None if method == "HEAD" else reply.body,
            )
        if is_json_path(path) and (reply.content_type or "").lower().startswith("text/html"):
            log.warning(
                "FPVTrackside answered a JSON path with an HTML page",
                extra={"path": path, "origin_type": (reply.content_type or "")[:200]},
            )
        digest = None
        if is_json_path(path):
            digest = self.known.digest(reply.body)
            known = self.known.etag(path, digest)
            if known is not None and etag_matches(fetch.if_none_match, known):
                return Response(status=304, etag=known)
        try:
            body, etag = prepare_body(path, reply.body)
        except ProtocolError as exc:
            log.warning(
                "origin body refused",
                extra={
                    "path": path,
                    "code": str(exc.code),
                    "origin_type": (reply.content_type or "")[:200],
                },
            )
            raise
        if digest is not None:
            self.known.remember(path, digest, etag)
        if etag_matches(fetch.if_none_match, etag):
            return Response(status=304, etag=etag)
        return Response(
            status=200,
            etag=etag,
            content_type=content_type_for_path(path),
            body=None if method == "HEAD" else body,
        )
