"""docs/at-the-venue.md's troubleshooting table quotes what the box really says.

Every quoted text in the table's middle column ("…" stands for what varies) must be found in a
line of the status page the box shows for one of the cases below, each built the way the box
builds it (the dial's failure from `dialing.classify`, the settings error from `load_config`).
"""

from __future__ import annotations

import re
import socket
import ssl
import time
from pathlib import Path

import pytest
import tornado.httpclient

from pits_appliance import ConfigError
from pits_appliance.config import load_config
from pits_appliance.dialing import classify
from pits_appliance.state import AgentState
from pits_appliance.status_view import view
from wire.errors import TokenRefusal

DOC = Path(__file__).resolve().parents[2] / "docs" / "at-the-venue.md"
NOW = time.time()
RELAY = "https://relay.example"


def table() -> list[str]:
    text = DOC.read_text()
    start = text.index("| line | red or amber means | what to do |")
    return text[start : text.index("\n\n", start)].splitlines()[2:]


def quotes() -> list[str]:
    found = []
    for line in table():
        cells = line.split(" | ")
        found += re.findall(r'"([^"]+)"', cells[1] if len(cells) > 1 else "")
    return found


def refusal(reason: str) -> bytes:
    return f'{{"error": {{"code": "UNAUTHORIZED", "reason": "{reason}"}}}}'.encode()


def state(**fields: object) -> AgentState:
    s = AgentState(
        pits_id="club-1",
        relay_url=RELAY,
        fpvtrackside_url="http://10.0.0.5:8080",
        origin_reachable=True,
        origin_event="e1",
        connectivity="full",
        token_expires=NOW + 90 * 86400,
    )
    for key, value in fields.items():
        setattr(s, key, value)
    return s


def failed(exc: BaseException, url: str = RELAY, **http: object) -> dict[str, object]:
    failure = classify(exc, url, **http)  # type: ignore[arg-type]
    return {"cloud_error": failure.text, "cloud_failure": failure.kind}


def settings_error(tmp_path: Path, text: str) -> str:
    conf = tmp_path / "pitlink.conf"
    conf.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(["--config", str(conf)], env={})
    return str(caught.value)


def cases(tmp_path: Path) -> list[AgentState]:
    unverified = ssl.SSLCertVerificationError(1, "certificate verify failed")
    unverified.verify_message = "unable to get local issuer certificate"
    http = tornado.httpclient.HTTPClientError
    return [
        state(origin_reachable=False),
        state(origin_event=None),
        state(connectivity="none", connectivity_detail="DNS"),
        state(connectivity="limited"),
        state(connectivity="portal", portal_url="http://login.venue/"),
        state(relay_trouble="unreachable", **failed(socket.gaierror(-2, "Name unknown"))),
        state(relay_trouble="unreachable", **failed(ConnectionRefusedError())),
        state(
            relay_trouble="https",
            relay_url="http://relay.example",
            **failed(http(301), "http://relay.example", status=301, location=RELAY + "/"),
        ),
        *(state(**failed(http(401), status=401, body=refusal(reason))) for reason in TokenRefusal),
        state(**failed(http(404), status=404)),
        state(**failed(ssl.SSLError(1, "wrong version number"))),
        state(**failed(unverified)),
        state(relay_url="http://relay.example"),
        state(paused=True),
        state(token_expires=NOW + 3600, token_issued=NOW - 86400),
        state(token_expires=NOW - 60),
        state(
            config_error=settings_error(tmp_path, "CLOUD_URL=http://relay.example\nTOKEN_FILE=/t\n")
        ),
        state(
            config_error=settings_error(
                tmp_path, "CLOUD_URL=https://r.example\nTOKEN_FILE=/t\n\n\nFPVTRACSIDE=x\n"
            )
        ),
    ]


def test_the_table_has_its_quotes() -> None:
    assert len(quotes()) >= 20


def test_every_quote_in_the_troubleshooting_table_is_what_the_box_says(tmp_path: Path) -> None:
    said = [f"{r['title']}\n{r['text']}" for s in cases(tmp_path) for r in view(s, NOW)["rows"]]
    missing = []
    for quote in quotes():
        pieces = [p.strip().lower() for p in quote.split("…") if p.strip()]
        if not any(all(p in line.lower() for p in pieces) for line in said):
            missing.append(quote)
    assert missing == []
