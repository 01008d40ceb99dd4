"""The relay's front page tells a visitor what is here and how to use it."""

from __future__ import annotations

from pitlink_testkit.system import System


async def test_front_page_lists_the_pits_with_links_and_says_how_to_use_them(
    system: System,
) -> None:
    first = (await system.get("/")).body.decode()
    assert f"<li data-pits={system.pits_id}><strong>{system.pits_id}</strong>" in first
    assert "Channels.json" in first
    # Once the relay holds the pits' page, it knows the open event and links its files.
    assert (await system.get(f"/pits/{system.pits_id}/")).code == 200
    page = (await system.get("/")).body.decode()
    event = system.sim.event_id
    for file in ("Event.json", "Pilots.json", "Rounds.json", "Results.json"):
        assert f'href="/pits/{system.pits_id}/events/{event}/{file}"' in page
    assert f'href="/pits/{system.pits_id}/"' in page
    assert "(active: also at" in page
    assert f"{system.url}/pits/&lt;pits id&gt;/" in page
    assert "dashboard" in page


async def test_front_page_escapes_what_a_visitor_sends(system: System) -> None:
    refused = await system.get("/", headers={"Host": "<script>x</script>"})
    assert refused.code == 400 and b"<script>" not in refused.body  # Tornado refuses it
    # A Host that is no host name is not used to build an address at all.
    odd = await system.get("/", headers={"Host": "a&b.example"})
    assert odd.code == 200
    assert b"a&b" not in odd.body and b"a&amp;b" not in odd.body
    assert b"http://localhost/pits/" in odd.body
