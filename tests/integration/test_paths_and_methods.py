"""Nothing outside the allowlist reaches FPVTrackside, however the path is spelt."""

from __future__ import annotations

import pytest

from pitlink_testkit.system import System
from wire import ErrorCode, ProtocolError
from wire.messages import Fetch

EVIL = [
    "/events/../../etc/passwd",
    "/events/%2e%2e/%2e%2e/etc/passwd",
    "/events/%2E%2E/secret.json",
    "/events/.%2e/x.json",
    "/events/%252e%252e/%252e%252e/x.json",
    "/events/..%2f..%2fx.json",
    "/events/..%5c..%5cx.json",
    "/events\\..\\..\\x.json",
    "/events/x%00.json",
    "/events/%0d%0aSet-Cookie:x",
    "/events/.../x",
    "/httpfiles/%ff.json",
    "//etc/passwd",
    "/secret.json",
    "/Event.json",
]


@pytest.mark.parametrize("evil", EVIL)
async def test_escaping_paths_never_reach_the_origin(system: System, evil: str) -> None:
    before = list(system.sim.request_log)
    for prefix in (f"/pits/{system.pits_id}", ""):
        got = await system.get(prefix + evil)
        assert got.code in (400, 403, 404), (prefix + evil, got.code)
        assert b'"error"' in got.body
    assert system.sim.request_log == before
    assert system.sim.traversals == []


@pytest.mark.parametrize("evil", EVIL)
async def test_the_agent_refuses_escaping_paths_even_from_the_cloud(
    system: System, evil: str
) -> None:
    """The pits allowlist is the LAN's last line of defence: a fetch straight down the socket."""
    conn = system.relay.registry.get(system.pits_id)
    before = list(system.sim.request_log)
    with pytest.raises(ProtocolError) as caught:
        await conn.fetch(Fetch(method="GET", path=evil, timeout_ms=5000), 10)
    assert caught.value.code in (ErrorCode.BAD_REQUEST, ErrorCode.DENIED)
    assert system.sim.request_log == before
    assert system.sim.traversals == []


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
async def test_other_methods_are_refused_by_the_relay(system: System, method: str) -> None:
    before = list(system.sim.request_log)
    got = await system.get(
        f"/pits/{system.pits_id}/httpfiles/Channels.json",
        method=method,
        body=b"x",
        allow_nonstandard_methods=True,
    )
    assert got.code == 405
    assert b'"code":"DENIED"' in got.body
    assert "GET" in got.headers["Allow"]
    assert system.sim.request_log == before


@pytest.mark.parametrize("method", ["POST", "DELETE", "PROPFIND", "get "])
async def test_other_methods_are_refused_by_the_agent(system: System, method: str) -> None:
    conn = system.relay.registry.get(system.pits_id)
    before = list(system.sim.request_log)
    with pytest.raises(ProtocolError) as caught:
        await conn.fetch(Fetch(method=method, path="/httpfiles/Channels.json", timeout_ms=5000), 10)
    assert caught.value.code is ErrorCode.DENIED
    assert system.sim.request_log == before


async def test_query_strings_do_not_defeat_the_cache(system: System) -> None:
    system.relay.serving.freshness.default = 60.0
    first = await system.get(f"/pits/{system.pits_id}/httpfiles/Channels.json?t=1")
    second = await system.get(f"/pits/{system.pits_id}/httpfiles/Channels.json?t=2")
    assert first.headers["X-Pitlink-Cache"] == "MISS"
    assert second.headers["X-Pitlink-Cache"] == "HIT"
    assert [p for _, p in system.sim.request_log if "Channels" in p] == ["/httpfiles/Channels.json"]
