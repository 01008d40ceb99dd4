"""The key set and the revocation list as files the relay re-reads when they change.

Rotation needs no restart: `cloud-relay keygen` rewrites the JWKS file, `cloud-relay revoke`
the revocation list, and the relay notices the new modification time (or a SIGHUP) and loads
them. A file that fails to load leaves the last good set in force and says so in the log.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cloud.keys import KeySet, write_private

log = logging.getLogger("pitlink.cloud.keys")


def revoked_path_for(jwks: Path) -> Path:
    """Where the revocation list lives by default: beside the key set."""
    return jwks.with_name(jwks.name + ".revoked")


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_mtime_ns, st.st_size


def read_revoked(path: Path) -> frozenset[str]:
    """The revoked token ids: one per line, `#` comments allowed; a missing file is empty."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return frozenset()
    return frozenset(
        line.split("#", 1)[0].strip() for line in text.splitlines() if line.split("#", 1)[0].strip()
    )


def revoke(path: Path, jti: str, note: str = "") -> bool:
    """Add a token id to the revocation list; False if it was already there."""
    current = read_revoked(path)
    if jti in current:
        return False
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        text = "# token ids (jti) the relay refuses, one per line\n"
    if text and not text.endswith("\n"):
        text += "\n"
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    text += f"{jti}  # revoked {stamp}{' ' + note if note else ''}\n"
    write_private(path, text)
    return True


class KeyStore:
    """The current KeySet and revocation list, reloaded when their files change."""

    def __init__(
        self,
        jwks: Path,
        revoked: Path | None = None,
        *,
        check_every: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.jwks_path = jwks
        self.revoked_path = revoked or revoked_path_for(jwks)
        self.check_every = check_every
        self.clock = clock
        self.keys = KeySet.load(jwks)  # the first load must succeed: no keys, no relay
        self.revoked = read_revoked(self.revoked_path)
        self._stamps = (_stamp(self.jwks_path), _stamp(self.revoked_path))
        self._checked = clock()
        self.reloads = 0
        self.listeners: list[Callable[[], None]] = []

    def maybe_reload(self, *, force: bool = False) -> bool:
        """Reload whatever changed (checked at most every `check_every` s unless forced)."""
        now = self.clock()
        if not force and now - self._checked < self.check_every:
            return False
        self._checked = now
        stamps = (_stamp(self.jwks_path), _stamp(self.revoked_path))
        if stamps == self._stamps:
            return False
        changed = False
        if stamps[0] != self._stamps[0]:
            try:
                self.keys = KeySet.load(self.jwks_path)
                changed = True
                log.info("key set reloaded", extra={"kids": self.keys.kids})
            except (OSError, ValueError, json.JSONDecodeError) as exc:
                log.error(
                    "key set not reloaded, keeping the last good one", extra={"error": str(exc)}
                )
        if stamps[1] != self._stamps[1]:
            try:
                self.revoked = read_revoked(self.revoked_path)
                changed = True
                log.info("revocation list reloaded", extra={"revoked": len(self.revoked)})
            except OSError as exc:
                log.error("revocation list not reloaded", extra={"error": str(exc)})
        self._stamps = stamps
        if changed:
            self.reloads += 1
            for listener in self.listeners:
                listener()
        return changed

    def verify(
        self, token: str, *, role: str | None = None, now: float | None = None
    ) -> dict[str, Any]:
        self.maybe_reload()
        return self.keys.verify(token, role=role, revoked=self.revoked, now=now)

    def issue(self, **kwargs: Any) -> str:
        self.maybe_reload()
        return self.keys.issue(**kwargs)
