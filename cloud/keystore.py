"""The key set and the revocation list as files the relay re-reads when they change.

Rotation needs no restart: `cloud-relay keygen` rewrites the JWKS file, `cloud-relay revoke`
the revocation list, and the relay notices the new modification time (or a SIGHUP) and loads
them. A file that fails to load leaves the last good set in force and says so in the log
(once per change of the file). At start, a key set or revocation list that cannot be read
stops the relay with the reason: no keys, no relay; and a list that cannot be read must not
let revoked tokens in.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cloud.keys import LEEWAY_S, KeySet, Revocations, write_private
from wire.errors import DamagedError
from wire.settings import SettingsError
from wire.untrusted import read_bounded

log = logging.getLogger("pitlink.cloud.keys")

MAX_REVOKED_BYTES = 16 * 1024 * 1024  # about 300,000 revoked token ids
MAX_LEDGER_BYTES = 16 * 1024 * 1024  # about 350,000 renewed tokens not yet expired


def renewed_path_for(jwks: Path) -> Path:
    """Where the relay notes which tokens it has renewed: beside the key set."""
    return jwks.with_name(jwks.name + ".renewed")


def revoked_path_for(jwks: Path) -> Path:
    """Where the revocation list lives by default: beside the key set."""
    return jwks.with_name(jwks.name + ".revoked")


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_mtime_ns, st.st_size


def read_revoked(path: Path) -> Revocations:
    """The revocation list; a missing file is empty.

    One entry a line, `#` starts a comment: a token id (which also revokes every renewal of
    that token), or `sub=<pits id> before=<unix time>` (every token of that pits issued
    before then). A line that is neither is skipped and said in the log; bytes that are not
    UTF-8 spoil only their line. Raises OSError, or DamagedError past MAX_REVOKED_BYTES.
    """
    try:
        data = read_bounded(path, MAX_REVOKED_BYTES)
    except FileNotFoundError:
        return Revocations()
    return parse_revoked(data, str(path))


def parse_revoked(data: bytes, where: str = "") -> Revocations:
    """The revocation list in a file's bytes (see read_revoked); `where` names it in the log."""
    text = data.decode("utf-8", "replace")
    ids: set[str] = set()
    subjects: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        if not words[0].startswith("sub="):
            ids.add(words[0])
            continue
        fields = dict(word.partition("=")[::2] for word in words)
        try:
            before = int(fields["before"])
        except (KeyError, ValueError):
            log.error("revocation list line skipped", extra={"path": where, "line": number})
            continue
        sub = fields["sub"]
        subjects[sub] = max(before, subjects.get(sub, before))
    return Revocations(frozenset(ids), subjects)


def _append(path: Path, line: str, note: str) -> None:
    """Add a line to the list; a list that cannot be read is refused, not written over."""
    try:
        text = read_bounded(path, MAX_REVOKED_BYTES).decode("utf-8")
    except (DamagedError, UnicodeDecodeError) as exc:
        raise ValueError(f"the revocation list {path} cannot be read ({exc}): repair it") from None
    except FileNotFoundError:
        text = (
            "# what the relay refuses, one a line: a token id (and every renewal of it),\n"
            "# or sub=<pits id> before=<unix time> (every token of that pits issued before)\n"
        )
    if text and not text.endswith("\n"):
        text += "\n"
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    text += f"{line}  # revoked {stamp}{' ' + note if note else ''}\n"
    write_private(path, text)


def revoke(path: Path, jti: str, note: str = "") -> bool:
    """Add a token id (or family id) to the revocation list; False if it was already there."""
    try:
        listed = read_revoked(path).ids
    except DamagedError as exc:
        raise ValueError(f"the revocation list {path} cannot be read ({exc}): repair it") from None
    if jti in listed:
        return False
    _append(path, jti, note)
    return True


def revoke_subject(path: Path, sub: str, before: float, note: str = "") -> None:
    """Refuse every token of pits `sub` issued before `before` (a unix time)."""
    if not sub or any(ch.isspace() or ch in "#=" for ch in sub):
        raise ValueError(f"{sub!r} is not a pits id")
    _append(path, f"sub={sub} before={int(before)}", note)


def ledger_entries(data: bytes) -> tuple[dict[str, float], int]:
    """The renewal ledger's `<token id> <expiry>` lines, and how many lines were damaged."""
    entries: dict[str, float] = {}
    damaged = 0
    for line in data.splitlines():
        words = line.split()
        if not words:
            continue
        try:
            jti, exp = words[0].decode("utf-8"), float(words[1])
            if len(words) != 2 or exp != exp or abs(exp) == float("inf"):
                raise ValueError("not <token id> <expiry>")
        except (ValueError, IndexError):
            damaged += 1
            continue
        entries[jti] = exp
    return entries, damaged


class KeyStore:
    """The current KeySet and revocation list, reloaded when their files change."""

    def __init__(
        self,
        jwks: Path,
        revoked: Path | None = None,
        *,
        renewed: Path | None = None,
        check_every: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.jwks_path = jwks
        self.revoked_path = revoked or revoked_path_for(jwks)
        self.renewed_path = renewed or renewed_path_for(jwks)
        self.check_every = check_every
        self.clock = clock
        self.keys = KeySet.load(jwks)  # the first load must succeed: no keys, no relay
        try:
            self.revoked = read_revoked(self.revoked_path)
        except (OSError, DamagedError) as exc:
            raise SettingsError(
                f"cannot read the revocation list {self.revoked_path}: {exc}"
            ) from None
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
            except ValueError as exc:  # SettingsError, with the file and the reason
                log.error(
                    "key set not reloaded, keeping the last good one", extra={"error": str(exc)}
                )
        if stamps[1] != self._stamps[1]:
            try:
                self.revoked = read_revoked(self.revoked_path)
                changed = True
                log.info("revocation list reloaded", extra={"revoked": len(self.revoked)})
            except (OSError, DamagedError) as exc:
                log.error(
                    "revocation list not reloaded, keeping the last good one",
                    extra={"path": str(self.revoked_path), "error": str(exc)},
                )
        self._stamps = stamps
        if changed:
            self.reloads += 1
            for listener in self.listeners:
                listener()
        return changed

    def claim_renewal(self, jti: str, exp: float, now: float | None = None) -> bool:
        """True the first time a token id is renewed, False ever after (until it expires).

        The ledger is a file beside the key set, locked while it is read and rewritten, so that
        every worker of one relay agrees; entries of tokens that have expired are dropped, and
        so are damaged lines (said in the log). Raises OSError, or DamagedError when the ledger
        is past MAX_LEDGER_BYTES (then nothing is renewed: delete the file to start it again).
        """
        now = time.time() if now is None else now
        self.renewed_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.renewed_path, "a+b") as f:
            os.fchmod(f.fileno(), 0o600)
            fcntl.flock(f, fcntl.LOCK_EX)
            f.seek(0)
            data = f.read(MAX_LEDGER_BYTES + 1)
            if len(data) > MAX_LEDGER_BYTES:
                raise DamagedError(
                    f"the renewal ledger {self.renewed_path} is over {MAX_LEDGER_BYTES} bytes"
                )
            entries, damaged = ledger_entries(data)
            if damaged:
                log.warning(
                    "renewal ledger: damaged lines dropped",
                    extra={"path": str(self.renewed_path), "lines": damaged},
                )
            if jti in entries:
                return False
            entries = {k: v for k, v in entries.items() if v + LEEWAY_S > now}
            entries[jti] = exp
            f.seek(0)
            f.truncate()
            f.write("".join(f"{k} {int(v)}\n" for k, v in entries.items()).encode())
            f.flush()
            os.fsync(f.fileno())
        return True

    def verify(
        self, token: str, *, role: str | None = None, now: float | None = None
    ) -> dict[str, Any]:
        self.maybe_reload()
        return self.keys.verify(token, role=role, revoked=self.revoked, now=now)

    def issue(self, **kwargs: Any) -> str:
        self.maybe_reload()
        return self.keys.issue(**kwargs)
