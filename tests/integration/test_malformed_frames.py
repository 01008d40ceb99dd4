"""Malformed frames and replies nobody asked for are dropped and counted, in both directions."""

from __future__ import annotations

import ujson

from pitlink_testkit.control import OPENED, handshake, open_control
from pitlink_testkit.system import System
from pitlink_testkit.waiting import wait_for
from wire import messages as m

JUNK = [
    "not json",
    "[]",
    "42",
    '{"id": "x"}',
    '{"id": "", "type": "ping", "ts": 0, "payload": {}}',
    '{"id": "a", "type": "ping", "ts": "now", "payload": {}}',
    '{"id": "a", "type": "ping", "ts": 0, "payload": []}',
    '{"id": "a", "type": "teleport", "ts": 0, "payload": {}}',
    '{"id": "a", "type": "fetch", "ts": 0, "payload": {"method": "GET", "path": "/", "timeoutMs": 5}}',
    '{"id": "a", "type": "response", "ts": 0, "payload": {"status": "200"}}',
    '{"id": "a", "type": "response", "ts": 0, "payload": {"status": 200, "bodyB64": "!!"}}',
    '{"id": "a", "type": "error", "ts": 0, "payload": {"code": "NOPE", "message": "x"}}',
]


def dropped(metrics, reason: str) -> float:
    return metrics.frames_dropped.labels(reason)._value.get()


async def test_relay_drops_malformed_frames_and_stays_up(system: System) -> None:
    token = system.keys.issue(sub="raw-pits", role="pits", ttl=600)
    ws = await open_control(system.url, token)
    try:
        await handshake(ws, "raw-pits")
        await wait_for(lambda: system.relay.registry.get("raw-pits") is not None, what="hello")
        metrics = system.relay.metrics
        for junk in JUNK:
            await ws.write_message(junk)
            reply = m.decode(await ws.read_message(), sender="cloud")
            while reply.type == "ping":
                reply = m.decode(await ws.read_message(), sender="cloud")
            assert reply.type == "error"
            assert reply.message.code == "BAD_REQUEST"
        assert dropped(metrics, "malformed") == len(JUNK)

        # A reply to a fetch that was never sent: dropped and counted, nothing answered.
        await ws.write_message(
            m.encode(m.Response(status=200, body=b"[]"), frame_id="never-sent", now_ms=0)
        )
        await wait_for(lambda: dropped(metrics, "unknown_id") == 1, what="unknown id counted")

        # Still up: a ping is answered with a pong that echoes its id.
        await ws.write_message(m.encode(m.Ping(), frame_id="p1", now_ms=0))
        frame = m.decode(await ws.read_message(), sender="cloud")
        while frame.type == "ping":
            frame = m.decode(await ws.read_message(), sender="cloud")
        assert (frame.type, frame.id) == ("pong", "p1")
        assert system.relay.registry.get("raw-pits") is not None
        # And the real pits was never disturbed.
        got = await system.get(f"/pits/{system.pits_id}/httpfiles/Channels.json")
        assert got.code == 200
    finally:
        ws.close()
        OPENED.clear()


async def test_agent_drops_malformed_frames_and_stays_up(system: System) -> None:
    conn = system.relay.registry.get(system.pits_id)
    metrics = system.agent.metrics
    sessions = system.agent.link.sessions
    junk = [*JUNK[:8], '{"id": "a", "type": "response", "ts": 0, "payload": {"status": 200}}']
    for frame in junk:
        conn.transport.send(frame)
    await wait_for(
        lambda: dropped(metrics, "malformed") == len(junk), what="the agent to count them"
    )
    # The agent answered each with a BAD_REQUEST error the relay could not match: counted too.
    await wait_for(
        lambda: dropped(system.relay.metrics, "unknown_id") >= 1, what="relay to drop replies"
    )
    # A pong for a ping the agent never sent.
    conn.transport.send(ujson.dumps({"id": "zz", "type": "pong", "ts": 0, "payload": {}}))
    await wait_for(lambda: dropped(metrics, "unknown_id") == 1, what="unknown pong counted")
    got = await system.get(f"/pits/{system.pits_id}/httpfiles/Channels.json")
    assert got.code == 200
    assert system.agent.link.sessions == sessions
    assert system.relay.registry.get(system.pits_id) is conn
