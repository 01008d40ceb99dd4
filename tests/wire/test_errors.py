"""Error codes, close codes, HTTP statuses and the exception tree of the wire protocol."""

from __future__ import annotations

from pathlib import Path

import pytest

import wire
from wire.errors import (
    HTTP_STATUS,
    STALE_OK,
    CloseCode,
    ContentError,
    ErrorCode,
    PathError,
    ProtocolError,
    WireError,
    is_retryable,
    retry_after,
)

PROTOCOL_PAGE = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"

# The codes in docs/protocol.md, "Errors".
PROTOCOL_CODES = {
    "UNAUTHORIZED",
    "DENIED",
    "BAD_REQUEST",
    "BUSY",
    "TOO_LARGE",
    "TIMEOUT",
    "ORIGIN_UNREACHABLE",
    "BAD_CONTENT",
    "UNAVAILABLE",
    "INTERNAL",
}


def test_error_codes_are_exactly_the_designed_ones() -> None:
    assert {code.value for code in ErrorCode} == PROTOCOL_CODES


def _table(section: str) -> dict[str, str]:
    """First cell -> last cell of the table under `## <section>` in docs/protocol.md."""
    text = PROTOCOL_PAGE.read_text(encoding="utf-8").split(f"## {section}\n", 1)[1]
    rows = {}
    for line in text.split("\n## ", 1)[0].splitlines():
        cells = [c.strip().strip("`") for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) >= 2 and not set(cells[0]) <= set("-"):
            rows[cells[0]] = cells[-1]
    return rows


def test_the_protocol_page_names_every_error_code_with_its_status() -> None:
    table = _table("Errors")
    assert set(table) - {"code"} == PROTOCOL_CODES
    for code, status in HTTP_STATUS.items():
        assert table[str(code)].startswith(str(status)), code


def test_the_protocol_page_names_every_close_code() -> None:
    table = _table("Close codes")
    assert {int(c) for c in table if c.isdigit()} == {int(c) for c in CloseCode}


@pytest.mark.parametrize("code", list(ErrorCode))
def test_error_code_travels_as_its_name(code: ErrorCode) -> None:
    # The value is what goes on the wire and into the public JSON error body.
    assert code.value == code.name
    assert str(code) == code.name
    assert f"{code}" == code.name
    assert ErrorCode(code.name) is code


def test_http_status_covers_every_error_code() -> None:
    assert set(HTTP_STATUS) == set(ErrorCode)


@pytest.mark.parametrize(
    ("code", "status"),
    [
        (ErrorCode.UNAUTHORIZED, 401),
        (ErrorCode.DENIED, 403),
        (ErrorCode.BAD_REQUEST, 400),
        (ErrorCode.BUSY, 503),
        (ErrorCode.TOO_LARGE, 502),
        (ErrorCode.TIMEOUT, 504),
        (ErrorCode.ORIGIN_UNREACHABLE, 502),
        (ErrorCode.BAD_CONTENT, 502),
        (ErrorCode.UNAVAILABLE, 503),
        (ErrorCode.INTERNAL, 500),
    ],
)
def test_http_status_of_each_code(code: ErrorCode, status: int) -> None:
    assert HTTP_STATUS[code] == status


@pytest.mark.parametrize(
    ("member", "value"),
    [
        (CloseCode.NORMAL, 1000),
        (CloseCode.GOING_AWAY, 1001),
        (CloseCode.POLICY, 1008),
        (CloseCode.RECONNECT, 4000),
        (CloseCode.TOKEN_EXPIRED, 4001),
        (CloseCode.VERSION_REFUSED, 4002),
        (CloseCode.REPLACED, 4003),
    ],
)
def test_close_code_values(member: CloseCode, value: int) -> None:
    assert member == value
    assert int(member) == value
    assert CloseCode(value) is member


def test_close_codes_are_exactly_the_designed_ones() -> None:
    assert sorted(int(c) for c in CloseCode) == [1000, 1001, 1008, 4000, 4001, 4002, 4003]


def test_protocol_version_exports() -> None:
    assert wire.PROTOCOL_VERSION == 1
    assert wire.PROTOCOL_VERSION in wire.SUPPORTED_VERSIONS
    assert wire.ProtocolError is ProtocolError
    assert wire.ErrorCode is ErrorCode
    assert wire.CloseCode is CloseCode
    assert wire.WireError is WireError


def test_exception_tree() -> None:
    assert issubclass(WireError, Exception)
    assert issubclass(ProtocolError, WireError)
    assert issubclass(PathError, ProtocolError)
    assert issubclass(ContentError, ProtocolError)
    assert not issubclass(PathError, ContentError)
    assert not issubclass(ContentError, PathError)


def test_protocol_error_carries_code_message_details() -> None:
    exc = ProtocolError(ErrorCode.TIMEOUT, "origin took too long", {"id": "abc"})
    assert exc.code is ErrorCode.TIMEOUT
    assert exc.message == "origin took too long"
    assert exc.details == {"id": "abc"}
    assert str(exc) == "TIMEOUT: origin took too long"
    with pytest.raises(WireError):
        raise exc


def test_protocol_error_payload_with_details() -> None:
    exc = ProtocolError(ErrorCode.DENIED, "path not allowed", {"path": "/etc/passwd"})
    payload = exc.payload()
    assert payload == {
        "code": "DENIED",
        "message": "path not allowed",
        "details": {"path": "/etc/passwd"},
    }
    # A plain str, not the enum, so any JSON encoder writes it.
    assert type(payload["code"]) is str


@pytest.mark.parametrize("details", [None, {}])
def test_protocol_error_payload_omits_empty_details(details: dict[str, str] | None) -> None:
    payload = ProtocolError(ErrorCode.BUSY, "eight in flight", details).payload()
    assert payload == {"code": "BUSY", "message": "eight in flight"}
    assert "details" not in payload


def test_content_error_is_bad_content() -> None:
    exc = ContentError("body is not JSON")
    assert exc.code is ErrorCode.BAD_CONTENT
    assert exc.message == "body is not JSON"
    assert exc.details is None
    assert exc.payload() == {"code": "BAD_CONTENT", "message": "body is not JSON"}


def test_path_error_keeps_its_code() -> None:
    exc = PathError(ErrorCode.DENIED, "nope", {"path": "/x"})
    assert exc.code is ErrorCode.DENIED
    assert exc.payload()["details"] == {"path": "/x"}


RETRYABLE = {
    ErrorCode.BUSY: True,
    ErrorCode.TIMEOUT: True,
    ErrorCode.ORIGIN_UNREACHABLE: True,
    ErrorCode.UNAVAILABLE: True,
    # A half-written Race.json decodes fine a moment later.
    ErrorCode.BAD_CONTENT: True,
    ErrorCode.UNAUTHORIZED: False,
    ErrorCode.DENIED: False,
    ErrorCode.BAD_REQUEST: False,
    ErrorCode.TOO_LARGE: False,
    ErrorCode.INTERNAL: False,
}


def test_retryable_table_covers_every_code() -> None:
    assert set(RETRYABLE) == set(ErrorCode)


@pytest.mark.parametrize(("code", "expected"), sorted(RETRYABLE.items()))
def test_is_retryable(code: ErrorCode, expected: bool) -> None:
    assert is_retryable(code) is expected


@pytest.mark.parametrize(
    "code",
    [ErrorCode.BUSY, ErrorCode.TIMEOUT, ErrorCode.BAD_CONTENT, ErrorCode.UNAVAILABLE],
)
def test_stale_copy_may_stand_in_when_the_pits_cannot_answer(code: ErrorCode) -> None:
    # docs/protocol.md, "Errors": disconnected, timeout, BAD_CONTENT, BUSY serve a cached copy if one exists.
    assert code in STALE_OK


@pytest.mark.parametrize("code", [ErrorCode.DENIED, ErrorCode.BAD_REQUEST, ErrorCode.UNAUTHORIZED])
def test_no_stale_copy_for_refusals(code: ErrorCode) -> None:
    # A path the pits refuses must not be served from an old copy.
    assert code not in STALE_OK


def test_stale_ok_holds_only_error_codes() -> None:
    assert STALE_OK <= set(ErrorCode)


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        (0, 1),
        (0.2, 1),
        (-5, 1),
        (1.5, 2),
        (30, 30),
        (3600, 3600),
        (86400 * 365, 3600),
        (1e400, 3600),  # what JSON's 1e400 decodes to
        (float("-inf"), 1),
        (float("nan"), None),
        ("5", None),
        (True, None),
        (None, None),
    ],
)
def test_retry_after_is_clamped(seconds: object, expected: int | None) -> None:
    assert retry_after(seconds) == expected


def test_retry_after_default_for_what_is_not_a_number() -> None:
    assert retry_after("soon", default=5) == 5
