"""The root paths serve the pits chosen once: another club's box never takes them over."""

from __future__ import annotations

import json

import pytest

from pitlink_testkit.control import OPENED, handshake, open_control
from pitlink_testkit.system import System
from pitlink_testkit.waiting import wait_for


@pytest.mark.provokes_error(
    "tornado.access",
    r"^503 GET /httpfiles/Channels\.json ",
    why="the active pits gone and its copy purged: the root paths are 503, not another pits' data",
)
async def test_another_pits_never_takes_over_the_root_paths(system: System) -> None:
    path = "/httpfiles/Channels.json"
    first = await system.get(path)
    assert first.code == 200
    assert system.relay.active.how == "first"
    # The first club's box drops; another club's box connects, alone.
    await system.stop_agent()
    await wait_for(lambda: not system.relay.registry.live(), what="the drop")
    ws = await open_control(system.url, system.keys.issue(sub="other-club", role="pits", ttl=600))
    try:
        await handshake(ws, "other-club")
        await wait_for(lambda: system.relay.registry.get("other-club"), what="the other box")
        got = await system.get(path)
        # The active pits' last copy is served (stale), never the other club's data.
        assert got.code == 200
        assert got.headers["X-Pitlink-Cache"] == "STALE"
        assert got.body == first.body
        assert system.relay.active_pits_id() == system.pits_id
        system.relay.cache.purge()
        gone = await system.get(path)
        assert gone.code == 503
        assert json.loads(gone.body)["error"]["code"] == "UNAVAILABLE"
        assert system.pits_id in json.loads(gone.body)["error"]["message"]
    finally:
        ws.close()
        OPENED.clear()
