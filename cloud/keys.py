"""Signing keys (a JWKS file) and the tokens they sign.

The key set is a standard JWKS document of symmetric (`oct`, HS256) keys. The first key signs;
every key verifies, so a new key can be put first and the old one removed later without
reflashing a single pits box. The algorithm comes from the key, never from the token header,
so `alg=none` and algorithm confusion are refused.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt

from cloud import TokenError
from wire.errors import DamagedError
from wire.errors import TokenRefusal as R
from wire.files import write_private
from wire.settings import SettingsError
from wire.untrusted import read_json

ROLES = ("pits", "admin")
_ALGORITHMS = {"oct": "HS256"}
LEEWAY_S = 30.0
MAX_JWKS_BYTES = 1024 * 1024  # a key is about 150 bytes: room for thousands


def family_of(claims: dict[str, Any]) -> str:
    """A token's family: the id of the first token it was renewed from (or its own id)."""
    fam = claims.get("fam")
    return fam if isinstance(fam, str) and fam else str(claims.get("jti", ""))


@dataclass(frozen=True)
class Revocations:
    """What the revocation list refuses.

    `ids` are token ids: a token is refused when its own id or its family's is listed, so
    revoking the token an operator issued also revokes every renewal of it. `subjects` maps a
    pits id to a time: every token of that pits issued before it is refused.
    """

    ids: frozenset[str] = frozenset()
    subjects: Mapping[str, int] = field(default_factory=dict)

    def refuses(self, claims: dict[str, Any]) -> str | None:
        """Why these claims are refused, or None."""
        if claims.get("jti") in self.ids or family_of(claims) in self.ids:
            return "token revoked"
        cutoff = self.subjects.get(str(claims.get("sub")))
        iat = claims.get("iat")
        if cutoff is not None and isinstance(iat, int | float) and iat < cutoff:
            return "token revoked (every token of this pits issued before then)"
        return None

    def __len__(self) -> int:
        return len(self.ids) + len(self.subjects)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class KeySet:
    """Verification keys by `kid`, and the signing key (the first in the file)."""

    def __init__(self, jwks: dict[str, Any]):
        keys = jwks.get("keys") if isinstance(jwks, dict) else None
        if not isinstance(keys, list) or not keys:
            raise ValueError("key set has no keys")
        self._keys: dict[str, jwt.PyJWK] = {}
        self.kids: list[str] = []
        for raw in keys:
            kid = raw.get("kid") if isinstance(raw, dict) else None
            kty = raw.get("kty") if isinstance(raw, dict) else None
            if not isinstance(kty, str) or kty not in _ALGORITHMS or not kid:
                raise ValueError("every key needs kty 'oct' and a kid")
            if not isinstance(kid, str):
                raise ValueError("every key's kid must be a string")
            try:
                key = jwt.PyJWK(raw, algorithm=_ALGORITHMS[kty])
            except (KeyError, TypeError, ValueError, AttributeError, jwt.PyJWTError) as exc:
                # The key's bytes are a secret: the error names its kid and the kind of fault.
                raise ValueError(f"key {kid[:64]!r} is damaged: {type(exc).__name__}") from None
            self._keys[raw["kid"]] = key
            self.kids.append(raw["kid"])

    @classmethod
    def load(cls, path: Path) -> KeySet:
        """Read a JWKS file; SettingsError says in one line what is wrong with it."""
        return cls.of_file(path, read_jwks(path))

    @classmethod
    def of_file(cls, path: Path, jwks: dict[str, Any]) -> KeySet:
        """The key set of a JWKS document read from `path` (named in the SettingsError)."""
        try:
            return cls(jwks)
        except ValueError as exc:
            raise SettingsError(f"the key set {path} is not a valid JWKS file: {exc}") from None

    def sign(self, claims: dict[str, Any]) -> str:
        """Sign claims with the newest key."""
        kid = self.kids[0]
        key = self._keys[kid]
        return jwt.encode(claims, key.key, algorithm=key.algorithm_name, headers={"kid": kid})

    def issue(
        self,
        *,
        sub: str,
        role: str,
        ttl: float,
        now: float | None = None,
        family: str | None = None,
    ) -> str:
        """A new token for `sub` in `role`, valid for `ttl` seconds from `now`.

        `family` is the family of the token this one renews; a first token starts its own.
        """
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}")
        issued = int(time.time() if now is None else now)
        jti = uuid.uuid4().hex
        return self.sign(
            {
                "sub": sub,
                "role": role,
                "iat": issued,
                "nbf": issued,
                "exp": issued + int(ttl),
                "jti": jti,
                "fam": family or jti,
            }
        )

    def verify(
        self,
        token: str,
        *,
        role: str | None = None,
        revoked: Revocations = Revocations(),
        now: float | None = None,
    ) -> dict[str, Any]:
        """The claims of a valid token, or TokenError saying why not."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise TokenError("token is malformed", R.MALFORMED) from None
        kid = header.get("kid")
        key = self._keys.get(kid) if isinstance(kid, str) else None
        if key is None:
            raise TokenError("token signed by an unknown key", R.UNKNOWN_KEY)
        if header.get("alg") != key.algorithm_name:
            raise TokenError("token algorithm does not match its key", R.MALFORMED)
        options: dict[str, Any] = {"require": ["sub", "exp", "iat", "jti"]}
        if now is not None:
            # PyJWT reads the clock itself; for an injected time check expiry here instead.
            options.update(verify_exp=False, verify_nbf=False, verify_iat=False)
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=[key.algorithm_name],
                options=options,  # type: ignore[arg-type]
                leeway=LEEWAY_S,
            )
        except jwt.ExpiredSignatureError:
            raise TokenError("token expired", R.EXPIRED) from None
        except jwt.ImmatureSignatureError:
            raise TokenError("token not yet valid", R.NOT_YET_VALID) from None
        except jwt.PyJWTError as exc:
            raise TokenError(f"token refused: {type(exc).__name__}") from None
        if now is not None:
            for name in ("exp", "iat", "nbf"):
                value = claims.get(name, 0)
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise TokenError(f"token claim {name} is not a number", R.MALFORMED)
            if claims["exp"] + LEEWAY_S < now:
                raise TokenError("token expired", R.EXPIRED)
            if claims.get("nbf", claims["iat"]) - LEEWAY_S > now:
                raise TokenError("token not yet valid", R.NOT_YET_VALID)
        refused = revoked.refuses(claims)
        if refused is not None:
            raise TokenError(refused, R.REVOKED)
        if role is not None and claims.get("role") != role:
            raise TokenError(f"token is not a {role} token", R.WRONG_ROLE)
        if not isinstance(claims["sub"], str) or not claims["sub"]:
            raise TokenError("token has no subject", R.MALFORMED)
        return claims


def new_key(kid: str | None = None) -> dict[str, Any]:
    """A fresh 256-bit HS256 key as a JWK."""
    return {
        "kty": "oct",
        "kid": kid or uuid.uuid4().hex[:12],
        "alg": "HS256",
        "use": "sig",
        "k": _b64url(secrets.token_bytes(32)),
    }


def read_jwks(path: Path) -> dict[str, Any]:
    """A JWKS file's JSON object; SettingsError says in one line why there is none."""
    try:
        jwks = read_json(path, limit=MAX_JWKS_BYTES)
    except FileNotFoundError:
        raise SettingsError(
            f"the key set {path} does not exist: create it with `cloud-relay keygen --jwks {path}`"
        ) from None
    except OSError as exc:
        raise SettingsError(f"cannot read the key set {path}: {exc.strerror}") from None
    except DamagedError as exc:
        raise SettingsError(f"the key set {path} is not a valid JWKS file: {exc}") from None
    if not isinstance(jwks, dict):
        raise SettingsError(f"the key set {path} is not a valid JWKS file: not a JSON object")
    return jwks


def keygen(path: Path, kid: str | None = None) -> str:
    """Create the key set, or put a new signing key first in it; returns the new kid.

    An existing file that is not a valid key set is refused, never written over.
    """
    keys: list[dict[str, Any]] = []
    if path.exists():
        jwks = read_jwks(path)
        KeySet.of_file(path, jwks)  # a damaged set is refused before anything is written
        keys = list(jwks["keys"])
    key = new_key(kid)
    if any(k.get("kid") == key["kid"] for k in keys):
        raise ValueError(f"kid {key['kid']} is already in {path}")
    keys.insert(0, key)
    KeySet({"keys": keys})  # refuse to write a set we could not read back
    write_private(path, json.dumps({"keys": keys}, indent=2) + "\n")
    return str(key["kid"])
