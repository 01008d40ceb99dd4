"""Downloading an update bundle from the relay: in ranges of a few MB, each appended to a file
that survives a cut, a relay error or an agent restart, so a download over a venue's uplink
resumes where it stopped; at most `attempts` failures in a row, with backoff between them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import shutil
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import tornado.httpclient
import tornado.iostream

from pits_appliance.httpclient import HTTPClient
from wire.backoff import Backoff
from wire.messages import Offer

log = logging.getLogger("pitlink.pits.update")

MIB = 1024 * 1024


class Retry(Exception):
    """A request that may work when tried again (a cut, a 5xx, a 429)."""


class Stop(Exception):
    """The update ends here; `state` is `failed` or `refused`, the message says why."""

    def __init__(self, state: str, message: str):
        super().__init__(message)
        self.state = state
        self.message = message


def bundles_url(relay_url: str, bundle: str) -> str:
    """`wss://relay.example/control` or `https://relay.example` -> its bundle's HTTPS address."""
    parts = urlsplit(relay_url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    path = parts.path.rstrip("/")
    if path.endswith("/control"):
        path = path[: -len("/control")]
    return urlunsplit((scheme, parts.netloc, f"{path}/pits-api/bundles/{bundle}", "", ""))


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(MIB):
            digest.update(block)
    return digest.hexdigest()


def _mb(n: int) -> int:
    return max(0, round(n / MIB))


@dataclass
class BundleDownload:
    """One bundle from `url` (the relay's /pits-api/bundles/<id>) with the box's token."""

    url: str
    token: Callable[[], str]
    tls: ssl.SSLContext | None
    chunk: int
    attempts: int
    retry_base: float
    keep_free: int
    progress: Callable[[int, bool], None]  # (bytes on disk, report even if one was just sent)
    rand: Callable[[], float] = random.random
    # Before each range: how many bytes to ask for (it may wait first: the race gate).
    pace: Callable[[int], Awaitable[int]] | None = None

    async def run(self, offer: Offer, folder: Path) -> Path:
        """Download the offered bundle into `folder`; its path once size and sha256 match."""
        assert offer.bundle is not None
        folder.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 (local, tiny)
        # Another bundle's download: the newer offer replaced it. Only bundles: the folder
        # also keeps the version floor and the downgrade permit (update_floor.py).
        for old in folder.iterdir():  # noqa: ASYNC240 (local, tiny)
            bundle = old.name.endswith((".raucb", ".raucb.part"))
            if bundle and not old.name.startswith(offer.bundle + "."):
                old.unlink(missing_ok=True)
        final = folder / f"{offer.bundle}.raucb"
        part = folder / f"{offer.bundle}.raucb.part"
        final.unlink(missing_ok=True)
        have = part.stat().st_size if part.exists() else 0
        if have > offer.size:
            part.unlink()
            have = 0
        free = shutil.disk_usage(folder).free
        need = offer.size - have + self.keep_free
        if free < need:
            raise Stop("failed", f"The update needs {_mb(need)} MB free, has {_mb(free)}.")
        client = HTTPClient(max_body_size=offer.size + 1, max_buffer_size=MIB)
        backoff = Backoff(base=self.retry_base, cap=60.0 * self.retry_base, rand=self.rand)
        failures = 0
        self.progress(have, True)
        try:
            while have < offer.size:
                size = await self.pace(self.chunk) if self.pace is not None else self.chunk
                end = min(offer.size, have + size) - 1
                try:
                    got = await self._get_range(client, self.url, part, have, end, offer)
                    if got <= have:
                        raise Retry("the relay sent no bytes")
                    have = got
                except Retry as exc:
                    failures += 1
                    have = part.stat().st_size if part.exists() else 0
                    log.info("update download interrupted", extra={"error": str(exc)})
                    if failures >= self.attempts:
                        raise Stop(
                            "failed", f"The download failed {failures} times in a row: {exc}."
                        ) from None
                    await asyncio.sleep(backoff.next_delay())
                    continue
                failures = 0
                backoff.reset()
                self.progress(have, False)
        finally:
            await client.close()  # a range still coming in (cancelled: withdrawn, or stop)
        if await asyncio.to_thread(sha256_file, part) != offer.sha256:
            part.unlink(missing_ok=True)
            raise Stop("refused", "The download does not match the sha256 offered; deleted.")
        part.rename(final)
        self.progress(have, True)
        return final

    async def _get_range(
        self,
        client: HTTPClient,
        url: str,
        part: Path,
        start: int,
        end: int,
        offer: Offer,
    ) -> int:
        """Ask for bytes start..end and append them; returns the bytes now in the file."""
        status: list[int] = []
        pos = start

        def on_header(line: str) -> None:
            if not status and line.startswith("HTTP/"):
                with contextlib.suppress(IndexError, ValueError):
                    status.append(int(line.split()[1]))

        with part.open("r+b" if part.exists() else "wb") as f:  # noqa: ASYNC240 (local, tiny)
            f.truncate(start)
            f.seek(start)

            def on_chunk(data: bytes) -> None:
                nonlocal pos
                code = status[0] if status else 0
                if code == 200 and pos == start and start > 0:
                    pos = 0  # the whole bundle after all: start over
                    f.seek(0)
                    f.truncate(0)
                if code not in (200, 206):
                    return  # an error's body: not ours to keep
                limit = offer.size if code == 200 else end + 1
                data = data[: max(0, limit - pos)]
                f.write(data)
                pos += len(data)

            request = tornado.httpclient.HTTPRequest(
                url,
                headers={
                    "Authorization": f"Bearer {self.token()}",
                    "Range": f"bytes={start}-{end}",
                    "If-Range": f'"sha256:{offer.sha256}"',
                },
                header_callback=on_header,
                streaming_callback=on_chunk,
                connect_timeout=20.0,
                request_timeout=300.0,
                ssl_options=self.tls,
                decompress_response=False,
            )
            try:
                response = await client.fetch(request, raise_error=False)
            except tornado.httpclient.HTTPClientError as exc:
                raise Retry(f"the relay did not answer ({exc})") from None
            except (OSError, tornado.iostream.StreamClosedError) as exc:
                raise Retry(f"the link to the relay dropped ({exc})") from None
        code = response.code
        etag = response.headers.get("ETag")
        # The relay's ETags name their hash ("sha256:<hex>", as for pits content).
        if code in (200, 206) and etag is not None and etag != f'"sha256:{offer.sha256}"':
            part.unlink(missing_ok=True)  # noqa: ASYNC240 (local, tiny)
            raise Stop("refused", "The relay serves another bundle under this id.")
        if code == 206:
            expect = f"bytes {start}-"
            if not response.headers.get("Content-Range", "").startswith(expect):
                raise Retry("the relay answered another range than asked")
            return pos
        if code == 200:
            return pos
        if code == 416:
            part.unlink(missing_ok=True)  # noqa: ASYNC240 (on disk is not a start of this bundle)
            # what is on disk is not a start of this bundle
            raise Retry("the relay refused the range asked (HTTP 416)")
        if code == 429 or code >= 500 or code == 599:
            raise Retry(f"the relay answered HTTP {code}")
        if code in (401, 403):
            raise Stop("failed", "The relay refused this box's token for the download.")
        if code == 404:
            raise Stop("failed", "The relay no longer has this update.")
        raise Stop("failed", f"The relay answered HTTP {code} to the download.")
