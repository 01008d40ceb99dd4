"""How flags, environment variables and a KEY=VALUE file combine into settings.

Every flag `--some-flag` of a long-running command also reads `PITLINK_SOME_FLAG` from the
environment and `SOME_FLAG` from a config file. Flags beat environment, environment beats the
file. Pure: the environment and the file's contents are passed in.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from typing import NoReturn

ENV_PREFIX = "PITLINK_"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class SettingsError(ValueError):
    """A configuration value or file that cannot be used; the message is one plain line."""


class Parser(argparse.ArgumentParser):
    """An argument parser whose refusals are one plain line (SettingsError), not the usage."""

    def error(self, message: str) -> NoReturn:
        raise SettingsError(f"{message} (see {self.prog} --help)")


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def log_level(text: str) -> str:
    """An argparse type: a log level, in any case."""
    level = text.strip().upper()
    if level not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a log level: use {', '.join(LOG_LEVELS)}"
        )
    return level


def key_of(action: argparse.Action) -> str | None:
    """The KEY of a flag: `--fetch-timeout` -> `FETCH_TIMEOUT`."""
    longs = [o for o in action.option_strings if o.startswith("--")]
    if not longs or action.dest == "help":
        return None
    return longs[0][2:].replace("-", "_").upper()


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be at least 1")
    return value


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


def resolve(
    parser: argparse.ArgumentParser,
    argv: Sequence[str],
    env: Mapping[str, str],
    file_values: Mapping[str, str] | None = None,
    *,
    ignored: frozenset[str] = frozenset(),
) -> argparse.Namespace:
    """Parse `argv` with defaults taken from the environment, then the file.

    Unknown keys in the file are refused so that a typo is not silently ignored.
    """
    file_values = dict(file_values or {})
    known: set[str] = set()
    # A repeatable flag given on the command line replaces the environment's list; it must
    # not add to it (on the pits that would widen the allowlist behind the operator's back).
    lists: dict[str, list[object]] = {}
    for action in parser._actions:
        key = key_of(action)
        if key is None:
            continue
        known.add(key)
        raw = env.get(ENV_PREFIX + key)
        origin = ENV_PREFIX + key
        if raw is None and key in file_values:
            raw, origin = file_values[key], key
        if raw is None:
            continue
        if isinstance(action, argparse._StoreTrueAction | argparse._StoreFalseAction):
            action.default = parse_bool(origin, raw)
        elif isinstance(action, argparse._AppendAction):
            lists[action.dest] = [
                _convert(action, origin, v.strip()) for v in raw.split(",") if v.strip()
            ]
            action.default = None
        else:
            action.default = _convert(action, origin, raw)
    unknown = sorted(set(file_values) - known - ignored)
    if unknown:
        raise SettingsError(f"unknown setting {unknown[0]} in the config file")
    namespace = parser.parse_args(list(argv))
    for dest, values in lists.items():
        if getattr(namespace, dest) is None:
            setattr(namespace, dest, values)
    return namespace


def _convert(action: argparse.Action, origin: str, raw: str) -> object:
    if action.type is None:
        return raw
    try:
        return action.type(raw)  # type: ignore[operator]
    except (TypeError, ValueError, argparse.ArgumentTypeError) as exc:
        raise SettingsError(f"{origin}={raw!r} is not valid: {exc}") from None
