"""Fuzz targets for every parser of what the relay and the box read from disk or a local peer.

Each target feeds the bytes to one parser, as the program does (a file is written and read
through the real reader), and raises (FuzzFinding, or whatever escaped) only when the parser
let out anything but its documented refusal:

- json: `wire.untrusted.load_json` raises only DamagedError; what it returns is within depth.
- offers, bundle-record: the relay's offers.json (`read_offers`: a dict of valid entries, or
  DamagedError) and `<id>.json` (`BundleStore.get`: a Bundle or None, never an exception).
- keyset, revoked, ledger: the relay's key set (`KeySet.load`: a KeySet or SettingsError),
  revocation list and renewal ledger (`parse_revoked`, `ledger_entries`: never raise).
- replica: `cloud.replica_messages.decode`: a message or None.
- drift: the schema check of a new body (`Schemas.check`): a Mismatch or None.
- current, captive, refusal, rauc: the box's readers of FPVTrackside's `/current`, a captive
  portal's API, the relay's 401 body and RAUC's JSON (`RaucError` the only refusal).
- update-state, clock, token-file, token-claims: the box's saved update state, saved clock,
  token file and a token's claims read unverified.

The files live in a scratch folder (`set_scratch`; a temporary one by default).
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
import weakref
from collections.abc import Callable
from pathlib import Path

from cloud.bundles import Bundle, BundleStore, read_offers
from cloud.drift import Mismatch, Schemas
from cloud.keys import KeySet
from cloud.keystore import ledger_entries, parse_revoked
from cloud.replica_messages import decode as decode_replica
from pits_appliance.clock import read_saved
from pits_appliance.connectivity import parse_captive_api
from pits_appliance.dialing import token_reason
from pits_appliance.rauc import RaucError
from pits_appliance.rauc import _json as rauc_json
from pits_appliance.tokens import claims_of, read_token_file
from pits_appliance.update_files import read_state_json as read_update_state
from pits_appliance.upstream import answers_current
from wire.errors import DamagedError
from wire.settings import SettingsError
from wire.untrusted import MAX_DEPTH, load_json, within_depth

# The modules whose code these targets exercise: atheris instruments them for coverage.
SUBJECTS = (
    "wire",
    "cloud.bundles",
    "cloud.drift",
    "cloud.keys",
    "cloud.keystore",
    "cloud.replica_messages",
    "pits_appliance.clock",
    "pits_appliance.connectivity",
    "pits_appliance.dialing",
    "pits_appliance.rauc",
    "pits_appliance.tokens",
    "pits_appliance.update_files",
    "pits_appliance.upstream",
)
BUNDLE_ID = "0123456789abcdef"


class ParserFinding(AssertionError):
    """A parser let out something other than its documented refusal, or returned nonsense."""


def _require(condition: bool, what: str, subject: object) -> None:
    if not condition:
        raise ParserFinding(f"{what}: {subject!r}"[:500])


_scratch: Path | None = None


def set_scratch(folder: Path) -> None:
    """Where the file targets write their files (the atheris child is given one to use)."""
    global _scratch
    folder.mkdir(parents=True, exist_ok=True)
    _scratch = folder


def _file(name: str, data: bytes) -> Path:
    global _scratch
    if _scratch is None:
        folder = Path(tempfile.mkdtemp(prefix="pitlink-fuzz-scratch-"))
        weakref.finalize(set_scratch, shutil.rmtree, folder, ignore_errors=True)
        set_scratch(folder)
    assert _scratch is not None
    path = _scratch / name
    path.write_bytes(data)
    return path


def _text(data: bytes) -> str:
    return data.decode("utf-8", errors="surrogateescape")


# -- the relay --------------------------------------------------------------------------------


def fuzz_json(data: bytes) -> None:
    for form in (data, _text(data)):
        try:
            value = load_json(form, limit=4096)
        except DamagedError:
            continue
        _require(within_depth(value, MAX_DEPTH), "deeper than its bound", form)


def fuzz_offers(data: bytes) -> None:
    try:
        offers = read_offers(_file("offers.json", data))
    except DamagedError:
        return
    _require(
        all(isinstance(k, str) and isinstance(v, str) for k, v in offers.items()),
        "an offer",
        offers,
    )


_store: list[BundleStore] = []


def fuzz_bundle_record(data: bytes) -> None:
    if not _store:
        _store.append(BundleStore(_file(f"{BUNDLE_ID}.raucb", b"x").parent))
    _file(f"{BUNDLE_ID}.json", data)
    bundle = _store[0].get(BUNDLE_ID)
    _require(bundle is None or isinstance(bundle, Bundle), "get returned a non-bundle", bundle)


def fuzz_keyset(data: bytes) -> None:
    try:
        keys = KeySet.load(_file("jwks.json", data))
    except SettingsError:
        return
    _require(bool(keys.kids) and all(isinstance(k, str) for k in keys.kids), "no kids", data)


def fuzz_revoked(data: bytes) -> None:
    revoked = parse_revoked(data, "fuzz")
    _require(all(isinstance(v, int) for v in revoked.subjects.values()), "a cutoff", revoked)


def fuzz_ledger(data: bytes) -> None:
    entries, damaged = ledger_entries(data)
    _require(all(math.isfinite(v) for v in entries.values()) and damaged >= 0, "an entry", entries)


def fuzz_replica(data: bytes) -> None:
    for form in (data, _text(data)):
        decode_replica(form)


_schemas: list[Schemas] = []


def fuzz_drift(data: bytes) -> None:
    if not _schemas:
        _schemas.append(Schemas())
    for path in ("/events/e/r/Race.json", "/events/e/Event.json", "/httpfiles/Channels.json"):
        found = _schemas[0].check(path, data)
        _require(found is None or isinstance(found, Mismatch), "not a mismatch", found)


# -- the box ----------------------------------------------------------------------------------


def fuzz_current(data: bytes) -> None:
    _require(isinstance(answers_current(200, data), bool), "not a bool", data)


def fuzz_captive(data: bytes) -> None:
    verdict = parse_captive_api(data)
    _require(verdict is None or verdict.state == "portal", "not a portal", verdict)


def fuzz_refusal(data: bytes) -> None:
    reason = token_reason(data)
    _require(reason is None or isinstance(reason, str), "not a reason", reason)


def fuzz_rauc(data: bytes) -> None:
    try:
        _require(isinstance(rauc_json(data), dict), "not an object", data)
    except RaucError:
        pass


def fuzz_update_state(data: bytes) -> None:
    doc = read_update_state(_file("update.json", data))
    _require(doc is None or isinstance(doc, dict), "not an object", doc)


def fuzz_clock(data: bytes) -> None:
    when = read_saved(_file("clock", data))
    _require(when is None or math.isfinite(when), "not a time", when)


def fuzz_token_file(data: bytes) -> None:
    try:
        token = read_token_file(_file("token", data))
    except DamagedError:
        return
    _require(token == token.strip(), "not stripped", token)


def fuzz_token_claims(data: bytes) -> None:
    claims = claims_of(_text(data))
    _require(claims is None or isinstance(claims, dict), "not claims", claims)


def _token(payload: bytes) -> bytes:
    import base64

    def b64(part: bytes) -> bytes:
        return base64.urlsafe_b64encode(part).rstrip(b"=")

    return b".".join([b64(b'{"alg":"HS256","typ":"JWT"}'), b64(payload), b64(b"sig")])


DEEP = b"[" * 1000 + b"]" * 1000
COMMON = [b"", b"[" * 5000, DEEP, b"\xef\xbb\xbf{}", b"\xff\xfe", b'{"a": NaN, "b": 1e400}']


def _quietly(target: Callable[[bytes], None]) -> Callable[[bytes], None]:
    """The parsers say damaged files in the log; thousands of inputs a second need not."""

    def run(data: bytes) -> None:
        before = logging.root.manager.disable
        logging.disable(logging.CRITICAL)
        try:
            target(data)
        finally:
            logging.disable(before)

    run.__name__ = run.__qualname__ = target.__name__
    return run


TARGETS: dict[str, Callable[[bytes], None]] = {
    "json": fuzz_json,
    "offers": fuzz_offers,
    "bundle-record": fuzz_bundle_record,
    "keyset": fuzz_keyset,
    "revoked": fuzz_revoked,
    "ledger": fuzz_ledger,
    "replica": fuzz_replica,
    "drift": fuzz_drift,
    "current": fuzz_current,
    "captive": fuzz_captive,
    "refusal": fuzz_refusal,
    "rauc": fuzz_rauc,
    "update-state": fuzz_update_state,
    "clock": fuzz_clock,
    "token-file": fuzz_token_file,
    "token-claims": fuzz_token_claims,
}
SEEDS: dict[str, list[bytes]] = {
    "json": [b'{"a": [1, 2.5, "x", null, true]}', b'"\\ud800"', b"1" * 5000],
    "offers": [b'{"p1": "0123456789abcdef", "../x": "0123456789abcdef", "p3": 7}'],
    "bundle-record": [
        b'{"id": "0123456789abcdef", "version": "1.0", "arch": "amd64", "size": 1, "sha256": "'
        + b"0123456789abcdef" * 4
        + b'", "added": 1.0, "filename": "x"}',
        b'{"id": "0123456789abcdef", "size": 1e400, "added": "nan"}',
    ],
    "keyset": [
        b'{"keys": [{"kty": "oct", "kid": "a", "alg": "HS256", "k": "c2VjcmV0c2VjcmV0"}]}',
        b'{"keys": [{"kty": "oct", "kid": ["a"], "k": ["x"]}]}',
    ],
    "revoked": [b"# x\nabc  # why\nsub=club-7 before=100\nsub=x before=soon\nsub=\n"],
    "ledger": [b"t1 2000\nt2 nan\nt3 inf\n\xff 1\nt4\n"],
    "replica": [
        b'{"t": "reply", "id": "r", "status": 200, "body": "AAE=", "error": "BUSY"}',
        b'{"t": "takeover", "pits": "p", "node": "B"}',
    ],
    "drift": [b'[{"ID": "3a96b1b6-7b6b-43a8-b93e-d918f43607d2", "Name": "x"}]'],
    "current": [b'{"CurrentRace": null}', b'{"CurrentRace": "2b8b4f36"}', b"<html>"],
    "captive": [b'{"captive": true, "user-portal-url": "https://login.example/"}'],
    "refusal": [b'{"error": {"code": "UNAUTHORIZED", "reason": "expired"}}'],
    "rauc": [b'{"booted": "A", "slots": [{"rootfs.0": {"bootname": "A"}}]}'],
    "update-state": [b'{"version": "1.0", "toSlot": "B", "sha256": ["x"]}'],
    "clock": [b"1800000000\n", b"nan\n", b"1e999"],
    "token-file": [b"eyJhbGciOiJIUzI1NiJ9.e30.x\n", b"\xff"],
    "token-claims": [_token(b'{"sub": "club-7", "exp": 1}'), _token(b"[" * 3000)],
}
for _name in SEEDS:
    SEEDS[_name] = SEEDS[_name] + COMMON
    TARGETS[_name] = _quietly(TARGETS[_name])
