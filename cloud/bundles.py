"""Signed update bundles kept by the relay, and which boxes are offered which.

The relay neither trusts nor parses a bundle: the box checks its signature with RAUC. What
the relay keeps is bytes, their size and sha256, and the version and architecture it was told
(from the file name `pitlink-ARCH-VERSION.raucb`, or given). One folder holds everything:

    <id>.raucb    the bundle; id = the first 16 hex digits of its sha256
    <id>.json     its metadata (version, arch, compatible, size, sha256, added, file name)
    offers.json   {"<pits id>": "<bundle id>"}: the standing offers
    .upload-*     a bundle being written; renamed into place once whole

Every file is written under a temporary name and renamed, so a reader (another replica, the
CLI, a download) never sees half of one. No name from outside chooses a path: paths are made
from ids this module made and checked. Offers are re-read when the file changes, so that
`cloud-relay bundle offer` reaches a running relay, and replicas sharing the folder agree.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from cloud import CloudError
from wire import ErrorCode
from wire import messages as m
from wire.errors import DamagedError
from wire.untrusted import DamageNotes, read_json, stamp_of

log = logging.getLogger("pitlink.cloud.bundles")

ARCHES = ("amd64", "arm64")
VERSION = re.compile(r"[0-9A-Za-z.+~_-]{1,64}")
BUNDLE_ID = re.compile(r"[0-9a-f]{16}")
PITS_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
FILE_NAME = re.compile(r"pitlink-(?P<arch>[a-z0-9]+)-(?P<version>[^/\\]+)\.raucb")
MAX_FILE_NAME = 255
MAX_OFFERED = 10_000  # pits ids in offers.json; a box fleet is far smaller
MAX_OFFERS_BYTES = 4 * 1024 * 1024  # offers.json: room for MAX_OFFERED offers, several times
MAX_META_BYTES = 64 * 1024  # <id>.json: a few hundred bytes when this module writes it
OFFERS = "offers.json"
CHUNK = 1024 * 1024


class BundleError(CloudError):
    """A bundle or an offer refused; `code` and `status` are how the admin API answers it."""

    def __init__(self, message: str, code: ErrorCode = ErrorCode.BAD_REQUEST, status: int = 400):
        super().__init__(message)
        self.code = code
        self.status = status


@dataclass(frozen=True, kw_only=True)
class Bundle:
    """One stored bundle, as its metadata file says."""

    id: str
    version: str
    arch: str
    size: int
    sha256: str
    added: float
    filename: str

    @property
    def compatible(self) -> str:
        return f"pitlink-{self.arch}"

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "version": self.version,
            "arch": self.arch,
            "compatible": self.compatible,
            "size": self.size,
            "sha256": self.sha256,
            "added": self.added,
            "filename": self.filename,
        }

    def offer(self) -> m.Offer:
        """The frame that offers this bundle to a box."""
        return m.Offer(
            bundle=self.id,
            version=self.version,
            compatible=self.compatible,
            size=self.size,
            sha256=self.sha256,
        )

    @classmethod
    def parse(cls, data: Any) -> Bundle:
        """From a metadata file; raises ValueError (only) on anything not written by this module."""
        if not isinstance(data, dict):
            raise ValueError("not an object")
        try:
            bundle = cls(
                id=str(data["id"]),
                version=str(data["version"]),
                arch=str(data["arch"]),
                size=int(data["size"]),
                sha256=str(data["sha256"]),
                added=float(data["added"]),
                filename=str(data.get("filename", "")),
            )
        except KeyError as exc:
            raise ValueError(f"no {str(exc)[:40]}") from None
        except (TypeError, OverflowError) as exc:  # int() of a list, of an infinity
            raise ValueError(f"a field of the wrong type: {exc}") from None
        if not (
            BUNDLE_ID.fullmatch(bundle.id)
            and VERSION.fullmatch(bundle.version)
            and bundle.arch in ARCHES
            and re.fullmatch(r"[0-9a-f]{64}", bundle.sha256)
            and bundle.sha256.startswith(bundle.id)
            and 0 < bundle.size <= m.MAX_BUNDLE_SIZE
        ):
            raise ValueError("fields out of range")
        return bundle


def arch_of(hello: m.PitsHello | None) -> str | None:
    """The box's architecture if its hello lists it as a feature `arch:<arch>`, else None."""
    for feature in hello.features if hello else ():
        if feature.startswith("arch:") and feature[5:] in ARCHES:
            return feature[5:]
    return None


def check_version(version: str) -> str:
    if not VERSION.fullmatch(version):
        raise BundleError(
            f"version {version[:80]!r} is not 1 to 64 of letters, digits and . + ~ _ -"
        )
    return version


def check_arch(arch: str) -> str:
    if arch not in ARCHES:
        raise BundleError(f"arch {arch[:40]!r} is not one of {', '.join(ARCHES)}")
    return arch


def check_id(bundle_id: str) -> str:
    if not BUNDLE_ID.fullmatch(bundle_id):
        raise BundleError(f"{bundle_id[:80]!r} is not a bundle id (16 hexadecimal digits)")
    return bundle_id


def check_pits_ids(pits_ids: Sequence[str]) -> list[str]:
    if not pits_ids:
        raise BundleError("name at least one pits id")
    for pits_id in pits_ids:
        if not isinstance(pits_id, str) or not PITS_ID.fullmatch(pits_id):
            raise BundleError(f"{str(pits_id)[:80]!r} is not a pits id")
    return list(dict.fromkeys(pits_ids))


def base_name(name: str) -> str:
    """The last part of a file name from outside, for its metadata and nothing else."""
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    return "".join(c for c in name if c.isprintable())[:MAX_FILE_NAME]


def version_and_arch(
    filename: str | None, version: str | None, arch: str | None
) -> tuple[str, str]:
    """What the bundle is: given, or read from a name `pitlink-ARCH-VERSION.raucb`."""
    if version is None or arch is None:
        match = FILE_NAME.fullmatch(base_name(filename or ""))
        if match is None:
            raise BundleError(
                "cannot tell the version and arch: name the file pitlink-ARCH-VERSION.raucb, "
                "or give the version and the arch"
            )
        version = version or match["version"]
        arch = arch or match["arch"]
    return check_version(version), check_arch(arch)


def read_offers(path: Path) -> dict[str, str]:
    """The offers in an offers file: the valid entries of a JSON object, the rest skipped.

    Raises OSError, or DamagedError when the file is no JSON object (or over its bound).
    """
    raw = read_json(path, limit=MAX_OFFERS_BYTES)
    if not isinstance(raw, dict):
        raise DamagedError("not a JSON object")
    return {
        p: b
        for p, b in list(raw.items())[:MAX_OFFERED]
        if isinstance(p, str)
        and PITS_ID.fullmatch(p)
        and isinstance(b, str)
        and BUNDLE_ID.fullmatch(b)
    }


def write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class Upload:
    """A bundle being written: `write()` its bytes, then `commit()` or `abort()`."""

    def __init__(self, store: BundleStore, *, version: str, arch: str, filename: str):
        self.store = store
        self.version = version
        self.arch = arch
        self.filename = filename
        self.size = 0
        self._hash = hashlib.sha256()
        fd, name = tempfile.mkstemp(dir=store.root, prefix=".upload-", suffix=".part")
        self._tmp = Path(name)
        self._file: BinaryIO | None = os.fdopen(fd, "wb")

    def write(self, chunk: bytes) -> None:
        if self._file is None:
            raise BundleError("this upload is over")
        self.size += len(chunk)
        if self.size > self.store.max_bytes:
            self.abort()
            raise BundleError(
                f"the bundle is over the {self.store.max_bytes} byte limit",
                ErrorCode.TOO_LARGE,
                413,
            )
        self._hash.update(chunk)
        self._file.write(chunk)

    def commit(self) -> Bundle:
        if self._file is None:
            raise BundleError("this upload is over")
        f, self._file = self._file, None
        try:
            f.flush()
            os.fsync(f.fileno())
        finally:
            f.close()
        if self.size == 0:
            self._tmp.unlink(missing_ok=True)
            raise BundleError("the bundle is empty")
        sha256 = self._hash.hexdigest()
        try:
            return self.store._place(self._tmp, self, sha256)
        finally:
            self._tmp.unlink(missing_ok=True)

    def abort(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self._tmp.unlink(missing_ok=True)


class BundleStore:
    """The bundle folder: bundles added, listed and removed, and the standing offers."""

    def __init__(
        self,
        root: Path,
        *,
        max_bytes: int = m.MAX_BUNDLE_SIZE,
        wall: Callable[[], float] = time.time,
    ):
        self.root = root
        self.max_bytes = min(max_bytes, m.MAX_BUNDLE_SIZE)
        self.wall = wall
        root.mkdir(parents=True, exist_ok=True)
        self._offers: dict[str, str] = {}
        self._offers_stamp: tuple[int, int, int] | None = None
        self._damaged = DamageNotes()  # metadata files said to be damaged, once per version

    # -- bundles ------------------------------------------------------------------------------

    def upload(
        self, *, filename: str | None = None, version: str | None = None, arch: str | None = None
    ) -> Upload:
        """Start writing a bundle; its version and arch are checked before any byte."""
        version, arch = version_and_arch(filename, version, arch)
        return Upload(self, version=version, arch=arch, filename=base_name(filename or ""))

    def add_file(
        self, source: Path, *, version: str | None = None, arch: str | None = None
    ) -> Bundle:
        """Copy a bundle file in (streamed: it may be larger than memory)."""
        upload = self.upload(filename=source.name, version=version, arch=arch)
        try:
            with source.open("rb") as f:
                while chunk := f.read(CHUNK):
                    upload.write(chunk)
        except BaseException:
            upload.abort()
            raise
        return upload.commit()

    def _place(self, tmp: Path, upload: Upload, sha256: str) -> Bundle:
        bundle_id = sha256[:16]
        existing = self.get(bundle_id)
        if existing is not None:
            if existing.sha256 != sha256:
                raise BundleError(
                    f"bundle id {bundle_id} is taken by other bytes", ErrorCode.DENIED, 409
                )
            return existing  # the same bytes again: nothing to do
        for other in self.bundles():
            if (other.version, other.arch) == (upload.version, upload.arch):
                raise BundleError(
                    f"bundle {other.id} is already version {other.version} for {other.arch}: "
                    "remove it first",
                    ErrorCode.DENIED,
                    409,
                )
        bundle = Bundle(
            id=bundle_id,
            version=upload.version,
            arch=upload.arch,
            size=upload.size,
            sha256=sha256,
            added=self.wall(),
            filename=upload.filename,
        )
        os.replace(tmp, self.path_of(bundle_id))
        # The metadata last: a bundle is listed only once its bytes are in place.
        write_atomic(self._meta(bundle_id), json.dumps(bundle.describe(), indent=1).encode())
        log.info("bundle added", extra={"bundle": bundle_id, "version": bundle.version})
        return bundle

    def path_of(self, bundle_id: str) -> Path:
        return self.root / f"{check_id(bundle_id)}.raucb"

    def _meta(self, bundle_id: str) -> Path:
        return self.root / f"{check_id(bundle_id)}.json"

    def get(self, bundle_id: str) -> Bundle | None:
        """The bundle of that id, or None (also for a string that is no id)."""
        if not BUNDLE_ID.fullmatch(bundle_id):
            return None
        path = self._meta(bundle_id)
        try:
            bundle = Bundle.parse(read_json(path, limit=MAX_META_BYTES))
        except FileNotFoundError:
            return None
        except (OSError, DamagedError, ValueError) as exc:
            # Said once per version of the file, not at every hello or tick that asks.
            if self._damaged.first(str(path), stamp_of(path)):
                log.warning(
                    "bundle metadata unreadable: the bundle is not offered",
                    extra={"bundle": bundle_id, "path": str(path), "error": str(exc)[:200]},
                )
            return None
        self._damaged.good(str(path))
        if bundle.id != bundle_id or not self.path_of(bundle_id).is_file():
            return None
        return bundle

    def bundles(self) -> list[Bundle]:
        """Every stored bundle, newest first."""
        found = (self.get(p.stem) for p in self.root.glob("*.json") if BUNDLE_ID.fullmatch(p.stem))
        return sorted((b for b in found if b is not None), key=lambda b: -b.added)

    def remove(self, bundle_id: str) -> tuple[Bundle, list[str]]:
        """Delete a bundle; its offers are withdrawn (returned: the pits ids that had one)."""
        bundle = self.get(check_id(bundle_id))
        if bundle is None:
            raise BundleError(f"no bundle {bundle_id}", ErrorCode.DENIED, 404)
        withdrawn = self._change_offers(lambda o: [p for p, b in o.items() if b == bundle_id], None)
        self._meta(bundle_id).unlink(missing_ok=True)
        self.path_of(bundle_id).unlink(missing_ok=True)
        log.info("bundle removed", extra={"bundle": bundle_id, "version": bundle.version})
        return bundle, withdrawn

    # -- offers -------------------------------------------------------------------------------

    def offers(self) -> dict[str, str]:
        """pits id → bundle id, re-read if the file changed since last asked.

        A damaged file stands for no offers, and is said in the log once, when it is first
        seen (and again when it changes), never at each hello or tick.
        """
        path = self.root / OFFERS
        stamp = stamp_of(path)  # a rename is a new inode
        if stamp is None:
            self._offers, self._offers_stamp = {}, None
            return {}
        if stamp != self._offers_stamp:
            try:
                self._offers = read_offers(path)
            except (OSError, DamagedError) as exc:
                log.error(
                    "offers file unreadable: no offers stand",
                    extra={"path": str(path), "error": str(exc)[:200]},
                )
                self._offers = {}
            self._offers_stamp = stamp
        return dict(self._offers)

    def offered_to(self, pits_id: str) -> Bundle | None:
        """The bundle standing offered to that pits, if it is still stored."""
        bundle_id = self.offers().get(pits_id)
        return None if bundle_id is None else self.get(bundle_id)

    def offer(self, bundle_id: str, pits_ids: Sequence[str]) -> Bundle:
        """Offer a bundle to these pits (replacing what they were offered before)."""
        bundle = self.get(check_id(bundle_id))
        if bundle is None:
            raise BundleError(f"no bundle {bundle_id}", ErrorCode.DENIED, 404)
        ids = check_pits_ids(pits_ids)
        self._change_offers(lambda o: ids, bundle_id)
        return bundle

    def withdraw(self, pits_ids: Sequence[str]) -> list[str]:
        """Withdraw the offers to these pits; returns those that had one."""
        ids = check_pits_ids(pits_ids)
        return self._change_offers(lambda o: [p for p in ids if p in o], None)

    def _change_offers(
        self, which: Callable[[dict[str, str]], list[str]], bundle_id: str | None
    ) -> list[str]:
        """Set (or, with None, remove) the offers of `which(current)`, under the folder's lock
        so that the CLI and the relays do not lose each other's changes."""
        path = self.root / OFFERS
        with self.locked():
            try:
                current = read_offers(path) if path.exists() else {}
            except (OSError, DamagedError) as exc:
                # Writing over it would lose every offer it holds: the operator decides.
                raise BundleError(
                    f"the offers file {path} cannot be read ({exc}): repair or delete it, "
                    "then try again",
                    ErrorCode.UNAVAILABLE,
                    503,
                ) from None
            chosen = which(current)
            for pits_id in chosen:
                if bundle_id is None:
                    current.pop(pits_id, None)
                else:
                    current[pits_id] = bundle_id
            if len(current) > MAX_OFFERED:
                raise BundleError(f"more than {MAX_OFFERED} standing offers")
            write_atomic(self.root / OFFERS, json.dumps(current, indent=1, sort_keys=True).encode())
        self._offers_stamp = None  # read again on next ask
        return chosen

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        with (self.root / ".lock").open("a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)
