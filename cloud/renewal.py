"""Renewing a connected pits' token: once per token, of the token's family."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import jwt

from cloud.keys import family_of
from cloud.keystore import KeyStore
from wire.errors import DamagedError

log = logging.getLogger("pitlink.cloud.keys")

# Across replicas: True for the first to claim a name (cloud.shared_limits.SharedLimits).
ClaimOnce = Callable[[str, float], Awaitable[bool]]


class Renewals:
    """Issues the renewal of a token close to expiry, at most once per token.

    The new token is as long-lived as the one it replaces and of its family, so that revoking
    either revokes both. The relay notes renewed ids in the key store's ledger (a file shared
    by the processes of one machine) and, with replicas, in Redis.
    """

    def __init__(self, keystore: KeyStore, *, once: ClaimOnce | None = None):
        self.keystore = keystore
        self.once = once

    async def renew(self, claims: dict[str, Any]) -> str | None:
        """The new token, or None when this token was renewed before (or cannot be noted)."""
        jti, exp, sub = str(claims.get("jti")), float(claims["exp"]), str(claims["sub"])
        try:
            first = self.keystore.claim_renewal(jti, exp)
        except (OSError, DamagedError) as exc:
            log.error("cannot note a renewal; not renewing", extra={"error": str(exc)})
            return None
        if first and self.once is not None:
            first = await self.once(f"renewed:{jti}", exp - time.time())
        if not first:
            log.info("token renewed before; not again", extra={"pits_id": sub, "jti": jti})
            return None
        lifetime = max(3600, int(exp) - int(claims.get("iat", exp)))
        token = self.keystore.issue(sub=sub, role="pits", ttl=lifetime, family=family_of(claims))
        new = jwt.decode(token, options={"verify_signature": False})
        log.info(
            "token renewed over the connection",
            extra={"pits_id": sub, "jti": jti, "new_jti": new["jti"], "family": new["fam"]},
        )
        return token
