"""The real box on the real relay: a lap at the simulated FPVTrackside reaches a feed
subscriber as a `change` (the watcher) and as an `fpvtrackside` event (ExtensionMode), and the relay
then serves the pushed body with its ETag."""

from __future__ import annotations

from pathlib import Path

import pytest

from pitlink_testkit.fpvtrackside import Simulator
from pitlink_testkit.sse import subscribe
from pitlink_testkit.system import System
from pitlink_testkit.waiting import wait_for
from pits_appliance.extension import PATH
from wire.canonical import prepare_body

pytestmark = pytest.mark.timeout(60)


async def test_a_lap_reaches_the_feed_from_the_real_box(tmp_path: Path, sim: Simulator) -> None:
    s = System(tmp_path, sim)
    await s.start_relay(client_rate=None, pits_fetch_rate=None)
    await s.start_agent(watch_interval=0.05, race_look_interval=0.1)
    sub = await subscribe(s.relay_port, f"/pits/{s.pits_id}/pitlink/live")
    try:
        agent = s.agent
        assert agent is not None
        await wait_for(lambda: agent.state.pushing, what="the box pushing")
        sim.notification_url = s.status_url + PATH
        sender = await sim.restart_extension()
        await wait_for(lambda: sender.hello_acknowledged, what="the Hello")
        race = sim.race_path()
        await wait_for(lambda: agent.state.race_now == race, what="the race now found")
        sim.advance()
        body, etag = prepare_body(race, sim.reply(race).body)
        await sub.wait(
            "the lap's change",
            lambda f: any(
                e.data == {"path": race, "etag": etag, "size": len(body)} for e in f.of("change")
            ),
        )
        await sub.wait(
            "the detection",
            lambda f: any(e.data.get("type") == "DetectionExt" for e in f.of("fpvtrackside")),
        )
        reply = await s.get(f"/pits/{s.pits_id}{race}")
        assert reply.code == 200 and reply.body == body
        assert reply.headers["ETag"] == etag
    finally:
        await sub.close()
        await s.close()
