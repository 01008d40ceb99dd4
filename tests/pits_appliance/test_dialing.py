"""Why a dial failed, in plain words, and a log that says it once per change."""

from __future__ import annotations

import json
import socket
import ssl
from pathlib import Path

import pytest
import tornado.httpclient
import tornado.websocket
from tornado.simple_httpclient import HTTPTimeoutError

from pits_appliance.dialing import TOKEN_REFUSED, DialFailure, FailureLog, classify
from wire.errors import TokenRefusal

URL = "https://relay.example"


def refusal(reason: str | None) -> bytes:
    error = {"code": "UNAUTHORIZED", "message": "m"}
    if reason is not None:
        error["reason"] = reason
    return json.dumps({"error": error}).encode()


@pytest.mark.parametrize(
    ("reason", "words"),
    [
        (TokenRefusal.WRONG_ROLE, "this is an admin token, not a box token"),
        (TokenRefusal.EXPIRED, "token has expired"),
        (TokenRefusal.REVOKED, "token was revoked"),
        (TokenRefusal.UNKNOWN_KEY, "this token was made by another relay"),
        (TokenRefusal.NOT_YET_VALID, "is the box's clock right?"),
        (TokenRefusal.MALFORMED, "copy it again"),
    ],
)
def test_a_refused_token_says_why_in_plain_words(reason: str, words: str) -> None:
    exc = tornado.httpclient.HTTPClientError(401)
    failure = classify(exc, URL, status=401, body=refusal(reason))
    assert (failure.kind, failure.status, failure.reason) == ("token", 401, reason)
    assert words in failure.text


@pytest.mark.parametrize(
    "body",
    [
        None,
        b"",
        b"<html>",
        refusal(None),
        refusal("dunno"),
        b"[" * 100_000,  # before: RecursionError out of the dial's failure handling
        b'{"error": ' + b"[" * 900 + b"]" * 900 + b"}",
        b'{"error": {"reason": ["expired"]}}',
        b'{"error": []}',
    ],
)
def test_a_refusal_without_a_known_reason_is_still_a_refusal(body: bytes | None) -> None:
    failure = classify(tornado.httpclient.HTTPClientError(401), URL, status=401, body=body)
    assert (failure.kind, failure.text, failure.reason) == ("token", TOKEN_REFUSED, None)


@pytest.mark.parametrize("status", [200, 301, 302, 400, 404, 405])
def test_an_ordinary_web_server_is_not_a_relay(status: int) -> None:
    failure = classify(tornado.httpclient.HTTPClientError(status), URL, status=status)
    assert failure.kind == "not_a_relay"
    assert f"{URL} does not look like a Pitlink relay" in failure.text
    assert "sign-in" not in failure.text and "portal" not in failure.text


def test_a_web_page_answering_the_upgrade_is_not_a_relay() -> None:
    failure = classify(tornado.websocket.WebSocketError("Non-websocket response"), URL)
    assert failure.kind == "not_a_relay"


def test_https_against_a_plain_http_relay_says_tls_not_599() -> None:
    timeout = HTTPTimeoutError("Timeout during TLS handshake with relay.example:443")
    failure = classify(timeout, URL, status=timeout.code)
    assert failure.kind == "tls"
    assert failure.text == f"TLS failed with {URL}: is the relay https?"
    assert "599" not in failure.text
    wrong = ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number")
    assert classify(wrong, URL).kind == "tls"


def test_a_certificate_that_does_not_verify_says_so() -> None:
    exc = ssl.SSLCertVerificationError(1, "certificate verify failed")
    exc.verify_message = "self-signed certificate"
    failure = classify(exc, URL)
    assert failure.kind == "certificate"
    assert "self-signed certificate" in failure.text


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (socket.gaierror(-2, "Name or service not known"), "dns"),
        (ConnectionRefusedError(111, "Connection refused"), "refused"),
        (HTTPTimeoutError("Timeout while connecting"), "timeout"),
        (OSError(101, "Network is unreachable"), "network"),
    ],
)
def test_network_failures(exc: BaseException, kind: str) -> None:
    status = exc.code if isinstance(exc, HTTPTimeoutError) else None
    failure = classify(exc, URL, status=status)
    assert failure.kind == kind
    assert URL in failure.text


def test_a_relay_error_is_the_relays_not_the_address() -> None:
    failure = classify(tornado.httpclient.HTTPClientError(502), URL, status=502)
    assert failure.kind == "relay_error" and "HTTP 502" in failure.text


def test_the_log_says_a_failure_once_then_every_five_minutes() -> None:
    log = FailureLog(every=300.0)
    refused = DialFailure("refused", "nothing answers")
    said = {t: log.should_log(refused, float(t)) for t in range(0, 900, 2)}
    lines = {t: held for t, held in said.items() if held is not None}
    assert lines == {0: 0, 300: 149, 600: 149}  # each line counts the attempts it stood for


def test_the_log_says_each_change_at_once_and_again_after_a_success() -> None:
    log = FailureLog()
    assert log.should_log(DialFailure("dns", "a"), 0.0) == 0
    assert log.should_log(DialFailure("refused", "b"), 1.0) == 0
    assert log.should_log(DialFailure("refused", "b"), 2.0) is None
    log.reset()
    assert log.should_log(DialFailure("refused", "b"), 3.0) == 0


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_a_redirect_to_https_on_the_same_host_says_the_relay_wants_https(status: int) -> None:
    exc = tornado.httpclient.HTTPClientError(status)
    url = "http://relay.example:8080"
    failure = classify(exc, url, status=status, location="https://relay.example/control")
    assert failure.kind == "wants_https"
    assert failure.text == (
        "the relay wants https: write https://relay.example (not http://) in CLOUD_URL in "
        "pitlink.conf"
    )


@pytest.mark.parametrize(
    "location",
    ["https://portal.example/login", "http://relay.example/", None, "javascript:alert(1)"],
)
def test_a_redirect_elsewhere_is_not_the_relay_wanting_https(location: str | None) -> None:
    exc = tornado.httpclient.HTTPClientError(302)
    failure = classify(exc, "http://relay.example", status=302, location=location)
    assert failure.kind == "not_a_relay"


def test_a_certificate_that_does_not_verify_names_cloud_ca() -> None:
    exc = ssl.SSLCertVerificationError(1, "certificate verify failed")
    exc.verify_message = "unable to get local issuer certificate"
    failure = classify(exc, URL)
    assert failure.kind == "certificate"
    assert "CLOUD_CA=relay-ca.pem" in failure.text
    assert "beside pitlink.conf on the card's boot partition" in failure.text
    told = classify(exc, URL, cloud_ca=Path("/boot/firmware/ours.pem"))
    assert "does not chain to CLOUD_CA (ours.pem)" in told.text
