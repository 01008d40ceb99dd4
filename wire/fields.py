"""What every frame's payload is made of: the bounds on each field, and the checks that read
a field or refuse the frame (ProtocolError(BAD_REQUEST), nothing else).

wire.messages and wire.push build their payloads from these, so that one bound means the same
on every frame that carries the field.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

from wire.errors import ErrorCode, ProtocolError

# Bounds on what a peer may send: a field past its bound makes the frame malformed. The relay
# shows hello fields to every admin tab, so an 8 MiB `swVersion` must never get that far.
MAX_PITS_ID = 64
MAX_SW_VERSION = 64
MAX_FEATURES = 32
MAX_FEATURE = 64
MAX_LIMITS = 32
MAX_PATH = 2048
MAX_ETAG = 256
MAX_CONTENT_TYPE = 200
MAX_MESSAGE = 1024
MAX_DETAILS = 16
MAX_TOKEN = 8192
MAX_SLOT = 16
MAX_BUNDLE_ID = 64
MAX_BUNDLE_SIZE = 4 * 1024**3  # a whole root filesystem, compressed; far above any real one
MAX_SERVER = 64  # FPVTrackside's Server header, as the agent saw it
MAX_UPSTREAM_VERSION = 32
MAX_TRAITS = 8

# The statuses a `response` may carry: 200, 304 to a conditional fetch, and the origin's own
# errors. Anything else (1xx, 204, a redirect) is not something the relay can serve as data.
RESPONSE_STATUSES = frozenset({200, 304, *range(400, 600)})

# RFC 9110 media type: type "/" subtype, then parameters; tokens and quoted strings only.
TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
MEDIA_TYPE = re.compile(
    rf"{TOKEN}/{TOKEN}(?:[ \t]*;[ \t]*{TOKEN}=(?:{TOKEN}|\"[^\"\\\x00-\x1f\x7f]*\"))*"
)
ETAG = re.compile(r'(?:W/)?"[\x21\x23-\x7e]*"')
PRINTABLE = re.compile(r"[\x20-\x7e]*")


def bad(message: str, frame_id: str | None = None) -> ProtocolError:
    details = {"id": frame_id} if frame_id else None
    return ProtocolError(ErrorCode.BAD_REQUEST, message, details)


def get(
    p: dict[str, Any],
    key: str,
    kind: type | tuple[type, ...],
    *,
    optional: bool = False,
    max_len: int | None = None,
) -> Any:
    if key not in p or p[key] is None:
        if optional:
            return None
        raise bad(f"payload lacks {key}")
    value = p[key]
    if (isinstance(value, bool) and kind is not bool) or not isinstance(value, kind):
        raise bad(f"payload field {key} has the wrong type")
    if max_len is not None and isinstance(value, str | list | dict) and len(value) > max_len:
        raise bad(f"payload field {key} is longer than {max_len}")
    return value


def scalar(value: Any) -> bool:
    return isinstance(value, bool | int | float) or (
        isinstance(value, str) and len(value) <= MAX_FEATURE
    )


def features_of(p: dict[str, Any], key: str) -> tuple[str, ...]:
    features = get(p, key, list, optional=True, max_len=MAX_FEATURES) or []
    if not all(isinstance(f, str) and len(f) <= MAX_FEATURE for f in features):
        raise bad(f"{key} must be strings of at most {MAX_FEATURE} characters")
    return tuple(features)


def printable(p: dict[str, Any], key: str, max_len: int) -> str | None:
    value = get(p, key, str, optional=True, max_len=max_len)
    if value is not None and not PRINTABLE.fullmatch(value):
        raise bad(f"payload field {key} must be printable ASCII")
    return value  # type: ignore[no-any-return]


def reply_parts(p: dict[str, Any]) -> tuple[int, str | None, str | None, bytes | None]:
    """(status, ETag, Content-Type, body) of a reply's payload, each checked against its bound:
    a `response` to a fetch, or a `change` the box pushes."""
    status = get(p, "status", int)
    if not 100 <= status <= 599:
        raise bad("status out of range")
    if status not in RESPONSE_STATUSES:
        raise bad(f"status {status} is not one a response may carry")
    headers = get(p, "headers", dict, optional=True, max_len=8) or {}
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items()):
        raise bad("headers must map strings to strings")
    lowered = {k.lower(): v for k, v in headers.items()}
    etag, content_type = lowered.get("etag"), lowered.get("content-type")
    if etag is not None and (len(etag) > MAX_ETAG or not ETAG.fullmatch(etag)):
        raise bad("ETag is malformed")
    if content_type is not None and (
        len(content_type) > MAX_CONTENT_TYPE or not MEDIA_TYPE.fullmatch(content_type)
    ):
        raise bad("Content-Type is malformed")
    body_b64 = get(p, "bodyB64", str, optional=True)
    body = None
    if body_b64 is not None:
        try:
            body = base64.b64decode(body_b64, validate=True)
        except (binascii.Error, ValueError):
            raise bad("bodyB64 is not base64") from None
    return status, etag, content_type, body


def reply_payload(
    status: int, etag: str | None, content_type: str | None, body: bytes | None
) -> dict[str, Any]:
    """The payload reply_parts reads."""
    headers: dict[str, str] = {}
    if etag is not None:
        headers["ETag"] = etag
    if content_type is not None:
        headers["Content-Type"] = content_type
    p: dict[str, Any] = {"status": status, "headers": headers}
    if body is not None:
        p["bodyB64"] = base64.b64encode(body).decode("ascii")
    return p
