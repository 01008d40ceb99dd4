"""Frames of protocol version 1: the envelope, the payloads, and their validation.

Every frame is one JSON object `{"id", "type", "ts", "payload"}`. Decoding checks the envelope
and the payload of its type and returns a typed message; anything else (not JSON, not an
object, a missing field, a wrong type) raises ProtocolError(BAD_REQUEST), never anything else.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

import ujson

from wire.errors import ErrorCode, ProtocolError
from wire.fields import (
    MAX_BUNDLE_ID as MAX_BUNDLE_ID,
)
from wire.fields import (
    MAX_BUNDLE_SIZE as MAX_BUNDLE_SIZE,
)
from wire.fields import (
    MAX_CONTENT_TYPE as MAX_CONTENT_TYPE,
)
from wire.fields import (
    MAX_DETAILS as MAX_DETAILS,
)
from wire.fields import (
    MAX_ETAG as MAX_ETAG,
)
from wire.fields import (
    MAX_FEATURE as MAX_FEATURE,
)
from wire.fields import (
    MAX_FEATURES as MAX_FEATURES,
)
from wire.fields import (
    MAX_LIMITS as MAX_LIMITS,
)
from wire.fields import (
    MAX_MESSAGE as MAX_MESSAGE,
)
from wire.fields import (
    MAX_PATH as MAX_PATH,
)
from wire.fields import (
    MAX_PITS_ID as MAX_PITS_ID,
)
from wire.fields import (
    MAX_SERVER as MAX_SERVER,
)
from wire.fields import (
    MAX_SLOT as MAX_SLOT,
)
from wire.fields import (
    MAX_SW_VERSION as MAX_SW_VERSION,
)
from wire.fields import (
    MAX_TOKEN as MAX_TOKEN,
)
from wire.fields import (
    MAX_TRAITS as MAX_TRAITS,
)
from wire.fields import (
    MAX_UPSTREAM_VERSION as MAX_UPSTREAM_VERSION,
)
from wire.fields import (
    RESPONSE_STATUSES as RESPONSE_STATUSES,
)
from wire.fields import bad as _bad
from wire.fields import features_of as _features
from wire.fields import get as _get
from wire.fields import printable as _printable
from wire.fields import (
    reply_parts,
    reply_payload,
)
from wire.fields import scalar as _scalar
from wire.push import FROM_CLOUD, FROM_PITS, TYPES, PushMessage

MAX_ID_LENGTH = 128
Sender = Literal["cloud", "pits"]


def new_id() -> str:
    """A fresh frame id (uuid4: unique across connections and restarts)."""
    return uuid.uuid4().hex


# What a relay takes beyond protocol version 1 as first published, named in its hello's
# `features`: an agent sends such frames only to a relay that names them (an older relay
# closes the link on a frame type it does not know).
FEATURE_FPVTRACKSIDE = "fpvtrackside"  # `fpvtrackside` frames, when what the agent sees changes


@dataclass(frozen=True, kw_only=True)
class CloudHello:
    """The cloud's first frame after the upgrade."""

    protocol_version: int
    server_time_ms: int
    limits: dict[str, Any] = field(default_factory=dict)
    features: tuple[str, ...] = ()

    def payload(self) -> dict[str, Any]:
        return {
            "protocolVersion": self.protocol_version,
            "serverTimeMs": self.server_time_ms,
            "limits": self.limits,
            "features": list(self.features),
        }

    @classmethod
    def parse(cls, p: dict[str, Any]) -> CloudHello:
        limits = _get(p, "limits", dict, optional=True, max_len=MAX_LIMITS) or {}
        if not all(len(k) <= MAX_FEATURE and _scalar(v) for k, v in limits.items()):
            raise _bad("limits must map short names to numbers or short strings")
        return cls(
            protocol_version=_get(p, "protocolVersion", int),
            server_time_ms=_get(p, "serverTimeMs", int),
            limits=limits,
            features=_features(p, "features"),
        )


@dataclass(frozen=True, kw_only=True)
class FpvTrackside:
    """Pits to cloud: what the agent can tell of the FPVTrackside it talks to, in its hello and
    in an `fpvtrackside` frame each time that changes.

    FPVTrackside's web server names no version of its own; `version` is what its answers show
    (for example "2.76 or later": it answers GET /current), and `server` its Server header
    (Microsoft-HTTPAPI/2.0 on Windows). `traits` name what the version was told from.
    """

    version: str | None = None
    server: str | None = None
    traits: tuple[str, ...] = ()

    def payload(self) -> dict[str, Any]:
        p: dict[str, Any] = {"traits": list(self.traits)}
        if self.version is not None:
            p["version"] = self.version
        if self.server is not None:
            p["server"] = self.server
        return p

    @classmethod
    def parse(cls, p: dict[str, Any]) -> FpvTrackside:
        traits = _get(p, "traits", list, optional=True, max_len=MAX_TRAITS) or []
        if not all(isinstance(t, str) and len(t) <= MAX_FEATURE for t in traits):
            raise _bad(f"traits must be strings of at most {MAX_FEATURE} characters")
        return cls(
            version=_printable(p, "version", MAX_UPSTREAM_VERSION),
            server=_printable(p, "server", MAX_SERVER),
            traits=tuple(traits),
        )


@dataclass(frozen=True, kw_only=True)
class PitsHello:
    """The pits' answer to the cloud's hello."""

    protocol_version: int
    pits_id: str
    sw_version: str
    features: tuple[str, ...] = ()
    # An appliance with two root slots: the slot it booted ("A" or "B"), and what became of its
    # last update (see UpdateReport). Both absent for an agent run by hand.
    slot: str | None = None
    update: UpdateReport | None = None
    # What the agent has seen of FPVTrackside so far; absent before its first answer.
    fpvtrackside: FpvTrackside | None = None

    def payload(self) -> dict[str, Any]:
        p: dict[str, Any] = {
            "protocolVersion": self.protocol_version,
            "pitsId": self.pits_id,
            "swVersion": self.sw_version,
            "features": list(self.features),
        }
        if self.slot is not None:
            p["slot"] = self.slot
        if self.update is not None:
            p["update"] = self.update.payload()
        if self.fpvtrackside is not None:
            p["fpvtrackside"] = self.fpvtrackside.payload()
        return p

    @classmethod
    def parse(cls, p: dict[str, Any]) -> PitsHello:
        update = _get(p, "update", dict, optional=True, max_len=MAX_DETAILS)
        upstream = _get(p, "fpvtrackside", dict, optional=True, max_len=MAX_DETAILS)
        return cls(
            protocol_version=_get(p, "protocolVersion", int),
            pits_id=_get(p, "pitsId", str, max_len=MAX_PITS_ID),
            sw_version=_get(p, "swVersion", str, max_len=MAX_SW_VERSION),
            features=_features(p, "features"),
            slot=_get(p, "slot", str, optional=True, max_len=MAX_SLOT),
            update=UpdateReport.parse(update) if update is not None else None,
            fpvtrackside=FpvTrackside.parse(upstream) if upstream is not None else None,
        )


@dataclass(frozen=True, kw_only=True)
class Fetch:
    """Cloud to pits: fetch one path from FPVTrackside."""

    method: str
    path: str
    timeout_ms: int
    if_none_match: str | None = None

    def payload(self) -> dict[str, Any]:
        p: dict[str, Any] = {"method": self.method, "path": self.path, "timeoutMs": self.timeout_ms}
        if self.if_none_match is not None:
            p["ifNoneMatch"] = self.if_none_match
        return p

    @classmethod
    def parse(cls, p: dict[str, Any]) -> Fetch:
        timeout_ms = _get(p, "timeoutMs", int)
        if timeout_ms <= 0:
            raise _bad("timeoutMs must be positive")
        return cls(
            method=_get(p, "method", str, max_len=16),
            path=_get(p, "path", str, max_len=MAX_PATH),
            timeout_ms=timeout_ms,
            if_none_match=_get(p, "ifNoneMatch", str, optional=True, max_len=MAX_ETAG),
        )


@dataclass(frozen=True, kw_only=True)
class Response:
    """Pits to cloud: the answer to a fetch; no body on 304 and HEAD."""

    status: int
    etag: str | None = None
    content_type: str | None = None
    body: bytes | None = None

    def payload(self) -> dict[str, Any]:
        return reply_payload(self.status, self.etag, self.content_type, self.body)

    @classmethod
    def parse(cls, p: dict[str, Any]) -> Response:
        status, etag, content_type, body = reply_parts(p)
        return cls(status=status, etag=etag, content_type=content_type, body=body)


@dataclass(frozen=True, kw_only=True)
class Error:
    """Either direction: a request failed, or a frame was refused."""

    code: ErrorCode
    message: str
    details: dict[str, Any] | None = None

    def payload(self) -> dict[str, Any]:
        p: dict[str, Any] = {"code": str(self.code), "message": self.message}
        if self.details:
            p["details"] = self.details
        return p

    @classmethod
    def parse(cls, p: dict[str, Any]) -> Error:
        code = _get(p, "code", str)
        try:
            known = ErrorCode(code)
        except ValueError:
            raise _bad(f"unknown error code {code[:40]!r}") from None
        return cls(
            code=known,
            message=_get(p, "message", str, max_len=MAX_MESSAGE),
            details=_get(p, "details", dict, optional=True, max_len=MAX_DETAILS),
        )

    def exception(self) -> ProtocolError:
        return ProtocolError(self.code, self.message, self.details)


@dataclass(frozen=True, kw_only=True)
class Ping:
    """Either direction: liveness; answered with a pong echoing the id."""

    def payload(self) -> dict[str, Any]:
        return {}

    @classmethod
    def parse(cls, p: dict[str, Any]) -> Ping:
        return cls()


@dataclass(frozen=True, kw_only=True)
class Pong:
    """Either direction: the answer to a ping."""

    def payload(self) -> dict[str, Any]:
        return {}

    @classmethod
    def parse(cls, p: dict[str, Any]) -> Pong:
        return cls()


@dataclass(frozen=True, kw_only=True)
class Token:
    """Cloud to pits: a renewed token for the pits to store and use from its next connection."""

    token: str

    def payload(self) -> dict[str, Any]:
        return {"token": self.token}

    @classmethod
    def parse(cls, p: dict[str, Any]) -> Token:
        return cls(token=_get(p, "token", str, max_len=MAX_TOKEN))


# What an update on a box can be doing, or came to. A pits sends an `update` frame each time
# this changes (and at most about once a second while a download runs); its hello carries the
# last one, so a relay that restarted still knows how the last update ended.
UPDATE_STATES = frozenset(
    {
        "offered",  # the relay offered a bundle; the box has not started on it
        "downloading",  # `done` of `total` bytes are on the box
        "installing",  # RAUC checks the signature and writes the other slot
        "installed",  # written; the box restarts into it when told, or when idle
        "restarting",  # restarting into the new slot now
        "good",  # the new slot came up healthy and is marked good
        "rolled-back",  # the new slot did not come up healthy; the box is back on the old one
        "failed",  # the download or the install failed; `message` says why; slots untouched
        "refused",  # the bundle is not one this box takes (signature, architecture)
    }
)
_SHA256 = re.compile(r"[0-9a-f]{64}")
_BUNDLE_ID = re.compile(r"[0-9a-f]{1,64}")


@dataclass(frozen=True, kw_only=True)
class Offer:
    """Cloud to pits: a signed update bundle this box may download and install.

    The box fetches it from the relay's `/pits-api/bundles/<bundle>` with its own token, and
    trusts none of this: RAUC checks the bundle's signature against the box's own keyring, and
    the box compares the bundle's version and compatible with these before installing.
    `bundle` None withdraws an offer not yet acted on.
    """

    bundle: str | None
    version: str = ""
    compatible: str = ""
    size: int = 0
    sha256: str = ""

    def payload(self) -> dict[str, Any]:
        if self.bundle is None:
            return {"bundle": None}
        return {
            "bundle": self.bundle,
            "version": self.version,
            "compatible": self.compatible,
            "size": self.size,
            "sha256": self.sha256,
        }

    @classmethod
    def parse(cls, p: dict[str, Any]) -> Offer:
        bundle = _get(p, "bundle", str, optional=True, max_len=MAX_BUNDLE_ID)
        if bundle is None:
            return cls(bundle=None)
        if not _BUNDLE_ID.fullmatch(bundle):
            raise _bad("bundle must be a lowercase hexadecimal id")
        size = _get(p, "size", int)
        if not 0 < size <= MAX_BUNDLE_SIZE:
            raise _bad(f"size must be between 1 and {MAX_BUNDLE_SIZE}")
        sha256 = _get(p, "sha256", str, max_len=64)
        if not _SHA256.fullmatch(sha256):
            raise _bad("sha256 must be 64 lowercase hexadecimal digits")
        return cls(
            bundle=bundle,
            version=_get(p, "version", str, max_len=MAX_SW_VERSION),
            compatible=_get(p, "compatible", str, max_len=MAX_FEATURE),
            size=size,
            sha256=sha256,
        )


@dataclass(frozen=True, kw_only=True)
class UpdateReport:
    """Pits to cloud: where the box's update stands (one of UPDATE_STATES)."""

    state: str
    version: str = ""
    done: int | None = None
    total: int | None = None
    message: str = ""
    at_ms: int | None = None

    def payload(self) -> dict[str, Any]:
        p: dict[str, Any] = {"state": self.state, "version": self.version}
        if self.done is not None:
            p["done"] = self.done
        if self.total is not None:
            p["total"] = self.total
        if self.message:
            p["message"] = self.message
        if self.at_ms is not None:
            p["atMs"] = self.at_ms
        return p

    @classmethod
    def parse(cls, p: dict[str, Any]) -> UpdateReport:
        state = _get(p, "state", str, max_len=MAX_FEATURE)
        if state not in UPDATE_STATES:
            raise _bad(f"unknown update state {state[:40]!r}")
        done = _get(p, "done", int, optional=True)
        total = _get(p, "total", int, optional=True)
        for name, value in (("done", done), ("total", total)):
            if value is not None and not 0 <= value <= MAX_BUNDLE_SIZE:
                raise _bad(f"{name} must be between 0 and {MAX_BUNDLE_SIZE}")
        return cls(
            state=state,
            version=_get(p, "version", str, optional=True, max_len=MAX_SW_VERSION) or "",
            done=done,
            total=total,
            message=_get(p, "message", str, optional=True, max_len=MAX_MESSAGE) or "",
            at_ms=_get(p, "atMs", int, optional=True),
        )


Message = (
    CloudHello
    | PitsHello
    | Fetch
    | Response
    | Error
    | Ping
    | Pong
    | Token
    | Offer
    | UpdateReport
    | FpvTrackside
    | PushMessage
)

_TYPE_OF: dict[type, str] = {
    CloudHello: "hello",
    PitsHello: "hello",
    Fetch: "fetch",
    Response: "response",
    Error: "error",
    Ping: "ping",
    Pong: "pong",
    Token: "token",
    Offer: "offer",
    UpdateReport: "update",
    FpvTrackside: "fpvtrackside",
    **TYPES,
}

# What each side may send.
_PARSERS: dict[Sender, dict[str, Any]] = {
    "cloud": {
        "hello": CloudHello,
        "fetch": Fetch,
        "error": Error,
        "ping": Ping,
        "pong": Pong,
        "token": Token,
        "offer": Offer,
        **FROM_CLOUD,
    },
    "pits": {
        "hello": PitsHello,
        "response": Response,
        "error": Error,
        "ping": Ping,
        "pong": Pong,
        "update": UpdateReport,
        "fpvtrackside": FpvTrackside,
        **FROM_PITS,
    },
}


@dataclass(frozen=True)
class Frame:
    """A decoded frame: its envelope and its typed message."""

    id: str
    type: str
    ts: int
    message: Message


def encode(message: Message, *, frame_id: str | None = None, now_ms: int) -> str:
    """Encode a message as one frame; `frame_id` defaults to a fresh id."""
    return ujson.dumps(
        {
            "id": frame_id or new_id(),
            "type": _TYPE_OF[type(message)],
            "ts": now_ms,
            "payload": message.payload(),
        },
        # ASCII out: a lone surrogate a peer sent (in an id, say) is escaped, not unencodable.
        ensure_ascii=True,
        escape_forward_slashes=False,
    )


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# One decoder for the life of the process: json.loads() with a keyword builds a decoder and a
# scanner per call, and the C scanner's reference cycle with its decoder is never collected.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def _strict_loads(data: str | bytes) -> Any:
    """JSON as RFC 8259 has it: no NaN or Infinity, no raw control characters, no `007`.

    The standard library's parser is strict where ujson is lenient; frames are small (a body is
    one base64 string), so the difference in speed does not matter here.
    """
    text = data.decode("utf-8") if isinstance(data, bytes) else data
    return _DECODER.decode(text)


def peek_id(data: str | bytes) -> str | None:
    """The id of a frame that failed to decode, if one can be read, to address the error."""
    try:
        obj = _strict_loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    if isinstance(obj, dict):
        frame_id = obj.get("id")
        if isinstance(frame_id, str) and 0 < len(frame_id) <= MAX_ID_LENGTH:
            return frame_id
    return None


def decode(data: str | bytes, *, sender: Sender) -> Frame:
    """Decode and validate one frame sent by `sender`."""
    try:
        obj = _strict_loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise _bad("frame is not JSON") from None
    if not isinstance(obj, dict):
        raise _bad("frame is not a JSON object")
    frame_id = obj.get("id")
    if not isinstance(frame_id, str) or not 0 < len(frame_id) <= MAX_ID_LENGTH:
        raise _bad("frame id must be a non-empty string of at most 128 characters")
    kind = obj.get("type")
    ts = obj.get("ts")
    payload = obj.get("payload")
    if not isinstance(kind, str):
        raise _bad("frame type must be a string", frame_id)
    if not isinstance(ts, int) or isinstance(ts, bool):
        raise _bad("frame ts must be an integer", frame_id)
    if not isinstance(payload, dict):
        raise _bad("frame payload must be an object", frame_id)
    parser = _PARSERS[sender].get(kind)
    if parser is None:
        raise _bad(f"unexpected frame type {kind[:40]!r} from {sender}", frame_id)
    try:
        message = parser.parse(payload)
    except ProtocolError as exc:
        raise _bad(exc.message, frame_id) from None
    return Frame(frame_id, kind, ts, message)
