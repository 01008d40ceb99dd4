"""`cloud-relay serve` settings: flags, PITLINK_* environment, and which one wins."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloud.clients import Origin
from cloud.config import CloudConfig, config_from_args
from wire.paths import DEFAULT_ALLOWLIST
from wire.settings import SettingsError

JWKS = ["--jwks", "/etc/pitlink/jwks.json"]


def test_defaults() -> None:
    config = config_from_args(JWKS, env={})
    assert isinstance(config, CloudConfig)
    assert config.jwks == Path("/etc/pitlink/jwks.json")
    assert (config.host, config.port) == ("127.0.0.1", 8080)
    assert config.fetch_timeout == 8.0
    assert config.freshness == 1.0
    assert config.ttl == ()
    assert config.public_allowlist == DEFAULT_ALLOWLIST
    assert config.active_pits is None
    assert config.log_level == "INFO"


def test_flags() -> None:
    config = config_from_args(
        [
            *JWKS,
            "--host=0.0.0.0",
            "--port",
            "9000",
            "--fetch-timeout",
            "2.5",
            "--freshness",
            "0",
            "--cache-max-entries",
            "10",
            "--cache-max-bytes",
            "2048",
            "--max-body-bytes",
            "1024",
            "--ping-interval",
            "1",
            "--ping-timeout",
            "3",
            "--active-pits",
            "club-42",
            "--log-level",
            "debug",
        ],
        env={},
    )
    assert (config.host, config.port) == ("0.0.0.0", 9000)
    assert config.fetch_timeout == 2.5
    assert config.freshness == 0.0
    assert (config.cache_max_entries, config.cache_max_bytes) == (10, 2048)
    assert config.max_body_bytes == 1024
    assert (config.ping_interval, config.ping_timeout) == (1.0, 3.0)
    assert config.active_pits == "club-42"
    assert config.log_level == "DEBUG"


def test_environment_maps_every_flag() -> None:
    env = {
        "PITLINK_JWKS": "/srv/jwks.json",
        "PITLINK_HOST": "::",
        "PITLINK_PORT": "8443",
        "PITLINK_FETCH_TIMEOUT": "3",
        "PITLINK_FRESHNESS": "0.5",
        "PITLINK_TTL": "/events/*/Results.json=5, /httpfiles/**=60",
        "PITLINK_CACHE_MAX_ENTRIES": "50",
        "PITLINK_CACHE_MAX_BYTES": "4096",
        "PITLINK_MAX_BODY_BYTES": "512",
        "PITLINK_PING_INTERVAL": "2",
        "PITLINK_PING_TIMEOUT": "6",
        "PITLINK_PUBLIC_ALLOWLIST": "/events/**,/",
        "PITLINK_ACTIVE_PITS": "club-7",
        "PITLINK_LOG_LEVEL": "warning",
    }
    config = config_from_args([], env=env)
    assert config.jwks == Path("/srv/jwks.json")
    assert (config.host, config.port) == ("::", 8443)
    assert config.fetch_timeout == 3.0
    assert config.freshness == 0.5
    assert config.ttl == (("/events/*/Results.json", 5.0), ("/httpfiles/**", 60.0))
    assert (config.cache_max_entries, config.cache_max_bytes) == (50, 4096)
    assert config.max_body_bytes == 512
    assert (config.ping_interval, config.ping_timeout) == (2.0, 6.0)
    assert config.public_allowlist == ("/events/**", "/")
    assert config.active_pits == "club-7"
    assert config.log_level == "WARNING"


def test_other_environment_is_ignored() -> None:
    config = config_from_args(JWKS, env={"FETCH_TIMEOUT": "1", "PITLINK_UNKNOWN": "x"})
    assert config.fetch_timeout == 8.0


def test_flags_beat_the_environment() -> None:
    env = {
        "PITLINK_JWKS": "/env/jwks.json",
        "PITLINK_FETCH_TIMEOUT": "3",
        "PITLINK_PORT": "7000",
        "PITLINK_FRESHNESS": "9",
    }
    config = config_from_args(
        ["--jwks", "/flag/jwks.json", "--fetch-timeout", "4", "--port", "7001"], env=env
    )
    assert config.jwks == Path("/flag/jwks.json")
    assert config.fetch_timeout == 4.0
    assert config.port == 7001
    assert config.freshness == 9.0  # no flag: the environment stands


@pytest.mark.parametrize(
    ("flag", "env_value", "flag_value", "field", "expected"),
    [
        ("--public-allowlist", "/**", "/events/**", "public_allowlist", ("/events/**",)),
        ("--ttl", "/**=60", "/events/**=2", "ttl", (("/events/**", 2.0),)),
    ],
)
def test_repeatable_flags_beat_the_environment(
    flag: str, env_value: str, flag_value: str, field: str, expected: tuple
) -> None:
    env_key = "PITLINK_" + flag[2:].replace("-", "_").upper()
    config = config_from_args([*JWKS, flag, flag_value], env={env_key: env_value})
    assert getattr(config, field) == expected


def test_ttl_rules_parsed_in_order() -> None:
    config = config_from_args(
        [*JWKS, "--ttl", "/events/*/Results.json=5", "--ttl", "/httpfiles/**=0.25"], env={}
    )
    assert config.ttl == (("/events/*/Results.json", 5.0), ("/httpfiles/**", 0.25))


def test_ttl_pattern_may_hold_an_equals_sign() -> None:
    config = config_from_args([*JWKS, "--ttl", "/a=b/*=3"], env={})
    assert config.ttl == (("/a=b/*", 3.0),)


@pytest.mark.parametrize(
    "rule", ["/events/**", "events/**=5", "/events/**=soon", "/events/**=-1", "=5", "/x="]
)
def test_invalid_ttl_flag_is_one_line_naming_the_flag_and_the_form(rule: str) -> None:
    with pytest.raises(SettingsError) as caught:
        config_from_args([*JWKS, "--ttl", rule], env={})
    message = str(caught.value)
    assert message.startswith("argument --ttl: ")
    assert "PATTERN=SECONDS" in message or "negative" in message
    assert "\n" not in message


@pytest.mark.parametrize("rule", ["/events/**", "/events/**=soon", "/events/**=-1"])
def test_invalid_ttl_in_the_environment_names_the_variable(rule: str) -> None:
    with pytest.raises(SettingsError, match="PITLINK_TTL"):
        config_from_args(JWKS, env={"PITLINK_TTL": rule})


def test_bad_number_in_the_environment_names_the_variable() -> None:
    with pytest.raises(SettingsError, match="PITLINK_FETCH_TIMEOUT"):
        config_from_args(JWKS, env={"PITLINK_FETCH_TIMEOUT": "eight"})


def test_jwks_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SettingsError) as caught:
        config_from_args(["--port", "9000"], env={})
    message = str(caught.value)
    assert "--jwks" in message and "PITLINK_JWKS" in message
    assert "cloud-relay keygen --jwks FILE" in message
    assert "\n" not in message


@pytest.mark.parametrize("level", ["LOUD", "verbose"])
def test_log_level_says_what_it_accepts(level: str) -> None:
    with pytest.raises(SettingsError, match="DEBUG, INFO, WARNING, ERROR"):
        config_from_args([*JWKS, "--log-level", level], env={})
    with pytest.raises(SettingsError, match="PITLINK_LOG_LEVEL"):
        config_from_args(JWKS, env={"PITLINK_LOG_LEVEL": level})
    assert config_from_args([*JWKS, "--log-level", "debug"], env={}).log_level == "DEBUG"


def test_jwks_from_the_environment_is_enough() -> None:
    assert config_from_args([], env={"PITLINK_JWKS": "/k.json"}).jwks == Path("/k.json")


def test_repeated_public_allowlist() -> None:
    config = config_from_args(
        [*JWKS, "--public-allowlist", "/events/**", "--public-allowlist", "/httpfiles/*.json"],
        env={},
    )
    assert config.public_allowlist == ("/events/**", "/httpfiles/*.json")


def test_config_is_frozen() -> None:
    config = config_from_args(JWKS, env={})
    with pytest.raises(AttributeError):
        config.port = 1  # type: ignore[misc]


def test_admin_origin_and_slow_client_flags() -> None:
    config = config_from_args(
        [*JWKS, "--admin-host", "Admin.Relay.Example", "--idle-timeout", "5"], env={}
    )
    assert (config.admin_host, config.admin_port, config.idle_timeout) == (
        "admin.relay.example",
        None,
        5.0,
    )
    config = config_from_args(
        JWKS, env={"PITLINK_ADMIN_PORT": "8090", "PITLINK_ADMIN_ADDRESS": "127.0.0.1"}
    )
    assert (config.admin_port, config.admin_address) == (8090, "127.0.0.1")
    defaults = config_from_args(JWKS, env={})
    assert (defaults.admin_host, defaults.admin_port) == (None, None)
    assert (defaults.idle_timeout, defaults.max_header_bytes) == (30.0, 16 * 1024)


def test_admin_port_with_several_workers_is_refused() -> None:
    argv = [*JWKS, "--workers", "2", "--redis-url", "redis://x", "--port", "80"]
    with pytest.raises(SettingsError, match="--admin-host"):
        config_from_args([*argv, "--admin-port", "8090"], env={})


def test_miss_budget_flags() -> None:
    defaults = config_from_args(JWKS, env={})
    assert (defaults.client_miss_rate, defaults.client_miss_burst) == (10.0, 50.0)
    off = config_from_args([*JWKS, "--client-miss-rate", "0", "--client-miss-burst", "5"], env={})
    assert (off.client_miss_rate, off.client_miss_burst) == (None, 5.0)


def test_state_dir() -> None:
    assert config_from_args(JWKS, env={}).state_dir is None
    config = config_from_args(JWKS, env={"PITLINK_STATE_DIR": "/var/lib/pitlink"})
    assert config.state_dir == Path("/var/lib/pitlink")


# -- each setting is checked where it is declared ---------------------------------------------


@pytest.mark.parametrize(
    ("flag", "value", "words"),
    [
        ("--port", "65536", "a port is 0 to 65535"),
        ("--port", "-1", "a port is 0 to 65535"),
        ("--admin-port", "admin", "is not a port number"),
        ("--fetch-timeout", "0", "must be a number above 0"),
        ("--ping-interval", "-1", "must be a number above 0"),
        ("--ping-timeout", "0", "must be a number above 0"),
        ("--idle-timeout", "0", "must be a number above 0"),
        ("--redis-cache-ttl", "0", "must be a number above 0"),
        ("--client-burst", "0", "must be a number above 0"),
        ("--pits-fetch-burst", "-5", "must be a number above 0"),
        ("--client-miss-burst", "0", "must be a number above 0"),
        ("--freshness", "-1", "must not be negative"),
        ("--grace-period", "-0.5", "must not be negative"),
        ("--queue-size", "-1", "must not be negative"),
        ("--ready-queue-threshold", "-1", "must not be negative"),
        ("--cache-max-entries", "0", "must be at least 1"),
        ("--cache-max-bytes", "0", "must be at least 1"),
        ("--max-body-bytes", "-1", "must be at least 1"),
        ("--max-header-bytes", "0", "must be at least 1"),
        ("--per-conn-concurrency", "0", "must be at least 1"),
        ("--workers", "0", "must be at least 1"),
        ("--cache-max-bytes", "256MiB", "is not a whole number"),
        ("--client-rate", "-1", "0 turns it off"),
        ("--client-miss-rate", "-1", "0 turns it off"),
        ("--pits-fetch-rate", "fast", "is not a number"),
        ("--renew-before", "-1", "0 turns it off"),
        ("--trusted-proxy", "10.0.0.300", "does not appear to be an IPv4 or IPv6 network"),
        ("--public-allowlist", "events/**", "must start with /"),
        ("--log-level", "loud", "DEBUG, INFO, WARNING, ERROR"),
        ("--public-url", "relay.example.com", "is not an address like https://relay.example.com"),
        ("--public-url", "https://relay.example.com/x", "and no path"),
        ("--client-ipv6-prefix", "0", "is not a prefix length from 1 to 128"),
        ("--client-ipv6-prefix", "129", "is not a prefix length from 1 to 128"),
        ("--write-timeout", "0", "must be a number above 0"),
    ],
)
def test_each_setting_refuses_what_it_cannot_use(flag: str, value: str, words: str) -> None:
    with pytest.raises(SettingsError) as caught:
        config_from_args([*JWKS, flag, value], env={})
    message = str(caught.value)
    assert message.startswith(f"argument {flag}: ")
    assert words in message and "\n" not in message
    variable = "PITLINK_" + flag[2:].replace("-", "_").upper()
    with pytest.raises(SettingsError) as caught:
        config_from_args(JWKS, env={variable: value})
    assert str(caught.value).startswith(f"{variable}={value!r} is not valid: ")
    assert words in str(caught.value)


def test_zero_means_off_or_at_once_where_it_may() -> None:
    zeros = ["port", "queue-size", "ready-queue-threshold", "freshness", "grace-period"]
    zeros += ["client-rate", "pits-fetch-rate", "renew-before", "admin-port"]
    config = config_from_args([*JWKS, *(f"--{flag}=0" for flag in zeros)], env={})
    assert (config.port, config.queue_size, config.ready_queue_threshold) == (0, 0, 0)
    assert (config.freshness, config.grace_period, config.admin_port) == (0.0, 0.0, 0)
    assert (config.client_rate, config.pits_fetch_rate, config.renew_before) == (None, None, None)


def test_trusted_proxies_are_kept_as_given() -> None:
    config = config_from_args(
        [*JWKS, "--trusted-proxy", " 127.0.0.1 ", "--trusted-proxy", "10.0.0.0/8"], env={}
    )
    assert config.trusted_proxy == ("127.0.0.1", "10.0.0.0/8")
    env = {"PITLINK_TRUSTED_PROXY": "::1, 192.168.0.0/16,"}
    assert config_from_args(JWKS, env=env).trusted_proxy == ("::1", "192.168.0.0/16")


def test_several_workers_need_redis_and_a_fixed_port() -> None:
    with pytest.raises(SettingsError, match="--workers above 1 needs --redis-url"):
        config_from_args([*JWKS, "--workers", "2"], env={})
    with pytest.raises(SettingsError, match="needs a fixed --port"):
        config_from_args([*JWKS, "--workers", "2", "--redis-url", "redis://x", "--port", "0"], {})
    config = config_from_args(JWKS, env={"PITLINK_WORKERS": "3", "PITLINK_REDIS_URL": "redis://x"})
    assert (config.workers, config.redis_url) == (3, "redis://x")


def test_the_public_address_and_the_client_network() -> None:
    config = config_from_args(
        [*JWKS, "--public-url", "https://Relay.Example.com:443/", "--client-ipv6-prefix", "56"],
        env={"PITLINK_WRITE_TIMEOUT": "5"},
    )
    assert config.public_url == Origin("https", "relay.example.com")
    assert config.client_ipv6_prefix == 56
    assert config.write_timeout == 5.0
    defaults = config_from_args(JWKS, env={})
    assert (defaults.public_url, defaults.client_ipv6_prefix) == (None, 64)
    assert defaults.write_timeout == 30.0
