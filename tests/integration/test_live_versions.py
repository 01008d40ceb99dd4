"""An older box with a newer relay, and a newer box with an older relay, still carry the race:
by pulling, as before push. Played with the real agent and the real relay, each with push left
out of its hello (`NO_PUSH` on the box, `--no-push` on the relay: exactly what the other side
sees of a version from before push)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pitlink_testkit.fpvtrackside import Simulator
from pitlink_testkit.sse import subscribe
from pitlink_testkit.system import System
from pitlink_testkit.waiting import wait_for

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("older", ["box", "relay"])
async def test_a_lap_reaches_spectators_by_pulling(
    tmp_path: Path, sim: Simulator, older: str
) -> None:
    s = System(tmp_path, sim)
    await s.start_relay(
        freshness=0.0, client_rate=None, pits_fetch_rate=None, no_push=older == "relay"
    )
    await s.start_agent(no_push=older == "box")
    sub = await subscribe(s.relay_port, f"/pits/{s.pits_id}/pitlink/live")
    try:
        agent, relay = s.agent, s.relay
        assert agent is not None and relay is not None
        pits = await sub.wait_event("pits")
        assert pits.data["connected"] is True and pits.data["pushing"] is False
        assert agent.state.pushing is False
        race = sim.race_path()
        first = await s.get(f"/pits/{s.pits_id}{race}")
        assert first.code == 200
        sim.advance()

        async def pulled() -> bool:
            got = await s.get(f"/pits/{s.pits_id}{race}")
            return got.code == 200 and got.body != first.body

        await wait_for(pulled, what="the lap, pulled")
        assert relay.push_of(s.pits_id)["pushing"] is False
        assert sub.of("change") == [] and sub.of("fpvtrackside") == []
    finally:
        await sub.close()
        await s.close()
