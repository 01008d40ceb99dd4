"""Settings declared once, and the flags, environment, file keys and docs made from them.

A setting is declared once, on its config dataclass field, in the manner of Tornado's
`options.define()`: `fetch_timeout: float = setting(8.0, "deadline, seconds", positive_float)`.
From that one declaration come the flag `--fetch-timeout`, the environment variable
`PITLINK_FETCH_TIMEOUT`, the config file key `FETCH_TIMEOUT`, its line in `--help` and its row
in the docs' flag tables. Flags beat the environment, the environment beats the file. Pure:
the environment and the file's contents are passed in.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NoReturn, TypeVar, overload

from wire.paths import Allowlist

ENV_PREFIX = "PITLINK_"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}
_ABOUT = "pitlink.setting"  # the key of a declaration in a dataclass field's metadata
T = TypeVar("T")


class SettingsError(ValueError):
    """A configuration value or file that cannot be used; the message is one plain line."""


class Parser(argparse.ArgumentParser):
    """An argument parser whose refusals are one plain line (SettingsError), not the usage."""

    def error(self, message: str) -> NoReturn:
        raise SettingsError(f"{message} (see {self.prog} --help)")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Setting:
    """One setting: what it means, how its text becomes a value, and its default.

    `help` is one line of Markdown (backticks for literals), shown by `--help` and in the
    docs. `convert` turns one text into a value and raises ValueError saying why it cannot.
    `shown` says the default in words where the value alone would not (`beside the JWKS
    file`); `group` puts the setting in a table and a `--help` section of its own.
    """

    name: str = ""  # the field's name and its default, filled in by settings_of()
    default: object = None
    help: str
    convert: Callable[[str], object] = str
    flag: str = ""  # the flag's name when it is not the field's (`allow` for `allowlist`)
    repeatable: bool = False  # the flag again adds one; a comma-separated list elsewhere
    switch: bool = False  # a flag without a value; yes or no elsewhere
    shown: str = ""
    metavar: str = ""
    group: str = ""

    @property
    def option(self) -> str:
        """`--fetch-timeout`"""
        return "--" + (self.flag or self.name).replace("_", "-")

    @property
    def key(self) -> str:
        """`FETCH_TIMEOUT`, the name in a config file."""
        return (self.flag or self.name).replace("-", "_").upper()

    @property
    def env(self) -> str:
        """`PITLINK_FETCH_TIMEOUT`"""
        return ENV_PREFIX + self.key

    @property
    def default_shown(self) -> str:
        """The default as the docs show it (Markdown)."""
        if self.shown:
            return self.shown
        value = self.default
        if value is dataclasses.MISSING:
            return "(required)"
        if value is None or value == ():
            return "none"
        if isinstance(value, bool):
            return "on" if value else "off"
        if isinstance(value, tuple):
            return ", ".join(f"`{_plain(item)}`" for item in value)
        return f"`{_plain(value)}`"


@overload
def setting(
    default: T,
    help: str,
    convert: Callable[[str], object] = ...,
    *,
    flag: str = ...,
    repeatable: bool = ...,
    switch: bool = ...,
    shown: str = ...,
    metavar: str = ...,
    group: str = ...,
) -> T: ...
@overload
def setting(
    *,
    help: str,
    convert: Callable[[str], object] = ...,
    flag: str = ...,
    repeatable: bool = ...,
    shown: str = ...,
    metavar: str = ...,
    group: str = ...,
) -> Any: ...
def setting(
    default: object = dataclasses.MISSING,
    help: str = "",
    convert: Callable[[str], object] = str,
    **about: Any,
) -> Any:
    """Declare a config dataclass field as a setting (without a default: no field default)."""
    declared = Setting(help=help, convert=convert, **about)
    if default is dataclasses.MISSING:
        return dataclasses.field(metadata={_ABOUT: declared})
    return dataclasses.field(default=default, metadata={_ABOUT: declared})


def settings_of(config: type) -> tuple[Setting, ...]:
    """The settings declared on a config dataclass, in the order of its fields."""
    return tuple(
        dataclasses.replace(f.metadata[_ABOUT], name=f.name, default=f.default)
        for f in dataclasses.fields(config)
        if _ABOUT in f.metadata
    )


def add_flags(parser: argparse.ArgumentParser, settings: Iterable[Setting]) -> None:
    """One flag per setting. Defaults stay out of the parser: resolve() fills them in."""
    groups: dict[str, Any] = {}
    for s in settings:
        target = parser
        if s.group:
            target = groups.setdefault(s.group, parser.add_argument_group(s.group))
        text = f"{s.help} {_default_said(s)}".replace("`", "").replace("%", "%%")
        if s.switch:
            target.add_argument(
                s.option, action="store_true", dest=s.name, default=argparse.SUPPRESS, help=text
            )
            continue
        target.add_argument(
            s.option,
            action="append" if s.repeatable else "store",
            type=_for_argparse(s.convert),
            dest=s.name,
            default=argparse.SUPPRESS,
            metavar=s.metavar or s.key,
            help=text,
        )


def resolve(
    settings: Sequence[Setting],
    parser: argparse.ArgumentParser,
    argv: Sequence[str],
    env: Mapping[str, str],
    file_values: Mapping[str, str] | None = None,
    *,
    ignored: frozenset[str] = frozenset(),
) -> dict[str, Any]:
    """Each setting's value by field name: from a flag, else the environment, else the file,
    else its default (None where the field has none, for the caller to ask for it).

    Every value in the environment and the file is checked, even one a flag overrides, and
    unknown keys in the file are refused, so that a typo is not silently ignored. A
    repeatable flag replaces the environment's list; it never adds to it (on the pits that
    would widen the allowlist behind the operator's back).
    """
    file_values = dict(file_values or {})
    unknown = sorted(set(file_values) - {s.key for s in settings} - ignored)
    if unknown:
        raise SettingsError(f"unknown setting {unknown[0]} in the config file")
    given = vars(parser.parse_args(list(argv)))
    values: dict[str, Any] = {}
    for s in settings:
        raw, origin = env.get(s.env), s.env
        if raw is None and s.key in file_values:
            raw, origin = file_values[s.key], s.key
        value = s.default if s.default is not dataclasses.MISSING else None
        if raw is not None:
            value = _from_text(s, origin, raw)
        if s.name in given:
            value = tuple(given[s.name]) if s.repeatable else given[s.name]
        if s.repeatable and not value:
            value = s.default if s.default is not dataclasses.MISSING else ()
        values[s.name] = value
    return values


def lenient(
    settings: Sequence[Setting], names: Iterable[str], argv: Sequence[str], env: Mapping[str, str]
) -> dict[str, Any]:
    """The named settings from a flag or the environment where they can be read, else their
    defaults: for showing a settings error while the settings themselves are broken."""
    chosen = [s for s in settings if s.name in set(names)]
    parser = Parser(add_help=False)
    for s in chosen:
        parser.add_argument(s.option, dest=s.name)
    try:
        given = vars(parser.parse_known_args(list(argv))[0])
    except SettingsError:
        given = {}
    values: dict[str, Any] = {}
    for s in chosen:
        values[s.name] = s.default
        raw = given.get(s.name) or env.get(s.env)
        if raw and raw.strip():
            try:
                values[s.name] = s.convert(raw)
            except (ValueError, TypeError, argparse.ArgumentTypeError):
                pass
    return values


def flag_table(settings: Iterable[Setting], group: str = "") -> str:
    """The docs' Markdown table of the settings in `group` (`""`: those in none)."""
    rows = ["| flag | default | meaning |", "|---|---|---|"]
    for s in settings:
        if s.group == group:
            flag = f"{s.option} {s.metavar}" if s.metavar else s.option
            rows.append(f"| `{flag}` | {s.default_shown} | {s.help} |")
    return "\n".join(rows) + "\n"


_TABLE = re.compile(r"(<!-- flags: ([^;>]+?)(?:;[^>]*)? -->\n)(.*?)(<!-- /flags -->)", re.DOTALL)


def fill_tables(text: str, tables: Mapping[str, str]) -> str:
    """Put each table between its markers: `<!-- flags: NAME; ... -->` and `<!-- /flags -->`."""

    def fill(match: re.Match[str]) -> str:
        name = match.group(2).strip()
        if name not in tables:
            raise SettingsError(f"no flag table named {name!r} (known: {', '.join(tables)})")
        return f"{match.group(1)}\n{tables[name]}\n{match.group(4)}"

    return _TABLE.sub(fill, text)


# -- converters: one text to one value; a ValueError says why in a few words ------------------


def _number(kind: Callable[[str], T], text: str, what: str) -> T:
    try:
        return kind(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is not {what}") from None


def positive_int(text: str) -> int:
    """A whole number of at least 1: counts and sizes."""
    value = _number(int, text, "a whole number")
    if value < 1:
        raise ValueError(f"{text!r}: must be at least 1")
    return value


def non_negative_int(text: str) -> int:
    """A whole number of at least 0."""
    value = _number(int, text, "a whole number")
    if value < 0:
        raise ValueError(f"{text!r}: must not be negative")
    return value


def tcp_port(text: str) -> int:
    """A TCP port, 0 (any free port) to 65535."""
    value = _number(int, text, "a port number")
    if not 0 <= value <= 65535:
        raise ValueError(f"{text!r}: a port is 0 to 65535")
    return value


def positive_float(text: str) -> float:
    """A number above 0: timeouts, intervals, bursts."""
    value = _number(float, text, "a number")
    if not value > 0 or value == float("inf"):
        raise ValueError(f"{text!r}: must be a number above 0")
    return value


def non_negative_float(text: str) -> float:
    """A number of at least 0 (0 meaning at once, or not at all)."""
    value = _number(float, text, "a number")
    if not value >= 0 or value == float("inf"):
        raise ValueError(f"{text!r}: must not be negative")
    return value


def rate(text: str) -> float | None:
    """A number of at least 0 where 0 turns the feature off (None)."""
    value = _number(float, text, "a number")
    if not value >= 0 or value == float("inf"):
        raise ValueError(f"{text!r}: must not be negative (0 turns it off)")
    return value or None


def path_pattern(text: str) -> str:
    """An allowlist pattern such as `/events/**`."""
    Allowlist([text])  # a bad pattern fails now, in its own words
    return text


def text_or_none(text: str) -> str | None:
    """Text where an empty value means not set."""
    return text or None


def log_level_name(text: str) -> str:
    """A log level, in any case."""
    level = text.strip().upper()
    if level not in LOG_LEVELS:
        raise ValueError(f"{text!r} is not a log level: use {', '.join(LOG_LEVELS)}")
    return level


def parse_bool(key: str, value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise SettingsError(f"{key}={value!r} is not a yes/no value (use true or false)")


def parse_conf(text: str, *, source: str = "config file") -> dict[str, str]:
    """Parse `KEY=VALUE` lines; `#` starts a comment line; blank lines are ignored."""
    values: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if "=" not in stripped:
            raise SettingsError(
                f"{source} line {number}: expected KEY=VALUE, got {stripped[:60]!r}"
            )
        key, value = stripped.split("=", 1)
        key = key.strip().upper().replace("-", "_")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        if not key.replace("_", "").isalnum():
            raise SettingsError(f"{source} line {number}: {key[:40]!r} is not a setting name")
        values[key] = value
    return values


def _from_text(s: Setting, origin: str, raw: str) -> object:
    if s.switch:
        return parse_bool(origin, raw)
    if s.repeatable:
        return tuple(_convert(s, origin, item.strip()) for item in raw.split(",") if item.strip())
    return _convert(s, origin, raw)


def _convert(s: Setting, origin: str, raw: str) -> object:
    try:
        return s.convert(raw)
    except (TypeError, ValueError, argparse.ArgumentTypeError) as exc:
        raise SettingsError(f"{origin}={raw!r} is not valid: {exc}") from None


def _for_argparse(convert: Callable[[str], object]) -> Callable[[str], object]:
    """argparse words a ValueError as `invalid <function name> value`; ours says why."""

    def checked(text: str) -> object:
        try:
            return convert(text)
        except (TypeError, ValueError) as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return checked


def _default_said(s: Setting) -> str:
    """`(default 8)`, `(default: beside the JWKS file)` or `(required)`, for --help."""
    shown = s.default_shown
    if shown.startswith("("):
        return shown
    return f"(default: {shown})" if s.shown else f"(default {shown})"


def _plain(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
