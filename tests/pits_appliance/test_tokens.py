"""The token store: which renewals may replace the token, and where a refused box falls back."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import jwt
import pytest

from cloud.keys import KeySet, keygen
from pits_appliance import ConfigError
from pits_appliance.tokens import TokenStore, claims_of, fingerprint, renewal_problem


@pytest.fixture
def keys(tmp_path: Path) -> KeySet:
    keygen(tmp_path / "jwks.json", "k")
    return KeySet.load(tmp_path / "jwks.json")


NOW = time.time()


def issue(keys: KeySet, *, sub: str = "club-7", role: str = "pits", ttl: float = 86400) -> str:
    return keys.issue(sub=sub, role=role, ttl=ttl, now=NOW)


def store_with(tmp_path: Path, token: str, configured: str | None = None) -> TokenStore:
    path = tmp_path / "state" / "token"
    path.parent.mkdir(exist_ok=True)
    path.write_text(token + "\n")
    return TokenStore(path, configured=configured)


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_a_later_renewal_is_stored_and_the_old_token_kept_beside_it(
    tmp_path: Path, keys: KeySet, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "pitlink.pits.tokens")
    old = issue(keys)
    store = store_with(tmp_path, old)
    new = issue(keys, ttl=2 * 86400)
    assert store.offer(new)
    assert store.current() == new
    assert store.previous() == old
    assert mode(store.path) == 0o600 and mode(store.prev_path) == 0o600
    (line,) = [r for r in caplog.records if r.getMessage() == "token renewed"]
    assert line.token_fp == fingerprint(new) and line.previous_fp == fingerprint(old)
    assert old not in caplog.text and new not in caplog.text


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda k: issue(k, sub="club-8", ttl=9 * 86400), "for another pits id"),
        (lambda k: issue(k, role="admin", ttl=9 * 86400), "not a pits token"),
        (lambda k: issue(k, ttl=3600), "expires before the current one"),
        (lambda k: "not-a-token", "not a token"),
        (lambda k: "eyJhbGciOiJIUzI1NiJ9.e30\n.x", "not a token"),  # a newline into the file
        (lambda k: "a.b.c" + "x" * 9000, "not a token"),
        (
            lambda k: jwt.encode({"sub": "club-7", "role": "pits"}, "k" * 32, algorithm="HS256"),
            "no expiry",
        ),
        (
            lambda k: jwt.encode(
                {"sub": "club-7", "role": "pits", "exp": True}, "k" * 32, algorithm="HS256"
            ),
            "no expiry",
        ),
    ],
    ids=["wrong-sub", "admin", "earlier-exp", "garbage", "newline", "huge", "no-exp", "bool-exp"],
)
def test_a_bad_renewal_is_dropped_and_changes_nothing(
    tmp_path: Path, keys: KeySet, make, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "pitlink.pits.tokens")
    old = issue(keys)
    store = store_with(tmp_path, old)
    bad = make(keys)
    assert renewal_problem(old, bad) == reason
    assert not store.offer(bad)
    assert store.current() == old
    assert not store.prev_path.exists()
    (line,) = [r for r in caplog.records if r.getMessage() == "renewed token dropped"]
    assert line.reason == reason
    assert bad not in caplog.text and old not in caplog.text


def test_the_same_expiry_is_a_renewal_but_the_same_token_is_not(keys: KeySet) -> None:
    old = issue(keys)
    assert renewal_problem(old, issue(keys)) is None  # renewed within the second it was issued
    assert renewal_problem(old, old) == "the token in use"


def test_refused_renewal_goes_back_to_the_previous_token(tmp_path: Path, keys: KeySet) -> None:
    old = issue(keys)
    store = store_with(tmp_path, old)
    new = issue(keys, ttl=2 * 86400)
    assert store.offer(new)
    assert store.refused(new, epoch=1) == old
    assert store.current() == old
    assert store.previous() == new  # kept, in case the relay was only briefly wrong
    # The old one is refused too, in the same run, and nothing else is left: wait long.
    assert store.refused(old, epoch=1) is None
    assert store.current() == old


def test_after_a_run_of_refusals_the_next_slow_attempt_tries_them_again(
    tmp_path: Path, keys: KeySet
) -> None:
    old, new = issue(keys), issue(keys, ttl=2 * 86400)
    store = store_with(tmp_path, old)
    assert store.offer(new)
    assert store.refused(new, epoch=1) == old
    assert store.refused(old, epoch=1) is None
    # The slow retry: old refused again; new has not been tried since, so it comes back.
    assert store.refused(old, epoch=1) == new
    assert store.refused(new, epoch=1) is None


def test_a_dial_that_got_through_starts_a_new_run(tmp_path: Path, keys: KeySet) -> None:
    old, new = issue(keys), issue(keys, ttl=2 * 86400)
    store = store_with(tmp_path, old)
    assert store.offer(new)
    assert store.refused(new, epoch=1) == old
    # `old` worked for a while (epoch 2), then was refused: `new` is worth a try again.
    assert store.refused(old, epoch=2) == new


def test_refused_stored_token_falls_back_to_the_settings(tmp_path: Path, keys: KeySet) -> None:
    pasted = issue(keys, ttl=3 * 86400)
    stored = issue(keys)
    store = store_with(tmp_path, stored, configured=pasted)
    assert store.refused(stored, epoch=0) == pasted
    assert store.current() == pasted
    assert store.previous() == stored  # the refused one is kept, as the previous
    assert store.refused(pasted, epoch=0) is None  # both refused in this run: wait long


def test_previous_first_then_settings_then_nothing(tmp_path: Path, keys: KeySet) -> None:
    pasted = issue(keys)
    store = store_with(tmp_path, pasted, configured=pasted)
    renewed = issue(keys, ttl=2 * 86400)
    assert store.offer(renewed)
    assert store.refused(renewed, epoch=3) == pasted  # the previous one (also the settings')
    assert store.refused(pasted, epoch=3) is None


def test_a_token_for_another_pits_is_never_a_fallback(tmp_path: Path, keys: KeySet) -> None:
    stored = issue(keys)
    store = store_with(tmp_path, stored, configured=issue(keys, sub="club-8"))
    store.prev_path.write_text(issue(keys, sub="club-9") + "\n")
    assert store.refused(stored, epoch=0) is None
    assert store.current() == stored


def test_nothing_to_fall_back_to(tmp_path: Path, keys: KeySet) -> None:
    token = issue(keys)
    store = store_with(tmp_path, token, configured=token)
    assert store.refused(token, epoch=0) is None


def test_import_keeps_the_token_it_replaces(tmp_path: Path, keys: KeySet) -> None:
    first = issue(keys)
    store = TokenStore(tmp_path / "state" / "token", configured=first)
    assert store.import_configured()
    assert store.current() == first and store.previous() is None
    assert not store.import_configured()  # once per distinct token
    pasted = issue(keys, ttl=5 * 86400)
    store = TokenStore(store.path, configured=pasted)
    assert store.import_configured()
    assert store.current() == pasted and store.previous() == first
    assert mode(store.prev_path) == 0o600


def test_unreadable_or_empty_token_file_is_a_plain_error(tmp_path: Path) -> None:
    store = TokenStore(tmp_path / "missing")
    with pytest.raises(ConfigError, match="cannot read the token file"):
        store.current()
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        TokenStore(tmp_path / "empty").current()


# -- damaged input (issue 25) -----------------------------------------------------------------


def b64(data: bytes) -> str:
    import base64

    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@pytest.mark.parametrize(
    "payload",
    [
        b"[" * 3000,
        b'{"sub": ' + b"[" * 900 + b"]" * 900 + b"}",
        b'{"sub": "club-7", "role": "pits", "exp": ' + b"[" * 900 + b"]" * 900 + b"}",
    ],
)
def test_a_renewal_whose_claims_are_deep_json_is_dropped(
    tmp_path: Path, keys: KeySet, payload: bytes
) -> None:
    """A relay (or whoever speaks as one) sends a token whose payload is deeply nested."""
    current = issue(keys)
    store = store_with(tmp_path, current)
    header = b64(b'{"alg":"HS256","typ":"JWT"}')
    offered = f"{header}.{b64(payload)}.{b64(b'sig')}"
    assert claims_of(offered) is None
    assert renewal_problem(current, offered) == "not a token"
    assert store.offer(offered) is False
    assert store.current() == current


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b"\xff\xfe not text\n", "holds no token: bytes that are not ASCII text"),
        (b"eyJ" + b"a" * 10_000, "holds no token: over"),
        (b"\n \n", "is empty"),
    ],
)
def test_a_damaged_token_file_is_a_plain_config_error(
    tmp_path: Path, keys: KeySet, data: bytes, says: str
) -> None:
    store = store_with(tmp_path, issue(keys))
    store.path.write_bytes(data)
    with pytest.raises(ConfigError, match=f"the token file {store.path} {says}"):
        store.current()
    store.prev_path.write_bytes(data)
    assert store.previous() is None
