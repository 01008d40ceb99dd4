"""The relay's control WebSocket with the test playing the pits: open it, say hello.

For tests that must send what no real agent would (forged tokens, malformed frames, hostile
answers) to a real relay.
"""

from __future__ import annotations

import asyncio

import tornado.httpclient
import tornado.websocket

from wire import PROTOCOL_VERSION
from wire import messages as m

# Every connection open_control opened; a test or fixture that opens some closes them all
# and clears this, so that none outlives its test.
OPENED: list[tornado.websocket.WebSocketClientConnection] = []


async def open_control(
    url: str, token: str | None, query: str = "role=pits&version=1"
) -> tornado.websocket.WebSocketClientConnection:
    """Open /control on the relay at `url` with `token` as the bearer (none if None)."""
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    request = tornado.httpclient.HTTPRequest(
        f"ws://{url.split('://', 1)[1]}/control?{query}", headers=headers
    )
    ws = await tornado.websocket.websocket_connect(request)
    OPENED.append(ws)
    return ws


async def close_opened() -> None:
    """Close every connection open_control opened, each read to its end, so that its socket
    is closed here and not left to the collector."""
    for ws in OPENED:
        ws.close()
        while await asyncio.wait_for(ws.read_message(), 5) is not None:
            pass
    OPENED.clear()


async def handshake(ws: tornado.websocket.WebSocketClientConnection, pits_id: str) -> m.CloudHello:
    """Read the relay's hello, check its protocol version, and answer as pits `pits_id`."""
    text = await ws.read_message()
    assert text is not None, "the relay closed the connection before its hello"
    hello = m.decode(text, sender="cloud").message
    assert isinstance(hello, m.CloudHello)
    assert hello.protocol_version == PROTOCOL_VERSION
    await ws.write_message(
        m.encode(m.PitsHello(protocol_version=1, pits_id=pits_id, sw_version="test"), now_ms=0)
    )
    return hello
