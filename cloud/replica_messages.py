"""What replicas say to each other through Redis, typed as `wire.messages` types frames.

Replicas trust each other (they share a key set and a Redis), but a message is still checked
as it is decoded: a malformed one is None, never an exception in the listener. Decoding is
wire.untrusted.load_json, bounded in depth; not in size: Redis has delivered the message
whole by then, and a reply carries a body as large as the relay's --max-body-bytes allows.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import asdict, dataclass
from typing import Any, Literal

import ujson

from wire import ErrorCode
from wire.errors import DamagedError
from wire.untrusted import load_json

Action = Literal["reconnect", "pause", "resume"]
EPOCH = re.compile(r"[0-9a-f]{1,16}")  # a feed's epoch (cloud.feed)


@dataclass(frozen=True, kw_only=True)
class FetchRequest:
    """A replica without the pits connection asks the one that holds it."""

    id: str
    sender: str  # the asking replica's node id
    pits: str
    path: str
    if_none_match: str | None
    timeout: float


@dataclass(frozen=True, kw_only=True)
class FetchReply:
    """The holder's answer: a body (None: unchanged from the ETag asked with) or an error."""

    id: str
    status: int = 0
    etag: str | None = None
    body: bytes | None = None
    age: float = 0.0
    error: ErrorCode | None = None
    message: str = ""
    retry_after: float | None = None  # set when the holder's own rate limit refused


@dataclass(frozen=True, kw_only=True)
class Takeover:
    """A replica took a pits' connection: the others let theirs go (4003)."""

    pits: str
    node: str


@dataclass(frozen=True, kw_only=True)
class AdminAction:
    """An admin acted on a pits held by another replica."""

    action: Action
    pits: str
    who: str


@dataclass(frozen=True, kw_only=True)
class ActiveChoice:
    """The active pits, as adopted or chosen on one replica, for all."""

    pits: str | None
    how: str | None


@dataclass(frozen=True, kw_only=True)
class FeedEvent:
    """An event of a pits' live feed, numbered by the replica holding the box (cloud.feed)."""

    node: str
    pits: str
    epoch: str
    n: int
    kind: str
    data: dict[str, Any]


ReplicaMessage = FetchRequest | FetchReply | Takeover | AdminAction | ActiveChoice | FeedEvent

_KINDS: dict[str, type[ReplicaMessage]] = {
    "fetch": FetchRequest,
    "reply": FetchReply,
    "takeover": Takeover,
    "admin": AdminAction,
    "active": ActiveChoice,
    "feed": FeedEvent,
}
_KIND_OF = {cls: kind for kind, cls in _KINDS.items()}


def encode(message: ReplicaMessage) -> str:
    fields: dict[str, Any] = asdict(message)
    if isinstance(message, FetchReply):
        fields["body"] = None if message.body is None else base64.b64encode(message.body).decode()
        fields["error"] = None if message.error is None else str(message.error)
    return ujson.dumps({"t": _KIND_OF[type(message)], **fields})


def decode(data: str | bytes) -> ReplicaMessage | None:
    """The message, or None when it is not one (a replica of another version, say)."""
    try:
        raw = load_json(data, limit=len(data))
        fields = {k: v for k, v in raw.items() if k != "t"}
        cls = _KINDS[raw["t"]]
        if cls is FetchReply:
            body = fields.get("body")
            fields["body"] = None if body is None else base64.b64decode(body, validate=True)
            error = fields.get("error")
            fields["error"] = None if error is None else _code(error)
        message = cls(**fields)
    except (DamagedError, ValueError, TypeError, KeyError, AttributeError, binascii.Error):
        return None
    return message if _well_typed(message) else None


def _code(value: object) -> ErrorCode:
    try:
        return ErrorCode(str(value))
    except ValueError:
        return ErrorCode.INTERNAL


def _well_typed(message: ReplicaMessage) -> bool:
    if isinstance(message, FetchRequest):
        return all(
            isinstance(v, str) for v in (message.id, message.sender, message.pits, message.path)
        ) and isinstance(message.timeout, int | float)
    if isinstance(message, FetchReply):
        return isinstance(message.id, str) and isinstance(message.status, int)
    if isinstance(message, Takeover):
        return isinstance(message.pits, str) and isinstance(message.node, str)
    if isinstance(message, FeedEvent):
        return (
            all(isinstance(v, str) for v in (message.node, message.pits, message.kind))
            and isinstance(message.epoch, str)
            and EPOCH.fullmatch(message.epoch) is not None
            and isinstance(message.n, int)
            and not isinstance(message.n, bool)
            and 0 <= message.n < 10**18
            and isinstance(message.data, dict)
        )
    if isinstance(message, AdminAction):
        return message.action in ("reconnect", "pause", "resume") and isinstance(message.pits, str)
    return message.pits is None or isinstance(message.pits, str)
