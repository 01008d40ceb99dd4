"""Attacks on the pits agent (security issue #12), each performed for real against real parts.

- From a hostile relay: `token` frames that would brick the box's token if it stored them, and
  a renewed token that the relay then refuses.
"""

from __future__ import annotations

import time
from pathlib import Path

import jwt
from logcheck import RECORDER
from support import System, wait_for

from cloud.keystore import revoke
from pits_appliance.tokens import fingerprint
from wire import CloseCode
from wire import messages as m

# -- B: a hostile relay and the box's token ------------------------------------------------------


def _send_token(system: System, token: str) -> None:
    conn = system.relay.registry.get(system.pits_id)
    frame = m.encode(m.Token(token=token), frame_id=m.new_id(), now_ms=int(time.time() * 1000))
    conn.transport.send(frame)


async def test_bad_token_frames_leave_the_old_token_working(system: System, caplog) -> None:
    caplog.set_level("INFO", "pitlink.pits.tokens")
    old = system.token_file.read_text().strip()
    keys = system.keys
    bad = {
        "wrong sub": keys.issue(sub="another-box", role="pits", ttl=400 * 86400),
        "role admin": keys.issue(sub=system.pits_id, role="admin", ttl=400 * 86400),
        "earlier exp": keys.issue(sub=system.pits_id, role="pits", ttl=3600),
        "not a JWT": "not-a-token",
    }
    for token in bad.values():
        _send_token(system, token)
    # A fetch goes down the same WebSocket after them: once it is answered, the agent has
    # handled all four (it handles frames in order, and a token at once).
    got = await system.get(f"/pits/{system.pits_id}/httpfiles/Channels.json")
    assert got.code == 200
    assert system.token_file.read_text().strip() == old
    assert not system.token_file.with_name("token.prev").exists()
    assert system.agent.state.ws_connected
    reasons = [r.reason for r in caplog.records if r.getMessage() == "renewed token dropped"]
    assert sorted(reasons) == sorted(
        ["for another pits id", "not a pits token", "expires before the current one", "not a token"]
    )
    metrics = await system.http.fetch(f"http://127.0.0.1:{system.agent.status_port}/metrics")
    assert b'pitlink_frames_dropped_total{reason="bad_token"} 4.0' in metrics.body
    # The box dials again with its old token.
    sessions = system.agent.link.sessions
    system.agent.link.reconnect_now()
    await wait_for(lambda: system.agent.link.sessions > sessions, what="a new session")
    await system.connected()
    old_jti = jwt.decode(old, options={"verify_signature": False})["jti"]
    assert system.relay.registry.get(system.pits_id).claims["jti"] == old_jti
    for token in bad.values():
        assert token not in caplog.text


async def test_a_refused_renewal_sends_the_box_back_to_its_previous_token(
    tmp_path: Path, sim
) -> None:
    s = System(tmp_path, sim)
    # Issued a minute ago, so that its renewal (as long-lived, from now) expires later.
    s.token_file.write_text(
        s.keys.issue(sub=s.pits_id, role="pits", ttl=86400, now=time.time() - 60)
    )
    old = s.token_file.read_text().strip()
    await s.start_relay(renew_before=10 * 86400.0, ping_interval=0.1)
    # A long slow delay (30 to 60 s): a fallback must not wait for it.
    await s.start_agent(reconnect_base=0.05, reconnect_cap=60.0)
    agent = s.agent
    try:
        await wait_for(lambda: s.token_file.read_text().strip() != old, what="the renewal")
        new = s.token_file.read_text().strip()

        # The relay refuses the renewed token (here: revoked) at the next dial.
        new_jti = jwt.decode(new, options={"verify_signature": False})["jti"]
        revoke(s.relay.keystore.revoked_path, new_jti, "test")
        s.relay.keystore.maybe_reload(force=True)
        sessions = agent.link.sessions
        agent.link.reconnect_now()
        await wait_for(
            lambda: agent.link.sessions > sessions and agent.state.ws_connected,
            timeout=10,
            what="the box to come back with its previous token, soon",
        )
        await s.connected()
        old_jti = jwt.decode(old, options={"verify_signature": False})["jti"]
        assert s.relay.registry.get(s.pits_id).claims["jti"] == old_jti
        assert s.token_file.read_text().strip() == old
        prev = s.token_file.with_name("token.prev")
        assert prev.read_text().strip() == new  # kept, in case the relay was only briefly wrong
        assert prev.stat().st_mode & 0o777 == 0o600
        assert (await s.get(f"/pits/{s.pits_id}/httpfiles/Channels.json")).code == 200

        # Now the old one goes too: nothing is left, so the box waits long, as before.
        revoke(s.relay.keystore.revoked_path, old_jti, "test")
        s.relay.keystore.maybe_reload(force=True)
        await wait_for(lambda: agent.state.close_code == CloseCode.TOKEN_EXPIRED, what="4001")
        agent.link.reconnect_now()
        await wait_for(
            lambda: (
                "ask for a new one" in (agent.state.cloud_error or "")
                and agent.state.next_attempt_in is not None
            ),
            what="the refusal with nothing left",
        )
        assert agent.state.next_attempt_in >= 30.0
        assert s.relay.registry.get(s.pits_id) is None
    finally:
        await s.close()
    text = "\n".join(line for line in RECORDER.lines if "pitlink.pits.tokens" in line)
    assert fingerprint(new) in text and new not in text and old not in text
