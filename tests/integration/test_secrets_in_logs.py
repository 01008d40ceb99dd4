"""No token, key or Authorization value reaches a log line, at any level."""

from __future__ import annotations

import json
import logging

import tornado.httpclient

from cloud.keys import keygen
from pitlink_testkit.control import open_control
from pitlink_testkit.logcheck import RECORDER, SECRETS, find_secrets
from pitlink_testkit.system import System
from pitlink_testkit.waiting import wait_for
from wire.jsonlog import JsonFormatter, mask_text


def test_the_check_finds_what_it_looks_for(tmp_path) -> None:
    """The log check must be able to fail: planted secrets are found."""
    token = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJlX2hlcmU"
    key = "A" * 43
    SECRETS.add("registered-secret-value")
    assert find_secrets([f'{{"event": "x", "value": "{token}"}}']) != []
    assert find_secrets([f'{{"k": "{key}"}}']) != []
    assert find_secrets(['{"event": "registered-secret-value"}']) != []
    assert (
        find_secrets(['{"etag": "sha256:' + "a" * 64 + '", "request_id": "' + "b" * 32 + '"}'])
        == []
    )
    SECRETS.discard("registered-secret-value")


def test_formatter_masks_secrets_wherever_they_appear() -> None:
    token = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJlX2hlcmU"
    record = logging.makeLogRecord(
        {
            "name": "t",
            "levelno": logging.INFO,
            "levelname": "INFO",
            "msg": "got Authorization: Bearer %s",
            "args": (token,),
            "authorization": f"Bearer {token}",
            "token_file_token": token,
            "path": f"/x?t={token}",
        }
    )
    line = JsonFormatter().format(record)
    assert token not in line
    assert json.loads(line)["authorization"] == "***"
    assert mask_text(f"Bearer {token}") == "Bearer ***"


async def test_a_whole_session_logs_no_secrets(tmp_path, sim, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    start = len(RECORDER.lines)
    s = System(tmp_path, sim)
    s.token_file.write_text(s.keys.issue(sub=s.pits_id, role="pits", ttl=86400))
    tokens = {s.token_file.read_text().strip()}  # before the agent starts: it is renewed at once
    await s.start_relay(renew_before=10 * 86400.0, ping_interval=0.1, log_level="DEBUG")
    await s.start_agent(log_level="DEBUG")
    try:
        await wait_for(lambda: s.token_file.read_text().strip() not in tokens, what="renewal")
        tokens.add(s.token_file.read_text().strip())
        for path in ("/httpfiles/Channels.json", f"{sim.event_path}/Event.json", "/%2e%2e/x"):
            await s.get(f"/pits/{s.pits_id}{path}")
        bad = s.keys.issue(sub="x", role="admin", ttl=60)
        tokens.add(bad)
        try:
            await open_control(s.url, bad)
        except tornado.httpclient.HTTPClientError as exc:
            assert exc.code == 401
        keygen(s.jwks, "k2")
        s.relay.keystore.maybe_reload(force=True)
        for key in json.loads(s.jwks.read_text())["keys"]:
            SECRETS.add(key["k"])
    finally:
        await s.close()
    lines = RECORDER.lines[start:]
    assert len(lines) > 20
    assert any('"logger":"pitlink.cloud.audit"' in line for line in lines)
    leaks = [line for line in lines if any(t in line for t in tokens)] + find_secrets(lines)
    assert leaks == []
