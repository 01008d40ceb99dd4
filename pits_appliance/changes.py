"""What the relay has been told of each watched file, and what to tell it next.

The watcher reads each watched path again and again; this decides what a read means for the
relay (feature `push`, wire.push):

- a body whose ETag differs from the one last pushed on this link is a `change` (the same
  canonical body and ETag a fetch would answer, from the executor's own digest cache, so an
  unchanged file is not decoded again);
- a `.json` body that does not decode (a file caught half-written: FPVTrackside rewrites its
  files in place) is no news: the last good one stands, and the read does not count; nor does
  an empty body where the file had content, until a second read in a row finds it empty too
  (a file caught between its truncation and its writing is empty);
- once every watched path has been read, well, since the round began, and none changed, a
  `still` says so, at most once an interval.

Pure: the watcher does the reads and the sending; time is passed in.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import Enum

from pits_appliance.executor import KnownBodies
from wire import ProtocolError
from wire.canonical import is_json_path, prepare_body
from wire.mediatypes import content_type_for_path
from wire.push import Change


class Read(Enum):
    """What one read of a watched path came to."""

    CHANGED = "changed"  # its body is new to the relay: push it
    SAME = "same"  # as last pushed
    BAD = "bad"  # no good body this time (half-written, not JSON, not a 200)


class Changes:
    """Per watched path, the ETag last pushed; and the round that leads to a `still`."""

    def __init__(self, known: KnownBodies):
        self.known = known  # the executor's: path -> digest of its last bytes and their ETag
        self.paths: tuple[str, ...] = ()
        self._pushed: dict[str, str] = {}  # path -> ETag the relay was sent on this link
        self._had_content: set[str] = set()
        self._empty_once: set[str] = set()
        self._unread: set[str] = set()
        self._dirty = False
        self._last_still: float | None = None

    def watch(self, paths: Iterable[str]) -> None:
        """These paths are watched now: what is known of those kept stands, a new round starts."""
        self.paths = tuple(dict.fromkeys(paths))
        keep = set(self.paths)
        self._pushed = {p: etag for p, etag in self._pushed.items() if p in keep}
        self._had_content &= keep
        self._empty_once &= keep
        self._new_round()

    def forget(self) -> None:
        """A new link (perhaps another relay replica): everything is pushed anew."""
        self._pushed.clear()
        self._last_still = None
        self._new_round()

    def read(self, path: str, status: int, raw: bytes) -> tuple[Read, Change | None]:
        """One read's answer: (what it came to, the change to push if it changed)."""
        if status != 200:
            return Read.BAD, None
        etag: str | None = None
        body: bytes | None = None
        digest = None
        if is_json_path(path):
            if not raw.strip() and path in self._had_content and path not in self._empty_once:
                self._empty_once.add(path)
                return Read.BAD, None
            digest = self.known.digest(raw)
            etag = self.known.etag(path, digest)
        if etag is None or etag != self._pushed.get(path):
            try:
                body, etag = prepare_body(path, raw)
            except ProtocolError:
                return Read.BAD, None
            if digest is not None:
                self.known.remember(path, digest, etag)
        self._empty_once.discard(path)
        if raw.strip():
            self._had_content.add(path)
        else:
            self._had_content.discard(path)
        if etag == self._pushed.get(path) or body is None:
            self._read_well(path, changed=False)
            return Read.SAME, None
        return Read.CHANGED, Change(
            path=path, etag=etag, body=body, content_type=content_type_for_path(path)
        )

    def pushed(self, change: Change) -> None:
        """The change went to the relay."""
        self._pushed[change.path] = change.etag
        self._read_well(change.path, changed=True)

    def still(self, now: float, interval: float) -> bool:
        """Whether to send a `still` now: the round is complete, nothing changed in it, and
        the last was at least `interval` ago. A complete round starts the next either way."""
        if self._unread or not self.paths:
            return False
        quiet = not self._dirty
        self._new_round()
        if not quiet or (self._last_still is not None and now - self._last_still < interval):
            return False
        self._last_still = now
        return True

    def _read_well(self, path: str, *, changed: bool) -> None:
        self._unread.discard(path)
        self._dirty = self._dirty or changed

    def _new_round(self) -> None:
        self._unread = set(self.paths)
        self._dirty = False
