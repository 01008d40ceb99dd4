"""Hold N idle pits connections to one relay: upgrade, hello, answer pings, nothing else.

Run as a process of its own by the suite (scripts/bench, comparison "conns"):

    python scripts/benchlib/pits_swarm.py --url http://127.0.0.1:PORT --jwks FILE --count 5000

Each connection has a token of its own (distinct pits ids). A plain-asyncio WebSocket client
(RFC 6455, text frames, no compression) keeps the client's own cost small next to the relay's.
Prints one JSON line when every connection is up (or failed), then holds them until its stdin
closes, and prints a last JSON line with how many were still open.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import resource
import sys
import time
import urllib.parse
from pathlib import Path

import ujson

from cloud.keys import KeySet
from wire import PROTOCOL_VERSION
from wire import messages as m


def _mask(data: bytes) -> bytes:
    key = os.urandom(4)
    n = len(data)
    stream = (key * (n // 4 + 1))[:n]
    masked = int.from_bytes(data, "big") ^ int.from_bytes(stream, "big")
    return key + masked.to_bytes(n, "big")


def frame(opcode: int, payload: bytes) -> bytes:
    """One client frame: FIN set, masked as RFC 6455 requires of clients."""
    n = len(payload)
    if n < 126:
        head = bytes([0x80 | opcode, 0x80 | n])
    elif n < 1 << 16:
        head = bytes([0x80 | opcode, 0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([0x80 | opcode, 0x80 | 127]) + n.to_bytes(8, "big")
    return head + _mask(payload)


class Swarm:
    def __init__(self, url: str, tokens: dict[str, str]):
        parsed = urllib.parse.urlsplit(url)
        self.host, self.port = parsed.hostname or "127.0.0.1", parsed.port or 80
        self.tokens = tokens
        self.open = 0
        self.failed: dict[str, int] = {}
        self.closed = 0
        self.pings = 0
        self.close_codes: dict[str, int] = {}  # why the relay closed connections, by code
        self._writers: list[asyncio.StreamWriter] = []
        self._ready: dict[str, asyncio.Event] = {}

    def _fail(self, why: str) -> None:
        self.failed[why] = self.failed.get(why, 0) + 1

    async def connect(self, pits_id: str, gate: asyncio.Semaphore) -> None:
        ready = self._ready[pits_id] = asyncio.Event()
        async with gate:
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(self.host, self.port), 30
                )
            except (OSError, TimeoutError) as exc:
                self._fail(type(exc).__name__)
                return
            key = base64.b64encode(os.urandom(16)).decode()
            writer.write(
                (
                    "GET /control?role=pits&version=1 HTTP/1.1\r\n"
                    f"Host: {self.host}:{self.port}\r\nUpgrade: websocket\r\n"
                    "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                    f"Sec-WebSocket-Key: {key}\r\n"
                    f"Authorization: Bearer {self.tokens[pits_id]}\r\n\r\n"
                ).encode()
            )
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
            except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
                self._fail(type(exc).__name__)
                writer.close()
                return
            status = head.split(b" ", 2)[1]
            if status != b"101":
                self._fail(f"HTTP {status.decode()}")
                writer.close()
                return
            self._writers.append(writer)
            task = asyncio.ensure_future(self._serve(pits_id, reader, writer))
            # The slot is held until the hello is answered: a connection is "up" after it.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ready.wait(), 30)
            if not ready.is_set():
                self._fail("no hello")
                task.cancel()

    async def _serve(
        self, pits_id: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            while True:
                b0, b1 = await reader.readexactly(2)
                n = b1 & 0x7F
                if n == 126:
                    n = int.from_bytes(await reader.readexactly(2), "big")
                elif n == 127:
                    n = int.from_bytes(await reader.readexactly(8), "big")
                payload = await reader.readexactly(n)
                opcode = b0 & 0x0F
                if opcode == 0x8:
                    code = str(int.from_bytes(payload[:2], "big")) if len(payload) >= 2 else "none"
                    self.close_codes[code] = self.close_codes.get(code, 0) + 1
                    writer.write(frame(0x8, payload[:2]))
                    return
                if opcode == 0x9:
                    writer.write(frame(0xA, payload))
                    continue
                if opcode != 0x1:
                    continue
                msg = ujson.loads(payload)
                now_ms = int(time.time() * 1000)
                if msg.get("type") == "hello":
                    hello = m.PitsHello(
                        protocol_version=PROTOCOL_VERSION, pits_id=pits_id, sw_version="bench"
                    )
                    writer.write(frame(0x1, m.encode(hello, now_ms=now_ms).encode()))
                    self.open += 1
                    self._ready[pits_id].set()
                elif msg.get("type") == "ping":
                    self.pings += 1
                    pong = m.encode(m.Pong(), frame_id=msg["id"], now_ms=now_ms)
                    writer.write(frame(0x1, pong.encode()))
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            if self._ready[pits_id].is_set():
                self.open -= 1
                self.closed += 1
            writer.close()

    def close_all(self) -> None:
        for writer in self._writers:
            writer.close()


async def run(args: argparse.Namespace) -> None:
    keys = KeySet.load(args.jwks)
    tokens = {
        f"{args.prefix}{i:05d}": keys.issue(sub=f"{args.prefix}{i:05d}", role="pits", ttl=86400)
        for i in range(args.count)
    }
    swarm = Swarm(args.url, tokens)
    gate = asyncio.Semaphore(args.concurrency)
    started = time.monotonic()
    await asyncio.gather(*(swarm.connect(pits_id, gate) for pits_id in tokens))
    report = {
        "event": "ready",
        "open": swarm.open,
        "failed": swarm.failed,
        "connect_seconds": round(time.monotonic() - started, 2),
    }
    print(json.dumps(report), flush=True)
    # Hold until the suite closes our stdin.
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)
    print(
        json.dumps(
            {
                "event": "done",
                "open": swarm.open,
                "closed": swarm.closed,
                "close_codes": swarm.close_codes,
                "pings": swarm.pings,
            }
        ),
        flush=True,
    )
    swarm.close_all()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", required=True)
    p.add_argument("--jwks", type=Path, required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--prefix", default="swarm-")
    p.add_argument("--concurrency", type=int, default=100, help="handshakes at once")
    args = p.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
