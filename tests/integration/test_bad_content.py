"""What FPVTrackside gets wrong never replaces good data: HTML fallbacks, half-written files."""

from __future__ import annotations

import pytest

from pitlink_testkit.system import System


@pytest.mark.provokes_error(
    "tornado.access",
    r"^502 GET /pits/pits-1/httpfiles/Missing\.json ",
    why="FPVTrackside's HTML page for a missing .json is BAD_CONTENT: 502 without a copy",
)
async def test_html_fallback_without_a_cached_copy_is_502(system: System) -> None:
    # A .json path outside /events that does not exist: FPVTrackside answers its index page.
    got = await system.get(f"/pits/{system.pits_id}/httpfiles/Missing.json")
    assert got.code == 502
    assert b'"code":"BAD_CONTENT"' in got.body
    assert got.headers["Cache-Control"] == "no-store"
    assert len(system.relay.cache) == 0
    # Asked again: still not cached, still refused.
    again = await system.get(f"/pits/{system.pits_id}/httpfiles/Missing.json")
    assert again.code == 502


async def test_html_fallback_with_a_cached_copy_serves_it_stale(system: System) -> None:
    path = "/httpfiles/Channels.json"
    good = await system.get(f"/pits/{system.pits_id}{path}")
    assert good.code == 200
    (system.sim.root / "httpfiles" / "Channels.json").unlink()  # now the origin sends HTML
    stale = await system.get(f"/pits/{system.pits_id}{path}")
    assert stale.code == 200
    assert stale.body == good.body
    assert stale.headers["ETag"] == good.headers["ETag"]
    assert stale.headers["X-Pitlink-Cache"] == "STALE"
    assert stale.headers["Warning"] == '110 - "Response is Stale"'
    assert int(stale.headers["X-Pitlink-Stale"]) >= 0
    entry = system.relay.cache.get((system.pits_id, "GET", path))
    assert entry is not None and entry.body == good.body


async def test_half_written_race_file_serves_the_good_copy(system: System) -> None:
    path = system.sim.race_path()
    system.sim.advance()
    good = await system.get(f"/pits/{system.pits_id}{path}")
    assert good.code == 200
    system.sim.advance()
    system.sim.half_written.add(path)
    stale = await system.get(f"/pits/{system.pits_id}{path}")
    assert stale.code == 200
    assert stale.body == good.body
    assert stale.headers["X-Pitlink-Cache"] == "STALE"
    system.sim.half_written.clear()
    fresh = await system.get(f"/pits/{system.pits_id}{path}")
    assert fresh.headers["X-Pitlink-Cache"] == "MISS"
    assert fresh.body != good.body  # the lap added meanwhile is there now


@pytest.mark.provokes_error(
    "tornado.access",
    r"^502 GET /pits/pits-1/events/.*/Race\.json ",
    why="a half-written Race.json with no good copy to fall back on is 502",
)
async def test_half_written_file_without_a_copy_is_502(system: System) -> None:
    path = system.sim.race_path()
    system.sim.advance()
    system.sim.half_written.add(path)
    got = await system.get(f"/pits/{system.pits_id}{path}")
    assert got.code == 502
    assert b"BAD_CONTENT" in got.body
    assert len(system.relay.cache) == 0
