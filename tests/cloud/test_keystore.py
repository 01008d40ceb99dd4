"""The key set and revocation list reload when their files change, and only then."""

from __future__ import annotations

import json
import os
import time

import pytest

from cloud import TokenError
from cloud.keys import Revocations, keygen
from cloud.keystore import (
    MAX_LEDGER_BYTES,
    MAX_REVOKED_BYTES,
    KeyStore,
    read_revoked,
    revoke,
    revoked_path_for,
)
from cloud.renewal import Renewals
from pitlink_testkit.clock import FakeClock
from wire.errors import DamagedError
from wire.settings import SettingsError


def touch_later(path) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def test_reload_on_change_is_checked_at_most_every_interval(tmp_path) -> None:
    jwks = tmp_path / "jwks.json"
    keygen(jwks, "a")
    clock = FakeClock()
    store = KeyStore(jwks, check_every=1.0, clock=clock)
    seen = []
    store.listeners.append(lambda: seen.append(store.keys.kids))
    keygen(jwks, "b")
    touch_later(jwks)
    assert store.maybe_reload() is False  # not yet due
    clock.now += 1.0
    assert store.maybe_reload() is True
    assert store.keys.kids == ["b", "a"]
    assert seen == [["b", "a"]]
    clock.now += 1.0
    assert store.maybe_reload() is False  # nothing changed since


@pytest.mark.provokes_error(
    "pitlink.cloud.keys",
    r"^key set not reloaded, keeping the last good one$",
    why="the key file is damaged on purpose",
)
def test_a_damaged_key_file_keeps_the_last_good_set(tmp_path) -> None:
    jwks = tmp_path / "jwks.json"
    keygen(jwks, "a")
    store = KeyStore(jwks)
    jwks.write_text("{not json")
    touch_later(jwks)
    store.maybe_reload(force=True)
    assert store.keys.kids == ["a"]
    token = store.issue(sub="p", role="pits", ttl=60)
    assert store.verify(token, role="pits")["sub"] == "p"


def test_revocation_list_round_trip(tmp_path) -> None:
    jwks = tmp_path / "jwks.json"
    keygen(jwks, "a")
    store = KeyStore(jwks)
    token = store.issue(sub="p", role="pits", ttl=60)
    jti = store.verify(token)["jti"]
    path = revoked_path_for(jwks)
    assert path.name == "jwks.json.revoked"
    assert revoke(path, jti, "lost") is True
    assert revoke(path, jti) is False
    assert read_revoked(path).ids == frozenset({jti})
    assert (path.stat().st_mode & 0o777) == 0o600
    store.maybe_reload(force=True)
    assert jti in store.revoked.ids
    assert "# revoked" in path.read_text()


def test_missing_revocation_list_is_empty(tmp_path) -> None:
    assert read_revoked(tmp_path / "none") == Revocations()


@pytest.mark.provokes_error(
    "pitlink.cloud.keys",
    r"^revocation list line skipped$",
    why="one line (sub=x before=soon) is damaged on purpose",
)
def test_comments_and_blank_lines_in_revocation_list(tmp_path) -> None:
    path = tmp_path / "revoked"
    path.write_text("# header\n\nabc  # why\n  def\nsub=club-7 before=100\nsub=x before=soon\n")
    revoked = read_revoked(path)
    assert revoked.ids == frozenset({"abc", "def"})
    assert revoked.subjects == {"club-7": 100}  # the damaged line is skipped, not fatal


def test_keygen_output_is_a_jwks_document(tmp_path) -> None:
    jwks = tmp_path / "jwks.json"
    keygen(jwks, "a")
    doc = json.loads(jwks.read_text())
    assert doc["keys"][0]["kty"] == "oct" and doc["keys"][0]["alg"] == "HS256"


def test_revoke_command_by_id_and_by_token(tmp_path, capsys) -> None:
    from cloud.cli import main
    from cloud.keys import KeySet

    jwks = tmp_path / "jwks.json"
    keygen(jwks, "a")
    with pytest.raises(SystemExit) as done:
        main(["revoke", "--jwks", str(jwks), "--jti", "abc", "--note", "stolen"])
    assert done.value.code == 0
    token = KeySet.load(jwks).issue(sub="p", role="pits", ttl=-10)  # expired: still revocable
    with pytest.raises(SystemExit) as done:
        main(["revoke", "--jwks", str(jwks), "--token", token])
    assert done.value.code == 0
    import jwt

    jti = jwt.decode(token, options={"verify_signature": False})["jti"]
    assert read_revoked(revoked_path_for(jwks)).ids == frozenset({"abc", jti})
    assert "revoked in" in capsys.readouterr().out


def test_revoke_command_by_pits_id(tmp_path, capsys) -> None:
    from cloud.cli import main

    jwks = tmp_path / "jwks.json"
    keygen(jwks, "a")
    store = KeyStore(jwks)
    before = store.issue(sub="club-7", role="pits", ttl=600, now=time.time() - 5)
    with pytest.raises(SystemExit) as done:
        main(["revoke", "--jwks", str(jwks), "--sub", "club-7"])
    assert done.value.code == 0
    assert "every token of pits club-7 issued before" in capsys.readouterr().out
    store.maybe_reload(force=True)
    with pytest.raises(TokenError, match="revoked"):
        store.verify(before)
    assert store.verify(store.issue(sub="club-7", role="pits", ttl=600))["sub"] == "club-7"
    with pytest.raises(SystemExit) as done:
        main(["revoke", "--jwks", str(jwks), "--sub", "club-7", "--jti", "x"])
    assert done.value.code == 2


def test_revoke_command_by_token_revokes_its_family(tmp_path) -> None:
    from cloud.cli import main
    from cloud.keys import family_of

    jwks = tmp_path / "jwks.json"
    keygen(jwks, "a")
    store = KeyStore(jwks)
    first = store.issue(sub="p", role="pits", ttl=600)
    renewed = store.issue(sub="p", role="pits", ttl=600, family=family_of(store.verify(first)))
    with pytest.raises(SystemExit):
        main(["revoke", "--jwks", str(jwks), "--token", renewed])  # the one the box holds now
    store.maybe_reload(force=True)
    for token in (first, renewed):
        with pytest.raises(TokenError, match="revoked"):
            store.verify(token)


def test_a_token_is_renewed_at_most_once(tmp_path) -> None:
    jwks = tmp_path / "jwks.json"
    keygen(jwks, "a")
    store = KeyStore(jwks)
    assert store.claim_renewal("t1", exp=2000.0, now=1000.0) is True
    assert store.claim_renewal("t1", exp=2000.0, now=1001.0) is False
    assert KeyStore(jwks).claim_renewal("t1", exp=2000.0, now=1002.0) is False  # on disk
    assert store.claim_renewal("t2", exp=2000.0, now=1000.0) is True
    assert (store.renewed_path.stat().st_mode & 0o777) == 0o600
    # Entries of expired tokens are dropped as new ones come in: the ledger stays small.
    assert store.claim_renewal("t3", exp=9000.0, now=5000.0) is True
    assert store.renewed_path.read_text().split() == ["t3", "9000"]


def test_the_renewal_ledger_can_live_in_a_state_directory(tmp_path) -> None:
    """The relay's unit keeps /etc/pitlink read-only: the ledger goes to its state directory."""
    jwks = tmp_path / "etc" / "jwks.json"
    keygen(jwks, "a")
    store = KeyStore(jwks, renewed=tmp_path / "state" / "renewed")
    assert store.claim_renewal("t1", exp=2000.0, now=1000.0) is True
    assert (tmp_path / "state" / "renewed").read_text().split() == ["t1", "2000"]
    assert not (tmp_path / "etc" / "jwks.json.renewed").exists()


# -- damaged files (issue 25): what the relay reads from disk never raises past its parser -------


def test_bytes_that_are_not_utf8_spoil_only_their_line(tmp_path) -> None:
    """Before, the whole list raised UnicodeDecodeError out of maybe_reload, into every verify."""
    jwks = tmp_path / "jwks.json"
    keygen(jwks, "a")
    store = KeyStore(jwks)
    token = store.issue(sub="p", role="pits", ttl=600)
    jti = store.verify(token)["jti"]
    path = revoked_path_for(jwks)
    path.write_bytes(b"\xff\xfe garbage\n" + jti.encode() + b"  # lost\n")
    store.maybe_reload(force=True)
    with pytest.raises(TokenError, match="revoked"):
        store.verify(token)
    assert KeyStore(jwks).revoked.ids == store.revoked.ids  # and at start
    with pytest.raises(ValueError, match=f"revocation list {path} cannot be read .*repair it"):
        revoke(path, "another", "")
    assert path.read_bytes().startswith(b"\xff\xfe")  # not written over


@pytest.mark.provokes_error(
    "pitlink.cloud.keys",
    r"^revocation list not reloaded, keeping the last good one$",
    why="the revocation list grows past its bound",
)
def test_a_revocation_list_past_its_bound_keeps_the_last_good_one(
    tmp_path, caplog: pytest.LogCaptureFixture
) -> None:
    jwks = tmp_path / "jwks.json"
    keygen(jwks, "a")
    path = revoked_path_for(jwks)
    revoke(path, "abc")
    store = KeyStore(jwks)
    with path.open("ab") as f:
        f.truncate(MAX_REVOKED_BYTES + 1)
    for _ in range(3):
        store.maybe_reload(force=True)
    assert store.revoked.ids == frozenset({"abc"})
    [line] = [r for r in caplog.records if r.getMessage().startswith("revocation list not")]
    assert line.path == str(path) and f"over {MAX_REVOKED_BYTES} bytes" in line.error  # type: ignore[attr-defined]
    with pytest.raises(SettingsError, match=f"cannot read the revocation list {path}: over"):
        KeyStore(jwks)  # at start: no relay that would let revoked tokens in
    with pytest.raises(ValueError, match="cannot be read"):
        revoke(path, "def")


def test_damaged_ledger_lines_are_dropped_and_said(tmp_path, caplog) -> None:
    jwks = tmp_path / "jwks.json"
    keygen(jwks, "a")
    store = KeyStore(jwks)
    store.renewed_path.write_bytes(
        b"t1 2000\n\xff\xfe 2000\nt2 nan\nt3 inf\nt4\nt5 2000 extra\nt6 1e999\n\n"
    )
    assert store.claim_renewal("t1", exp=2000.0, now=1000.0) is False  # still known
    assert store.claim_renewal("t9", exp=2000.0, now=1000.0) is True
    assert store.renewed_path.read_text().split() == ["t1", "2000", "t9", "2000"]
    dropped = [
        r for r in caplog.records if r.getMessage() == "renewal ledger: damaged lines dropped"
    ]
    assert [r.lines for r in dropped] == [6, 6]  # type: ignore[attr-defined]


@pytest.mark.provokes_error(
    "pitlink.cloud.keys", r"^cannot note a renewal; not renewing$", why="the ledger is too big"
)
async def test_a_ledger_past_its_bound_renews_nothing(tmp_path) -> None:
    jwks = tmp_path / "jwks.json"
    keygen(jwks, "a")
    store = KeyStore(jwks)
    with store.renewed_path.open("wb") as f:
        f.truncate(MAX_LEDGER_BYTES + 1)
    with pytest.raises(DamagedError, match=f"over {MAX_LEDGER_BYTES} bytes"):
        store.claim_renewal("t1", exp=2000.0, now=1000.0)
    claims = store.verify(store.issue(sub="p", role="pits", ttl=600))
    assert await Renewals(store).renew(claims) is None
