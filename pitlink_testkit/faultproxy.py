"""A TCP proxy on loopback that can delay, cut, reset or black-hole the connections through it.

Faults come from a real proxy in the path, not from a mocked socket: the parts under test see
exactly what a bad network would show them. Black-holing stops forwarding in both directions
without closing anything: the half-open link that only a ping deadline can find.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket


class FaultProxy:
    """Forwards 127.0.0.1:<port> to a target; `mode` decides what happens to the bytes."""

    def __init__(self, target_host: str, target_port: int):
        self.target = (target_host, target_port)
        self.mode = "forward"  # forward, blackhole (all links, new ones too), refuse, portal
        self.portal_location: str | None = None  # where "portal" mode redirects every request
        self.delay = 0.0
        self.port = 0
        self.accepted = 0
        self._server: asyncio.base_events.Server | None = None
        self._links: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._held: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._closed = False
        self._stopped = asyncio.Event()
        self._handlers: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    @property
    def open_links(self) -> int:
        return len(self._links)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)
        self.accepted += 1
        if self.mode == "refuse":
            self._reset(writer)
            return
        if self.mode == "portal":
            await self._redirect(reader, writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            self._reset(writer)
            return
        link = (writer, up_writer)
        self._links.add(link)
        pumps = [
            asyncio.ensure_future(self._pump(reader, up_writer, link)),
            asyncio.ensure_future(self._pump(up_reader, writer, link)),
        ]
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            # A black hole passes nothing on, not even a close: the other side must find out
            # by itself (ping deadlines), as it would behind a dead NAT or a pulled cable.
            if link in self._held:
                await self._stopped.wait()
        finally:
            for pump in pumps:
                pump.cancel()
            self._links.discard(link)
            self._held.discard(link)
            for w in link:
                w.close()

    def blackhole_existing(self) -> int:
        """Stop forwarding on every open link, without closing it; new links still flow."""
        self._held.update(self._links)
        return len(self._held)

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        link: tuple[asyncio.StreamWriter, asyncio.StreamWriter],
    ) -> None:
        # `delay` is latency, not a narrow pipe: each chunk goes on `delay` after it came, while
        # the chunks behind it are already on their way (as on a long link).
        loop = asyncio.get_running_loop()
        # Bounded: a reader that takes nothing still holds the sender back, as TCP would.
        later: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(maxsize=64)
        sender = asyncio.ensure_future(self._send_later(later, writer))
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    await later.join()  # what is on its way arrives before the close
                    return
                while self.mode == "blackhole" or link in self._held:
                    if self._closed:
                        return
                    await asyncio.sleep(0.05)  # hold the bytes: nothing flows, nothing closes
                await later.put((loop.time() + self.delay, data))
        finally:
            sender.cancel()

    @staticmethod
    async def _send_later(
        later: asyncio.Queue[tuple[float, bytes]], writer: asyncio.StreamWriter
    ) -> None:
        loop = asyncio.get_running_loop()
        broken = False
        while True:
            due, data = await later.get()
            try:
                if not broken:
                    wait = due - loop.time()
                    if wait > 0:
                        await asyncio.sleep(wait)
                    writer.write(data)
                    await writer.drain()
            except (ConnectionError, OSError):
                broken = True  # the rest is dropped: the link is gone
            finally:
                later.task_done()

    async def _redirect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Answer like a captive portal: whatever was asked, a 302 to the sign-in page."""
        with contextlib.suppress(Exception):
            await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            location = f"Location: {self.portal_location}\r\n" if self.portal_location else ""
            writer.write(
                f"HTTP/1.1 302 Found\r\n{location}Content-Length: 0\r\nConnection: close\r\n\r\n".encode()
            )
            await writer.drain()
        writer.close()

    @staticmethod
    def _reset(writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        with contextlib.suppress(OSError):  # already closed: nothing to reset
            if sock is not None:
                # Linger 0: close with RST instead of FIN, as a crashed or hostile peer would.
                sock.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                )
        writer.close()

    def reset_all(self) -> None:
        """Reset every open connection through the proxy."""
        for client, upstream in list(self._links):
            self._reset(client)
            self._reset(upstream)

    async def stop(self) -> None:
        self._closed = True
        self._stopped.set()
        if self._server is not None:
            self._server.close()
            self.reset_all()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
        if self._handlers:
            await asyncio.wait(self._handlers, timeout=5)
