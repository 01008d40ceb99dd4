"""The key set and revocation list reload when their files change, and only then."""

from __future__ import annotations

import json
import os
import time

import pytest

from cloud import TokenError
from cloud.keys import Revocations, keygen
from cloud.keystore import KeyStore, read_revoked, revoke, revoked_path_for
from pitlink_testkit.clock import FakeClock


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
