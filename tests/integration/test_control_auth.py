"""The control socket checks the token before the upgrade and the pits id after it."""

from __future__ import annotations

import json
import time

import jwt
import pytest
import tornado.httpclient
import tornado.websocket

from cloud.keystore import revoke
from pitlink_testkit.control import OPENED, handshake, open_control
from pitlink_testkit.keys import make_keys
from pitlink_testkit.system import System
from wire import CloseCode
from wire import messages as m


@pytest.fixture
async def relay_only(tmp_path, sim):
    s = System(tmp_path, sim)
    await s.start_relay()
    yield s
    for ws in OPENED:
        ws.close()
    OPENED.clear()
    await s.close()


def forged(claims: dict, key: bytes, kid: str = "k1", alg: str = "HS256") -> str:
    return jwt.encode(claims, key, algorithm=alg, headers={"kid": kid})


def claims(sub: str = "pits-1", role: str = "pits", **extra) -> dict:
    now = int(time.time())
    base = {"sub": sub, "role": role, "iat": now, "nbf": now, "exp": now + 600, "jti": "j1"}
    base.update(extra)
    return base


async def assert_refused(s: System, token: str | None, reason: str) -> None:
    """Refused before the upgrade, with the reason in the body for the box to say."""
    with pytest.raises(tornado.httpclient.HTTPClientError) as caught:
        await open_control(s.url, token)
    assert caught.value.code == 401
    body = json.loads(caught.value.response.body)
    assert body["error"]["code"] == "UNAUTHORIZED"
    assert body["error"]["reason"] == reason
    assert s.relay.registry.all == set()


async def test_missing_token_is_401(relay_only: System) -> None:
    await assert_refused(relay_only, None, "malformed")


async def test_garbage_token_is_401(relay_only: System) -> None:
    await assert_refused(relay_only, "not-a-token", "malformed")


async def test_expired_token_is_401(relay_only: System) -> None:
    token = relay_only.keys.issue(sub="pits-1", role="pits", ttl=-3600)
    await assert_refused(relay_only, token, "expired")


async def test_token_from_another_key_set_is_401(relay_only: System, tmp_path) -> None:
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    _, other = make_keys(other_dir, kid="k1")  # same kid, different secret
    await assert_refused(relay_only, other.issue(sub="pits-1", role="pits", ttl=600), "invalid")


async def test_token_signed_by_an_unknown_key_is_401(relay_only: System, tmp_path) -> None:
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    _, other = make_keys(other_dir, kid="gone")
    token = other.issue(sub="pits-1", role="pits", ttl=600)
    await assert_refused(relay_only, token, "unknown_key")


async def test_admin_token_cannot_open_a_pits_connection(relay_only: System) -> None:
    token = relay_only.keys.issue(sub="ops", role="admin", ttl=600)
    await assert_refused(relay_only, token, "wrong_role")


async def test_revoked_token_says_so(relay_only: System) -> None:
    token = relay_only.keys.issue(sub="pits-1", role="pits", ttl=600)
    jti = jwt.decode(token, options={"verify_signature": False})["jti"]
    revoke(relay_only.jwks.with_name("jwks.json.revoked"), jti)
    relay_only.relay.keystore.maybe_reload(force=True)
    await assert_refused(relay_only, token, "revoked")


async def test_unsigned_token_is_401(relay_only: System) -> None:
    token = jwt.encode(claims(), None, algorithm="none", headers={"kid": "k1"})
    await assert_refused(relay_only, token, "malformed")


async def test_role_query_is_required(relay_only: System) -> None:
    token = relay_only.keys.issue(sub="pits-1", role="pits", ttl=600)
    with pytest.raises(tornado.httpclient.HTTPClientError) as caught:
        await open_control(relay_only.url, token, query="version=1")
    assert caught.value.code == 400


async def test_a_pits_token_cannot_act_as_another_pits(relay_only: System) -> None:
    token = relay_only.keys.issue(sub="pits-1", role="pits", ttl=600)
    ws = await open_control(relay_only.url, token)
    await handshake(ws, "pits-2")
    assert await ws.read_message() is None
    assert ws.close_code == CloseCode.POLICY
    assert relay_only.relay.registry.get("pits-2") is None
    assert relay_only.relay.registry.get("pits-1") is None


async def test_unsupported_version_is_closed_with_4002(relay_only: System) -> None:
    token = relay_only.keys.issue(sub="pits-1", role="pits", ttl=600)
    ws = await open_control(relay_only.url, token, query="role=pits&version=99")
    assert await ws.read_message() is None
    assert ws.close_code == CloseCode.VERSION_REFUSED
    assert "protocol" in (ws.close_reason or "")


async def test_a_newer_connection_replaces_the_older(relay_only: System) -> None:
    token = relay_only.keys.issue(sub="pits-1", role="pits", ttl=600)
    old = await open_control(relay_only.url, token)
    await handshake(old, "pits-1")
    registry = relay_only.relay.registry
    from pitlink_testkit.waiting import wait_for

    await wait_for(lambda: registry.get("pits-1") is not None, what="first connection")
    first = registry.get("pits-1")
    new = await open_control(relay_only.url, token)
    await handshake(new, "pits-1")
    await wait_for(lambda: registry.get("pits-1") is not first, what="replacement")
    # The old one is closed with 4003 (its pings aside, the next thing it reads is the close).
    while (frame := await old.read_message()) is not None:
        assert m.decode(frame, sender="cloud").type == "ping"
    assert old.close_code == CloseCode.REPLACED
    new.close()
