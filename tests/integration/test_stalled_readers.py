"""A reader that stops reading holds nothing for long (issue 25, item 6).

The attack: a client with a box's token asks for its bundle and then reads nothing. The relay
held the box's one download slot for as long as the reader stayed, so the real box got 429.
Every write to a client now has a deadline (`--write-timeout`): a reader that takes nothing
for that long is cut off, and what it held is free again. The same goes for any long answer.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloud.bundles import BundleStore
from pitlink_testkit.system import System
from pitlink_testkit.waiting import wait_for

MIB = 1024 * 1024
TIMEOUT = 1.0  # --write-timeout in these tests, seconds


def stalled_get(port: int, path: str, headers: dict[str, str]) -> socket.socket:
    """A GET from a client that then reads nothing, with a tiny receive buffer so that the
    relay's writes back up at once."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    lines = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{lines}\r\n".encode())
    return sock


@pytest.fixture
def stalled() -> Iterator[list[socket.socket]]:
    held: list[socket.socket] = []
    yield held
    for sock in held:
        sock.close()


async def closed_by_peer(sock: socket.socket) -> None:
    """Wait until the relay has closed it: what it had sent drains, then EOF (or a reset)."""
    sock.setblocking(False)

    def at_end() -> bool:
        try:
            while chunk := sock.recv(1 << 20):
                del chunk
        except BlockingIOError:
            return False
        except ConnectionResetError:
            return True
        return True

    await wait_for(at_end, what="the relay to close the stalled connection")


async def test_a_stalled_download_loses_the_boxs_slot(
    tmp_path: Path, sim, stalled: list[socket.socket], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="pitlink.cloud.http")
    s = System(tmp_path, sim)
    await s.start_relay(
        bundle_dir=tmp_path / "bundles", max_bundle_bytes=64 * MIB, write_timeout=TIMEOUT
    )
    try:
        data = bytes(range(256)) * (16 * MIB // 256)
        source = tmp_path / "pitlink-amd64-0.2.0.raucb"
        source.write_bytes(data)
        store = BundleStore(tmp_path / "bundles")
        bundle = store.add_file(source)
        store.offer(bundle.id, [s.pits_id])
        token = s.keys.issue(sub=s.pits_id, role="pits", ttl=600)
        auth = {"Authorization": f"Bearer {token}"}
        path = f"/pits-api/bundles/{bundle.id}"
        assert s.relay is not None
        updates = s.relay.updates

        stalled.append(stalled_get(s.relay_port, path, auth))
        await wait_for(lambda: s.pits_id in updates.downloading, what="the stalled download")
        busy = await s.get(path, headers=auth)
        assert busy.code == 429  # the attack, while the deadline has not passed
        # Cut off after --write-timeout without progress: the slot is the box's again.
        await wait_for(
            lambda: s.pits_id not in updates.downloading, timeout=10 * TIMEOUT + 5, what="the cut"
        )
        await closed_by_peer(stalled[0])
        assert s.relay.metrics.stalled_writes._value.get() == 1
        got = await s.get(path, headers=auth, request_timeout=60.0)
        assert got.code == 200
        assert hashlib.sha256(got.body).hexdigest() == bundle.sha256
        lines = [r for r in caplog.records if r.name == "pitlink.cloud.http"]
        assert [r.getMessage() for r in lines] == [
            "client took nothing for too long: connection closed"
        ]
        assert lines[0].what == path
    finally:
        await s.close()


async def test_a_slow_reader_that_keeps_reading_is_not_cut(tmp_path: Path, sim) -> None:
    """Progress is what counts, not the whole answer's time: a reader that takes a piece every
    0.3 s, and so needs several deadlines in all, gets the whole bundle."""
    s = System(tmp_path, sim)
    await s.start_relay(
        bundle_dir=tmp_path / "bundles", max_bundle_bytes=64 * MIB, write_timeout=TIMEOUT
    )
    try:
        data = bytes(range(256)) * (MIB // 256)
        source = tmp_path / "pitlink-amd64-0.3.0.raucb"
        source.write_bytes(data)
        store = BundleStore(tmp_path / "bundles")
        bundle = store.add_file(source)
        store.offer(bundle.id, [s.pits_id])
        token = s.keys.issue(sub=s.pits_id, role="pits", ttl=600)
        sock = stalled_get(
            s.relay_port,
            f"/pits-api/bundles/{bundle.id}",
            {"Authorization": f"Bearer {token}", "Connection": "close"},
        )
        sock.setblocking(False)
        reader, writer = await asyncio.open_connection(sock=sock)
        started = time.monotonic()
        got = b""
        while chunk := await reader.read(96 * 1024):
            got += chunk
            await asyncio.sleep(0.3)  # a slow phone's pace, not a wait for a condition
        writer.close()
        head, _, body = got.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ")
        assert hashlib.sha256(body).hexdigest() == bundle.sha256
        assert time.monotonic() - started > 3 * TIMEOUT  # it did take several deadlines
        assert s.relay is not None and s.relay.metrics.stalled_writes._value.get() == 0
    finally:
        await s.close()


async def test_a_stalled_reader_of_a_large_answer_is_cut_off(
    tmp_path: Path, sim, stalled: list[socket.socket]
) -> None:
    """Any answer: a large file through the relay, to a client that reads none of it."""
    s = System(tmp_path, sim)
    await s.start_relay(freshness=60.0, client_rate=None, write_timeout=TIMEOUT)
    await s.start_agent()
    try:
        big = "/httpfiles/big.js"
        sim.huge[big] = 6 * MIB
        first = await s.get(f"/pits/{s.pits_id}{big}", request_timeout=60.0)
        assert first.code == 200 and len(first.body) == 6 * MIB
        stalled.append(stalled_get(s.relay_port, f"/pits/{s.pits_id}{big}", {}))
        assert s.relay is not None
        relay = s.relay
        await wait_for(
            lambda: relay.metrics.stalled_writes._value.get() == 1,
            timeout=10 * TIMEOUT + 5,
            what="the cut",
        )
        await closed_by_peer(stalled[0])
        again = await s.get(f"/pits/{s.pits_id}/httpfiles/Channels.json")
        assert again.code == 200 and json.loads(again.body)
    finally:
        await s.close()
