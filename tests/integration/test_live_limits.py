"""The live feed's limits, through a real relay: subscribers per client and per process, a slow
subscriber dropped, a silent one cut at the write deadline, a box flooding bad push frames."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pitlink_testkit.fpvtrackside import Simulator
from pitlink_testkit.pushbox import Box, close_boxes, connect_box
from pitlink_testkit.sse import subscribe
from pitlink_testkit.system import System
from pitlink_testkit.waiting import wait_for
from wire import CloseCode
from wire.canonical import etag_of
from wire.push import Change

PITS = "club"
LIVE = f"/pits/{PITS}/pitlink/live"


@pytest.fixture
async def relay(tmp_path: Path, sim: Simulator) -> AsyncIterator[System]:
    s = System(tmp_path, sim)
    await s.start_relay(
        client_rate=None, feed_per_client=2, feed_max_subscribers=3, trusted_proxy=("127.0.0.1",)
    )
    yield s
    await close_boxes()
    await s.close()


async def pushing_box(s: System, **kwargs) -> Box:
    box = await connect_box(s.url, s.keys, PITS, **kwargs)
    relay = s.relay
    await wait_for(lambda: relay.registry.get(PITS) is not None, what="the box connected")
    return box


def detection(n: int) -> dict:
    """An FPVTrackside detection as large as an event may be (about 60 KiB)."""
    pilot = {"pilotName": "p" * 200, "position": 1, "lapNumber": n, "photo": "x" * 50}
    return {
        "type": "DetectionExt",
        "seq": n,
        "ts": "2026-05-01T10:00:00.000Z",
        "detectionId": f"d{n}",
        "round": 1,
        "race": 1,
        "pilotName": "p",
        "lapNumber": n,
        "isLapEnd": True,
        "raceTime": 1.5,
        "position": 1,
        "valid": True,
        "positionSnapshot": [pilot] * 200,
    }


async def test_subscribers_per_client_and_per_process(relay: System) -> None:
    port = relay.relay_port
    a1 = await subscribe(port, LIVE, headers={"X-Forwarded-For": "198.51.100.1"})
    a2 = await subscribe(
        port, "/pits/other/pitlink/live", headers={"X-Forwarded-For": "198.51.100.1"}
    )
    a3 = await subscribe(port, LIVE, headers={"X-Forwarded-For": "198.51.100.1"})
    assert (a1.status, a2.status, a3.status) == (200, 200, 429)
    assert a3.headers["retry-after"] == "5" and a3.headers["access-control-allow-origin"] == "*"
    assert json.loads(a3.body)["error"]["code"] == "BUSY"
    b1 = await subscribe(port, LIVE, headers={"X-Forwarded-For": "198.51.100.2"})
    c1 = await subscribe(port, LIVE, headers={"X-Forwarded-For": "198.51.100.3"})
    assert (b1.status, c1.status) == (200, 503)
    assert "all the feeds it can" in json.loads(c1.body)["error"]["message"]
    metrics = relay.relay.metrics
    assert metrics.feed_refused.labels("client")._value.get() == 1
    assert metrics.feed_refused.labels("process")._value.get() == 1
    # One leaves: its place is free again.
    await a1.close()
    feed = relay.relay.live.feed
    await wait_for(lambda: feed.count == 2, what="the subscriber to leave")
    again = await subscribe(port, LIVE, headers={"X-Forwarded-For": "198.51.100.1"})
    assert again.status == 200
    assert metrics.feed_subscribers._value.get() == 3
    for sub in (a2, b1, again):
        await sub.close()


async def test_a_subscriber_that_reads_nothing_is_dropped_not_buffered(relay: System) -> None:
    box = await pushing_box(relay)
    reader = await subscribe(relay.relay_port, LIVE)
    await reader.wait_event("race")
    # A socket with a tiny receive buffer that never reads.
    stuck = socket.socket()
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    stuck.connect(("127.0.0.1", relay.relay_port))
    stuck.sendall(f"GET {LIVE} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    feed = relay.relay.live.feed
    await wait_for(lambda: feed.count == 2, what="the stuck subscriber to join")
    metrics = relay.relay.metrics
    sent = 0
    while metrics.feed_dropped.labels("slow")._value.get() == 0:
        assert sent < 150, "never dropped"
        await box.event(detection(sent + 1))
        sent += 1
        await wait_for(lambda n=sent: len(reader.of("fpvtrackside")) == n, what=f"event {sent}")
    assert feed.count == 1
    assert len(reader.of("fpvtrackside")) == sent  # the others get everything, in order
    stuck.close()
    await reader.close()


async def test_a_subscriber_that_takes_nothing_is_cut_at_the_write_deadline(
    tmp_path: Path, sim: Simulator
) -> None:
    s = System(tmp_path, sim)
    await s.start_relay(client_rate=None, write_timeout=0.3)
    box = await connect_box(s.url, s.keys, PITS)
    await wait_for(lambda: s.relay.registry.get(PITS) is not None, what="the box")
    stuck = socket.socket()
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    stuck.connect(("127.0.0.1", s.relay_port))
    stuck.sendall(f"GET {LIVE} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    feed = s.relay.live.feed
    await wait_for(lambda: feed.count == 1, what="the subscriber to join")
    [sub] = feed.channels[PITS].subscribers
    n = 0
    while sub.unsent == 0:  # fill the kernel's buffers, then some, far below the bound
        n += 1
        await box.event(detection(n))
        await wait_for(lambda m=n: feed.channels[PITS].n == m + 1, what=f"event {n}")
    assert sub.unsent < feed.max_unsent
    await wait_for(lambda: feed.count == 0, what="the cut")
    assert s.relay.metrics.stalled_writes._value.get() == 1
    stuck.close()
    await box.close()
    await s.close()


async def test_a_box_flooding_bad_push_frames_is_closed(relay: System) -> None:
    box = await pushing_box(relay)
    bad = Change(path="/events/e1/Event.json", etag=etag_of(b"other"), body=b"{}")
    for _ in range(150):
        if box.closed:
            break
        await box.send(bad)
        await asyncio.sleep(0)
    await wait_for(lambda: box.closed, what="the box to be closed")
    assert box.ws.close_code == CloseCode.POLICY
    metrics = relay.relay.metrics
    assert metrics.frames_dropped.labels("push_refused")._value.get() >= 100
    assert metrics.push_frames.labels("change", "refused")._value.get() >= 100
    assert relay.relay.cache.get((PITS, "GET", "/events/e1/Event.json")) is None
