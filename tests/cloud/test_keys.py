"""Key sets and tokens: what verifies, what is refused and why, and key rotation."""

from __future__ import annotations

import base64
import json
import stat
import time
from pathlib import Path
from typing import Any

import jwt
import pytest

from cloud import TokenError
from cloud.keys import (
    LEEWAY_S,
    MAX_JWKS_BYTES,
    KeySet,
    Revocations,
    family_of,
    keygen,
    new_key,
)
from wire.settings import SettingsError

NOW = 1_700_000_000.0
TTL = 600


def _b64(obj: Any) -> str:
    raw = json.dumps(obj).encode() if not isinstance(obj, bytes) else obj
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def secret_of(path: Path, kid: str) -> bytes:
    """The raw HMAC secret of one key in a JWKS file."""
    for key in json.loads(path.read_text())["keys"]:
        if key["kid"] == kid:
            k = key["k"]
            return base64.urlsafe_b64decode(k + "=" * (-len(k) % 4))
    raise AssertionError(f"no key {kid} in {path}")


@pytest.fixture
def jwks(tmp_path: Path) -> Path:
    path = tmp_path / "jwks.json"
    keygen(path, "k1")
    return path


@pytest.fixture
def keys(jwks: Path) -> KeySet:
    return KeySet.load(jwks)


def claims(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "sub": "pits-1",
        "role": "pits",
        "iat": int(NOW),
        "nbf": int(NOW),
        "exp": int(NOW) + TTL,
        "jti": "jti-1",
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def forge(jwks: Path, payload: dict[str, Any], *, kid: str = "k1", alg: str = "HS256") -> str:
    return jwt.encode(payload, secret_of(jwks, kid), algorithm=alg, headers={"kid": kid})


# -- the round trip ---------------------------------------------------------------------------


def test_issue_then_verify_round_trip(keys: KeySet) -> None:
    token = keys.issue(sub="club-42", role="pits", ttl=TTL, now=NOW)
    got = keys.verify(token, role="pits", now=NOW + 1)
    assert got["sub"] == "club-42"
    assert got["role"] == "pits"
    assert got["iat"] == int(NOW)
    assert got["exp"] - got["iat"] == TTL
    assert isinstance(got["jti"], str) and got["jti"]
    assert jwt.get_unverified_header(token)["kid"] == "k1"
    assert jwt.get_unverified_header(token)["alg"] == "HS256"


def test_verify_with_the_real_clock(keys: KeySet) -> None:
    token = keys.issue(sub="alice", role="admin", ttl=TTL)
    assert keys.verify(token, role="admin")["sub"] == "alice"


def test_every_token_has_its_own_jti(keys: KeySet) -> None:
    a = keys.verify(keys.issue(sub="p", role="pits", ttl=TTL, now=NOW), now=NOW)
    b = keys.verify(keys.issue(sub="p", role="pits", ttl=TTL, now=NOW), now=NOW)
    assert a["jti"] != b["jti"]


def test_issue_refuses_an_unknown_role(keys: KeySet) -> None:
    with pytest.raises(ValueError, match="role"):
        keys.issue(sub="p", role="root", ttl=TTL)


# -- time -------------------------------------------------------------------------------------


def test_expired_token_refused_past_the_leeway(keys: KeySet) -> None:
    token = keys.issue(sub="p", role="pits", ttl=TTL, now=NOW)
    exp = NOW + TTL
    assert keys.verify(token, now=exp + LEEWAY_S - 1)["sub"] == "p"  # within the leeway
    with pytest.raises(TokenError, match="expired"):
        keys.verify(token, now=exp + LEEWAY_S + 1)


def test_expired_token_refused_with_the_real_clock(keys: KeySet) -> None:
    token = keys.issue(sub="p", role="pits", ttl=60, now=time.time() - 3600)
    with pytest.raises(TokenError, match="expired"):
        keys.verify(token)


def test_not_yet_valid_token_refused_before_the_leeway(keys: KeySet) -> None:
    token = keys.issue(sub="p", role="pits", ttl=TTL, now=NOW)
    assert keys.verify(token, now=NOW - LEEWAY_S + 1)["sub"] == "p"  # within the leeway
    with pytest.raises(TokenError, match="not yet valid"):
        keys.verify(token, now=NOW - LEEWAY_S - 1)


def test_not_yet_valid_token_refused_with_the_real_clock(keys: KeySet) -> None:
    token = keys.issue(sub="p", role="pits", ttl=TTL, now=time.time() + 3600)
    with pytest.raises(TokenError, match="not yet valid"):
        keys.verify(token)


def test_nbf_in_the_future_refused_even_when_iat_is_now(jwks: Path, keys: KeySet) -> None:
    token = forge(jwks, claims(nbf=int(NOW) + 300))
    with pytest.raises(TokenError, match="not yet valid"):
        keys.verify(token, now=NOW)
    assert keys.verify(token, now=NOW + 300)["sub"] == "pits-1"


# -- what the token claims --------------------------------------------------------------------


def test_wrong_role_refused(keys: KeySet) -> None:
    token = keys.issue(sub="p", role="pits", ttl=TTL, now=NOW)
    with pytest.raises(TokenError, match="admin"):
        keys.verify(token, role="admin", now=NOW)
    assert keys.verify(token, role="pits", now=NOW)["role"] == "pits"


def test_token_without_role_refused_when_a_role_is_required(jwks: Path, keys: KeySet) -> None:
    token = forge(jwks, claims(role=None))
    with pytest.raises(TokenError):
        keys.verify(token, role="pits", now=NOW)


def test_revoked_jti_refused(keys: KeySet) -> None:
    token = keys.issue(sub="p", role="pits", ttl=TTL, now=NOW)
    jti = keys.verify(token, now=NOW)["jti"]
    with pytest.raises(TokenError, match="revoked"):
        keys.verify(token, revoked=Revocations(frozenset({jti})), now=NOW)
    other = Revocations(frozenset({"someone-else"}))
    assert keys.verify(token, revoked=other, now=NOW)["jti"] == jti


def test_a_renewal_is_of_its_tokens_family(keys: KeySet) -> None:
    first = keys.verify(keys.issue(sub="p", role="pits", ttl=TTL, now=NOW), now=NOW)
    assert first["fam"] == first["jti"]
    renewed_token = keys.issue(sub="p", role="pits", ttl=TTL, now=NOW, family=family_of(first))
    renewed = keys.verify(renewed_token, now=NOW)
    assert renewed["jti"] != first["jti"]
    assert family_of(renewed) == first["jti"]
    # Revoking the token the operator knows of revokes the one the box holds now.
    with pytest.raises(TokenError, match="revoked"):
        keys.verify(renewed_token, revoked=Revocations(frozenset({first["jti"]})), now=NOW)


def test_a_token_without_a_family_is_its_own(jwks: Path, keys: KeySet) -> None:
    """Tokens issued before families existed carry no `fam`: revoking their id still works."""
    token = forge(jwks, claims())
    jti = keys.verify(token, now=NOW)["jti"]
    assert family_of(keys.verify(token, now=NOW)) == jti
    with pytest.raises(TokenError, match="revoked"):
        keys.verify(token, revoked=Revocations(frozenset({jti})), now=NOW)


def test_revoking_a_pits_refuses_its_tokens_issued_before(keys: KeySet) -> None:
    old = keys.issue(sub="club-7", role="pits", ttl=TTL, now=NOW - 10)
    same_second = keys.issue(sub="club-7", role="pits", ttl=TTL, now=NOW)
    other = keys.issue(sub="club-8", role="pits", ttl=TTL, now=NOW - 10)
    revoked = Revocations(subjects={"club-7": int(NOW)})
    with pytest.raises(TokenError, match="revoked"):
        keys.verify(old, revoked=revoked, now=NOW)
    assert keys.verify(same_second, revoked=revoked, now=NOW)["sub"] == "club-7"
    assert keys.verify(other, revoked=revoked, now=NOW)["sub"] == "club-8"


@pytest.mark.parametrize("missing", ["sub", "exp", "iat", "jti"])
@pytest.mark.parametrize("now", [NOW, None], ids=["injected-clock", "real-clock"])
def test_missing_claim_refused(jwks: Path, keys: KeySet, missing: str, now: float | None) -> None:
    base = claims() if now is not None else _real_time_claims()
    token = forge(jwks, {k: v for k, v in base.items() if k != missing})
    with pytest.raises(TokenError):
        keys.verify(token, now=now)


def _real_time_claims() -> dict[str, Any]:
    t = int(time.time())
    return claims(iat=t, nbf=t, exp=t + TTL)


@pytest.mark.parametrize("sub", ["", 42])
def test_empty_or_non_string_subject_refused(jwks: Path, keys: KeySet, sub: Any) -> None:
    with pytest.raises(TokenError):
        keys.verify(forge(jwks, claims(sub=sub)), now=NOW)


def test_non_numeric_exp_refused_with_the_real_clock(jwks: Path, keys: KeySet) -> None:
    with pytest.raises(TokenError):
        keys.verify(forge(jwks, _real_time_claims() | {"exp": "soon"}))


@pytest.mark.parametrize("field", ["exp", "nbf"])
def test_non_numeric_time_claim_refused_with_an_injected_clock(
    jwks: Path, keys: KeySet, field: str
) -> None:
    with pytest.raises(TokenError):
        keys.verify(forge(jwks, claims(**{field: "soon"})), now=NOW)


# -- who signed it ----------------------------------------------------------------------------


def test_unknown_kid_refused(keys: KeySet) -> None:
    other = KeySet({"keys": [new_key("other")]})
    token = other.issue(sub="p", role="pits", ttl=TTL, now=NOW)
    with pytest.raises(TokenError, match="unknown key"):
        keys.verify(token, now=NOW)


def test_token_without_kid_refused(jwks: Path, keys: KeySet) -> None:
    token = jwt.encode(claims(), secret_of(jwks, "k1"), algorithm="HS256")
    with pytest.raises(TokenError):
        keys.verify(token, now=NOW)


def test_other_key_with_the_same_kid_refused(keys: KeySet) -> None:
    impostor = KeySet({"keys": [new_key("k1")]})
    token = impostor.issue(sub="p", role="pits", ttl=TTL, now=NOW)
    assert jwt.get_unverified_header(token)["kid"] == "k1"
    with pytest.raises(TokenError):
        keys.verify(token, now=NOW)


def test_alg_none_refused(keys: KeySet) -> None:
    header = {"alg": "none", "typ": "JWT", "kid": "k1"}
    for token in (
        f"{_b64(header)}.{_b64(claims())}.",
        f"{_b64(header | {'alg': 'None'})}.{_b64(claims())}.",
    ):
        with pytest.raises(TokenError):
            keys.verify(token, now=NOW)


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
@pytest.mark.parametrize("alg", ["HS384", "HS512"])
def test_header_alg_other_than_the_keys_refused(jwks: Path, keys: KeySet, alg: str) -> None:
    # Signed with the right secret and kid, but an algorithm the key is not for.
    token = forge(jwks, claims(), alg=alg)
    with pytest.raises(TokenError, match="algorithm"):
        keys.verify(token, now=NOW)


def test_tampered_payload_refused(keys: KeySet) -> None:
    token = keys.issue(sub="pits-1", role="pits", ttl=TTL, now=NOW)
    header, _, signature = token.split(".")
    forged = f"{header}.{_b64(claims(sub='pits-2'))}.{signature}"
    with pytest.raises(TokenError):
        keys.verify(forged, now=NOW)


@pytest.mark.parametrize(
    "token",
    [
        "",
        "abc",
        "a.b",
        "a.b.c",
        "...",
        "a.b.c.d",
        f"{_b64(b'not json')}.{_b64({'sub': 'p'})}.sig",
        f"{_b64([1, 2])}.{_b64({'sub': 'p'})}.sig",
        f"{_b64({'alg': 'HS256', 'kid': 'k1'})}.!!!.sig",
        f"{_b64({'alg': 'HS256', 'kid': ['k1']})}.{_b64({'sub': 'p'})}.sig",
    ],
)
def test_malformed_token_refused(keys: KeySet, token: str) -> None:
    with pytest.raises(TokenError):
        keys.verify(token, now=NOW)


def test_truncated_signature_refused(keys: KeySet) -> None:
    token = keys.issue(sub="p", role="pits", ttl=TTL, now=NOW)
    with pytest.raises(TokenError):
        keys.verify(token[:-4], now=NOW)


def test_token_error_never_repeats_the_token(keys: KeySet) -> None:
    token = keys.issue(sub="p", role="pits", ttl=TTL, now=NOW)
    with pytest.raises(TokenError) as caught:
        keys.verify(token, now=NOW + TTL + LEEWAY_S + 10)
    assert token not in str(caught.value)
    assert token.split(".")[2] not in str(caught.value)


# -- the key set and its file -----------------------------------------------------------------


def test_keygen_writes_an_owner_only_file(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "jwks.json"
    kid = keygen(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    doc = json.loads(path.read_text())
    assert [k["kid"] for k in doc["keys"]] == [kid]
    assert doc["keys"][0]["kty"] == "oct"
    assert len(secret_of(path, kid)) == 32
    assert KeySet.load(path).kids == [kid]
    assert [p.name for p in path.parent.iterdir()] == ["jwks.json"]  # no temporary left


def test_second_keygen_puts_the_new_key_first_and_the_old_one_still_verifies(
    jwks: Path,
) -> None:
    old_token = KeySet.load(jwks).issue(sub="p", role="pits", ttl=TTL, now=NOW)
    new_kid = keygen(jwks, "k2")
    assert new_kid == "k2"
    assert stat.S_IMODE(jwks.stat().st_mode) == 0o600
    rotated = KeySet.load(jwks)
    assert rotated.kids == ["k2", "k1"]
    new_token = rotated.issue(sub="p", role="pits", ttl=TTL, now=NOW)
    assert jwt.get_unverified_header(new_token)["kid"] == "k2"
    assert rotated.verify(new_token, now=NOW)["sub"] == "p"
    assert rotated.verify(old_token, now=NOW)["sub"] == "p"
    # The old key alone does not know the new one.
    old_only = KeySet(
        {"keys": [k for k in json.loads(jwks.read_text())["keys"] if k["kid"] == "k1"]}
    )
    with pytest.raises(TokenError):
        old_only.verify(new_token, now=NOW)


def test_keygen_refuses_a_duplicate_kid_and_leaves_the_file(jwks: Path) -> None:
    before = jwks.read_text()
    with pytest.raises(ValueError, match="k1"):
        keygen(jwks, "k1")
    assert jwks.read_text() == before


@pytest.mark.parametrize("doc", [{}, {"keys": []}, {"keys": "k1"}], ids=["none", "empty", "str"])
def test_keyset_refuses_an_empty_set(doc: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        KeySet(doc)


@pytest.mark.parametrize(
    "key",
    [
        {"kty": "RSA", "kid": "r1", "n": "AQAB", "e": "AQAB"},
        {"kty": "EC", "kid": "e1"},
        {"kid": "x1", "k": "c2VjcmV0"},
        {"kty": "oct", "k": "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0"},
        "k1",
    ],
    ids=["rsa", "ec", "no-kty", "no-kid", "not-an-object"],
)
def test_keyset_refuses_keys_it_cannot_use(key: Any) -> None:
    with pytest.raises(ValueError):
        KeySet({"keys": [new_key("good"), key]})


@pytest.mark.parametrize(
    "text",
    ['[{"kty": "oct", "kid": "a", "k": "c2VjcmV0"}]', '{"keys": [{"kty": "oct", "kid": "a"}]}'],
)
def test_load_refuses_a_damaged_file_with_value_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(text)
    with pytest.raises(ValueError):
        KeySet.load(path)


DEEP = b"[" * 100_000


@pytest.mark.parametrize(
    "data",
    [
        DEEP,
        b'{"keys": ' + b"[" * 900 + b"]" * 900 + b"}",
        b'{"keys": [{"kty": "oct", "kid": ' + b"[" * 900 + b"]" * 900 + b', "k": "c2Vj"}]}',
        b'{"keys": [{"kty": "oct", "kid": ["a"], "k": "c2VjcmV0"}]}',
        b'{"keys": [{"kty": ["oct"], "kid": "a", "k": "c2VjcmV0"}]}',  # found by the fuzzer
        b'{"keys": [{"kty": "oct", "kid": "a", "k": ["c2VjcmV0"]}]}',
        b'{"keys": [{"kty": "oct", "kid": "a", "k": "c2VjcmV0"}], "x": "\xff"}',
        b"\xef\xbb\xbf\xff",
        b" " * (MAX_JWKS_BYTES + 1),
    ],
    ids=[
        "brackets",
        "deep-keys",
        "deep-kid",
        "list-kid",
        "list-kty",
        "list-k",
        "not-utf8",
        "bom",
        "too-big",
    ],
)
def test_load_and_keygen_refuse_any_damaged_file_with_the_reason(
    tmp_path: Path, data: bytes
) -> None:
    path = tmp_path / "jwks.json"
    path.write_bytes(data)
    with pytest.raises(SettingsError, match=f"the key set {path} is not a valid JWKS file: .+"):
        KeySet.load(path)
    with pytest.raises(SettingsError, match="not a valid JWKS file"):
        keygen(path, "new")
    assert path.read_bytes() == data  # keygen wrote nothing over it
