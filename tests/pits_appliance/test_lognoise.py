"""Tornado's TLS warnings pass once a minute, with the count of those held back."""

from __future__ import annotations

import logging

from pits_appliance.lognoise import TLSNoise


def record(msg: str) -> logging.LogRecord:
    return logging.makeLogRecord({"name": "tornado.general", "msg": msg, "levelno": 30})


def test_ssl_errors_pass_once_a_minute_and_say_how_many_were_held() -> None:
    now = [0.0]
    noise = TLSNoise(60.0, clock=lambda: now[0])
    first = record("SSL Error on %s %s: %s")
    assert noise.filter(first) and first.held_back == 0
    for t in (1.0, 20.0, 59.9):
        now[0] = t
        assert not noise.filter(record("SSL Error on %s %s: %s"))
    assert noise.filter(record("Uncaught exception"))  # other warnings are not touched
    now[0] = 60.0
    again = record("SSL Error on %s %s: %s")
    assert noise.filter(again) and again.held_back == 3
