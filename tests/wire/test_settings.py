"""wire.settings: one declaration per setting, and what is made from it.

A small config of its own stands in for the relay's and the agent's, so that each rule of the
machinery (names, precedence, lists, switches, refusals, help, tables) is tested once here;
tests/cloud/test_config.py and tests/pits_appliance/test_agent_config.py test the real ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from wire.settings import (
    Parser,
    SettingsError,
    add_flags,
    fill_tables,
    flag_table,
    lenient,
    log_level_name,
    non_negative_float,
    non_negative_int,
    path_pattern,
    positive_float,
    positive_int,
    rate,
    resolve,
    setting,
    settings_of,
    tcp_port,
    text_or_none,
)


@dataclass(frozen=True, kw_only=True)
class Demo:
    """A config as the real ones are written."""

    home: Path = setting(help="where it lives", convert=Path)  # noqa: RUF009
    port: int = setting(8080, "port to listen on", tcp_port)
    timeout: float = setting(2.5, "deadline, seconds", positive_float)
    rate: float | None = setting(10.0, "a second (0: no limit)", rate)
    allowlist: tuple[str, ...] = setting(
        ("/",), "paths served; repeatable", path_pattern, flag="allow", repeatable=True
    )
    quiet: bool = setting(False, "say less", switch=True, shown="off; on in the image")
    label: str | None = setting(None, "a name", text_or_none, shown="generated", group="extra")
    derived: int = 3  # not a setting: no flag, no variable, no key


SETTINGS = settings_of(Demo)
BY_NAME = {s.name: s for s in SETTINGS}


def parse(
    argv: list[str], env: dict[str, str] | None = None, file: dict[str, str] | None = None
) -> dict[str, Any]:
    parser = Parser(prog="demo")
    add_flags(parser, SETTINGS)
    return resolve(SETTINGS, parser, argv, env or {}, file, ignored=frozenset({"WIFI_SSID"}))


# -- the declaration --------------------------------------------------------------------------


def test_a_declaration_is_the_field_and_its_names() -> None:
    assert [s.name for s in SETTINGS] == [
        "home",
        "port",
        "timeout",
        "rate",
        "allowlist",
        "quiet",
        "label",
    ]
    timeout = BY_NAME["timeout"]
    assert (timeout.option, timeout.env, timeout.key) == ("--timeout", "PITLINK_TIMEOUT", "TIMEOUT")
    assert timeout.default == 2.5
    allow = BY_NAME["allowlist"]
    assert (allow.option, allow.env, allow.key) == ("--allow", "PITLINK_ALLOW", "ALLOW")
    assert Demo(home=Path("/h")).timeout == 2.5  # the dataclass keeps its defaults
    with pytest.raises(TypeError, match="home"):
        Demo()  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ("home", "(required)"),
        ("port", "`8080`"),
        ("timeout", "`2.5`"),
        ("rate", "`10`"),
        ("allowlist", "`/`"),
        ("quiet", "off; on in the image"),
        ("label", "generated"),
    ],
)
def test_the_default_as_the_docs_show_it(name: str, shown: str) -> None:
    assert BY_NAME[name].default_shown == shown


# -- flags, environment, file -----------------------------------------------------------------


def test_defaults_and_a_missing_required_setting() -> None:
    values = parse([])
    assert values == {
        "home": None,  # for the caller to ask for, in its own words
        "port": 8080,
        "timeout": 2.5,
        "rate": 10.0,
        "allowlist": ("/",),
        "quiet": False,
        "label": None,
    }


@pytest.mark.parametrize(
    ("argv", "env", "file", "expected"),
    [
        (["--timeout", "1"], {"PITLINK_TIMEOUT": "2"}, {"TIMEOUT": "3"}, 1.0),
        ([], {"PITLINK_TIMEOUT": "2"}, {"TIMEOUT": "3"}, 2.0),
        ([], {}, {"TIMEOUT": "3"}, 3.0),
        ([], {"TIMEOUT": "4", "PITLINK_OTHER": "5"}, {}, 2.5),
    ],
    ids=["flag-wins", "env-beats-file", "file-alone", "other-variables-ignored"],
)
def test_flags_beat_environment_beats_file(
    argv: list[str], env: dict[str, str], file: dict[str, str], expected: float
) -> None:
    assert parse(argv, env, file)["timeout"] == expected


def test_a_repeatable_flag_replaces_the_environment_list() -> None:
    env = {"PITLINK_ALLOW": "/**, /events/**,"}
    assert parse([], env)["allowlist"] == ("/**", "/events/**")
    assert parse(["--allow", "/a", "--allow", "/b/*"], env)["allowlist"] == ("/a", "/b/*")
    assert parse([], {"PITLINK_ALLOW": " , "})["allowlist"] == ("/",)  # empty: the default


@pytest.mark.parametrize(("text", "expected"), [("yes", True), ("0", False), ("On", True)])
def test_a_switch_is_yes_or_no_elsewhere(text: str, expected: bool) -> None:
    assert parse([], {"PITLINK_QUIET": text})["quiet"] is expected
    assert parse([], {}, {"QUIET": text})["quiet"] is expected
    assert parse(["--quiet"], {"PITLINK_QUIET": "no"})["quiet"] is True


def test_a_switch_that_is_not_yes_or_no_is_refused() -> None:
    with pytest.raises(SettingsError, match="QUIET='maybe' is not a yes/no value"):
        parse([], {}, {"QUIET": "maybe"})


def test_unknown_keys_in_the_file_are_refused_except_those_ignored() -> None:
    assert parse([], {}, {"WIFI_SSID": "Pits", "TIMEOUT": "1"})["timeout"] == 1.0
    with pytest.raises(SettingsError, match="unknown setting TIMOUT in the config file"):
        parse([], {}, {"TIMOUT": "1"})
    with pytest.raises(SettingsError, match="DERIVED"):
        parse([], {}, {"DERIVED": "1"})  # a field that is not a setting has no key


@pytest.mark.parametrize(
    ("argv", "env", "file", "words"),
    [
        (["--timeout", "0"], {}, {}, "argument --timeout: '0': must be a number above 0"),
        (["--port", "http"], {}, {}, "argument --port: 'http' is not a port number"),
        ([], {"PITLINK_PORT": "70000"}, {}, "PITLINK_PORT='70000' is not valid: "),
        ([], {}, {"RATE": "-1"}, "RATE='-1' is not valid: '-1': must not be negative"),
        ([], {"PITLINK_ALLOW": "/a,events"}, {}, "PITLINK_ALLOW='events' is not valid: "),
        (["--allow", "events"], {}, {}, "argument --allow: allowlist pattern must start with /"),
        (["--derived", "1"], {}, {}, "unrecognized arguments: --derived 1"),
    ],
)
def test_a_refusal_is_one_plain_line_naming_the_flag_variable_or_key(
    argv: list[str], env: dict[str, str], file: dict[str, str], words: str
) -> None:
    with pytest.raises(SettingsError) as caught:
        parse(argv, env, file)
    message = str(caught.value)
    assert words in message
    assert "\n" not in message and "usage:" not in message


def test_a_bad_value_is_refused_even_where_a_flag_overrides_it() -> None:
    with pytest.raises(SettingsError, match="PITLINK_TIMEOUT"):
        parse(["--timeout", "1"], {"PITLINK_TIMEOUT": "soon"})


# -- converters -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("convert", "good", "bad"),
    [
        (positive_int, {"1": 1, " 12 ": 12}, ["0", "-3", "1.5", "x", ""]),
        (non_negative_int, {"0": 0, "64": 64}, ["-1", "x"]),
        (tcp_port, {"0": 0, "65535": 65535}, ["-1", "65536", "http"]),
        (positive_float, {"0.25": 0.25, "8": 8.0}, ["0", "-1", "nan", "inf", "soon"]),
        (non_negative_float, {"0": 0.0, "1.5": 1.5}, ["-0.1", "nan", "x"]),
        (rate, {"0": None, "2.5": 2.5}, ["-1", "nan", "x"]),
        (log_level_name, {"debug": "DEBUG", " Warning ": "WARNING"}, ["LOUD", "trace"]),
        (path_pattern, {"/events/**": "/events/**"}, ["events/**"]),
        (text_or_none, {"": None, "club-7": "club-7"}, []),
    ],
)
def test_converters(convert: Any, good: dict[str, object], bad: list[str]) -> None:
    for text, value in good.items():
        assert convert(text) == value
    for text in bad:
        with pytest.raises(ValueError) as caught:
            convert(text)
        assert "\n" not in str(caught.value)


def test_a_log_level_refusal_says_what_it_accepts() -> None:
    with pytest.raises(ValueError, match="use DEBUG, INFO, WARNING, ERROR"):
        log_level_name("loud")


# -- help, tables, lenient reading ------------------------------------------------------------


def test_help_lists_every_flag_with_its_default() -> None:
    parser = Parser(prog="demo")
    add_flags(parser, SETTINGS)
    text = " ".join(parser.format_help().split())
    assert "--home HOME where it lives (required)" in text
    assert "--port PORT port to listen on (default 8080)" in text
    assert "--allow ALLOW paths served; repeatable (default /)" in text
    assert "--quiet say less (default: off; on in the image)" in text
    assert "extra: --label LABEL a name (default: generated)" in text  # a section of its own


def test_flag_table_by_group() -> None:
    assert flag_table(SETTINGS, "extra") == (
        "| flag | default | meaning |\n|---|---|---|\n| `--label` | generated | a name |\n"
    )
    main = flag_table(SETTINGS).splitlines()
    assert main[2] == "| `--home` | (required) | where it lives |"
    assert main[3] == "| `--port` | `8080` | port to listen on |"
    assert len(main) == 2 + 6


def test_fill_tables_replaces_only_between_the_markers() -> None:
    page = (
        "# Settings\n\n<!-- flags: demo; made by a command -->\n| old |\n<!-- /flags -->\n\n"
        "Text after.\n"
    )
    filled = fill_tables(page, {"demo": "| new |\n"})
    assert filled == (
        "# Settings\n\n<!-- flags: demo; made by a command -->\n\n| new |\n\n<!-- /flags -->\n\n"
        "Text after.\n"
    )
    assert fill_tables(filled, {"demo": "| new |\n"}) == filled
    with pytest.raises(SettingsError, match="no flag table named 'demo'"):
        fill_tables(page, {"other": ""})


def test_lenient_reads_what_it_can_and_defaults_the_rest() -> None:
    names = ("port", "timeout", "label")
    assert lenient(SETTINGS, names, [], {}) == {"port": 8080, "timeout": 2.5, "label": None}
    got = lenient(
        SETTINGS,
        names,
        ["--port", "99999", "--bogus", "--timeout", "1"],
        {"PITLINK_PORT": "81", "PITLINK_LABEL": "box"},
    )
    assert got == {"port": 8080, "timeout": 1.0, "label": "box"}
    assert lenient(SETTINGS, names, ["--port"], {"PITLINK_TIMEOUT": "3"})["timeout"] == 3.0
