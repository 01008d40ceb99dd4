"""One JSON object a line for every log record, with secrets masked.

Both programs log through this formatter so that one grep (for a request id, say) follows a
request across the relay and the agent. Pure: it formats records and touches no I/O itself.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any

import ujson

# Attributes every LogRecord has; anything else on a record came in through `extra=`.
_STANDARD = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}

_SECRET_KEYS = re.compile(r"(authorization|token|secret|password|passphrase|jwk|key)$", re.I)
_BEARER = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+")
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*")
MASK = "***"


def mask_text(text: str) -> str:
    """Mask bearer credentials and anything shaped like a JWT inside free text."""
    return _JWT.sub(MASK, _BEARER.sub(r"\1" + MASK, text))


def _mask_value(key: str, value: Any) -> Any:
    if _SECRET_KEYS.search(key) and value is not None:
        return MASK
    if isinstance(value, str):
        return mask_text(value)
    return value


class JsonFormatter(logging.Formatter):
    """Format a record as `{"ts", "level", "logger", "event", ...fields}` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "event": mask_text(record.getMessage()),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = _mask_value(key, value)
        if record.exc_info:
            out["exc"] = mask_text(self.formatException(record.exc_info))
        return ujson.dumps(out, ensure_ascii=False, escape_forward_slashes=False, default=str)


def setup(level: str = "INFO") -> None:
    """Send every log record to stderr as JSON at `level`."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Tornado's access log says what our audit line says, without the pits id.
    logging.getLogger("tornado.access").setLevel(logging.WARNING)
