"""`pits-agent` settings: flags, PITLINK_* environment and the KEY=VALUE file, in that order.

(Named test_agent_config.py, not test_config.py: tests/cloud/test_config.py has that basename
and pytest's default import mode needs basenames unique across test folders without
__init__.py.)
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pits_appliance import ConfigError
from pits_appliance.config import AgentConfig, control_url, load_config
from wire.paths import DEFAULT_ALLOWLIST

REQUIRED = ["--cloud-url", "https://relay.example.com", "--token-file", "/var/lib/pitlink/token"]


def conf(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pitlink.conf"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults() -> None:
    config = load_config(REQUIRED, env={})
    assert isinstance(config, AgentConfig)
    assert config.cloud_url == "https://relay.example.com"
    assert config.token_file == Path("/var/lib/pitlink/token")
    assert config.fpvtrackside == "http://127.0.0.1:8080"
    assert config.pits_id is None
    assert (config.status_host, config.status_port) == ("0.0.0.0", 8081)
    assert config.allowlist == DEFAULT_ALLOWLIST
    assert config.fetch_timeout == 5.0
    assert config.max_body_bytes == 8 * 1024 * 1024
    assert config.origin_concurrency == 2
    assert (config.reconnect_base, config.reconnect_cap) == (1.0, 60.0)
    assert config.log_level == "INFO"


def test_flags() -> None:
    config = load_config(
        [
            *REQUIRED,
            "--fpvtrackside",
            "192.168.1.20:8080/",
            "--pits-id",
            "club-42",
            "--status-port",
            "80",
            "--allow",
            "/events/**",
            "--allow",
            "/",
            "--fetch-timeout",
            "2.5",
            "--max-body-bytes",
            "1000",
            "--origin-concurrency",
            "1",
            "--ping-interval",
            "3",
            "--ping-timeout",
            "9",
            "--reconnect-base",
            "0.5",
            "--reconnect-cap",
            "30",
            "--origin-check-interval",
            "20",
            "--log-level",
            "debug",
        ],
        env={},
    )
    assert config.fpvtrackside == "http://192.168.1.20:8080"
    assert config.pits_id == "club-42"
    assert config.status_port == 80
    assert config.allowlist == ("/events/**", "/")
    assert config.fetch_timeout == 2.5
    assert config.max_body_bytes == 1000
    assert config.origin_concurrency == 1
    assert (config.ping_interval, config.ping_timeout) == (3.0, 9.0)
    assert (config.reconnect_base, config.reconnect_cap) == (0.5, 30.0)
    assert config.origin_check_interval == 20.0
    assert config.log_level == "DEBUG"


def test_environment() -> None:
    env = {
        "PITLINK_CLOUD_URL": "http://127.0.0.1:8000",
        "PITLINK_TOKEN_FILE": "/t",
        "PITLINK_FPVTRACKSIDE": "http://10.0.0.5:8080",
        "PITLINK_PITS_ID": "club-9",
        "PITLINK_STATUS_PORT": "9081",
        "PITLINK_ALLOW": "/events/**, /httpfiles/**",
        "PITLINK_FETCH_TIMEOUT": "4",
        "PITLINK_LOG_LEVEL": "warning",
    }
    config = load_config([], env=env)
    assert config.cloud_url == "http://127.0.0.1:8000"
    assert config.token_file == Path("/t")
    assert config.fpvtrackside == "http://10.0.0.5:8080"
    assert config.pits_id == "club-9"
    assert config.status_port == 9081
    assert config.allowlist == ("/events/**", "/httpfiles/**")
    assert config.fetch_timeout == 4.0
    assert config.log_level == "WARNING"


def test_config_file_with_comments_blank_lines_and_quotes(tmp_path: Path) -> None:
    path = conf(
        tmp_path,
        "# pitlink.conf, edited on a laptop\n"
        "\n"
        "CLOUD_URL = https://relay.example.com\n"
        "   # an indented comment\n"
        'TOKEN_FILE="/boot/pitlink token"\n'
        "FPVTRACKSIDE='http://192.168.1.20:8080'\n"
        "PITS_ID=club-42\n"
        "FETCH_TIMEOUT=3\r\n"
        "ALLOW=/events/**,/\n",
    )
    config = load_config(["--config", str(path)], env={})
    assert config.cloud_url == "https://relay.example.com"
    assert config.token_file == Path("/boot/pitlink token")
    assert config.fpvtrackside == "http://192.168.1.20:8080"
    assert config.pits_id == "club-42"
    assert config.fetch_timeout == 3.0
    assert config.allowlist == ("/events/**", "/")


def test_config_file_named_by_the_environment(tmp_path: Path) -> None:
    path = conf(tmp_path, "CLOUD_URL=https://r.example\nTOKEN_FILE=/t\n")
    config = load_config([], env={"PITLINK_CONFIG": str(path)})
    assert config.cloud_url == "https://r.example"


@pytest.mark.parametrize(
    ("flag", "env", "expected"),
    [("7", "6", 7.0), (None, "6", 6.0), (None, None, 5.5)],
    ids=["flag-wins", "env-beats-file", "file-alone"],
)
def test_flags_beat_environment_beats_file(
    tmp_path: Path, flag: str | None, env: str | None, expected: float
) -> None:
    path = conf(
        tmp_path,
        "CLOUD_URL=https://file.example\nTOKEN_FILE=/file\nFETCH_TIMEOUT=5.5\n",
    )
    argv = ["--config", str(path)] + (["--fetch-timeout", flag] if flag else [])
    environ = {"PITLINK_FETCH_TIMEOUT": env} if env else {}
    environ["PITLINK_CLOUD_URL"] = "https://env.example"
    config = load_config([*argv, "--token-file", "/flag"], env=environ)
    assert config.fetch_timeout == expected
    assert config.cloud_url == "https://env.example"
    assert config.token_file == Path("/flag")


@pytest.mark.parametrize("source", ["env", "file"])
def test_allow_flag_beats_environment_and_file(tmp_path: Path, source: str) -> None:
    env = {"PITLINK_ALLOW": "/**"} if source == "env" else {}
    argv = [*REQUIRED, "--allow", "/events/**"]
    if source == "file":
        argv += ["--config", str(conf(tmp_path, "ALLOW=/**\n"))]
    assert load_config(argv, env=env).allowlist == ("/events/**",)


def test_unknown_key_in_the_file_refused(tmp_path: Path) -> None:
    path = conf(tmp_path, "CLOUD_URL=https://r.example\nTOKEN_FILE=/t\nCLOUD_ULR=typo\n")
    with pytest.raises(ConfigError, match="CLOUD_ULR"):
        load_config(["--config", str(path)], env={})


def test_a_key_typo_names_its_line_and_the_setting_it_means(tmp_path: Path) -> None:
    path = conf(
        tmp_path,
        "# the box\nCLOUD_URL=https://r.example\nTOKEN_FILE=/t\n\nFPVTRACSIDE=http://10.0.0.5:8080\n",
    )
    with pytest.raises(ConfigError) as caught:
        load_config(["--config", str(path)], env={})
    assert str(caught.value) == (
        f"{path} line 5: unknown setting FPVTRACSIDE: did you mean FPVTRACKSIDE?"
    )


def test_a_key_like_no_setting_gets_no_guess(tmp_path: Path) -> None:
    path = conf(tmp_path, "CLOUD_URL=https://r.example\nTOKEN_FILE=/t\nZZZQQQ=1\n")
    with pytest.raises(ConfigError) as caught:
        load_config(["--config", str(path)], env={})
    assert str(caught.value) == f"{path} line 3: unknown setting ZZZQQQ"


def test_line_without_equals_refused(tmp_path: Path) -> None:
    path = conf(tmp_path, "CLOUD_URL https://r.example\n")
    with pytest.raises(ConfigError, match="line 1"):
        load_config(["--config", str(path), *REQUIRED], env={})


def test_missing_file_is_one_plain_line(tmp_path: Path) -> None:
    missing = tmp_path / "nope.conf"
    with pytest.raises(ConfigError) as caught:
        load_config(["--config", str(missing), *REQUIRED], env={})
    message = str(caught.value)
    assert "\n" not in message
    assert str(missing) in message
    assert "Traceback" not in message and "Errno" not in message


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("STATUS_PORT=eighty\n", "STATUS_PORT"),
        ("FETCH_TIMEOUT=5s\n", "FETCH_TIMEOUT"),
        ("MAX_BODY_BYTES=8MiB\n", "MAX_BODY_BYTES"),
    ],
)
def test_bad_number_in_the_file_refused(tmp_path: Path, text: str, names: str) -> None:
    path = conf(tmp_path, text)
    with pytest.raises(ConfigError, match=names) as caught:
        load_config(["--config", str(path), *REQUIRED], env={})
    assert "\n" not in str(caught.value)


def test_bad_number_in_the_environment_refused() -> None:
    with pytest.raises(ConfigError, match="PITLINK_STATUS_PORT"):
        load_config(REQUIRED, env={"PITLINK_STATUS_PORT": "http"})


def test_missing_cloud_url_or_token_file_refused() -> None:
    with pytest.raises(ConfigError, match="CLOUD_URL"):
        load_config(["--token-file", "/t"], env={})
    with pytest.raises(ConfigError, match="TOKEN_FILE"):
        load_config(["--cloud-url", "https://r.example"], env={})


@pytest.mark.parametrize("url", ["relay.example.com", "ftp://relay.example.com", "https://"])
def test_bad_cloud_url_refused_at_load(url: str) -> None:
    with pytest.raises(ConfigError, match="cloud URL"):
        load_config(["--cloud-url", url, "--token-file", "/t"], env={})


def test_config_file_with_a_byte_order_mark(tmp_path: Path) -> None:
    path = tmp_path / "pitlink.conf"
    path.write_bytes(b"\xef\xbb\xbfCLOUD_URL=https://r.example\r\nTOKEN_FILE=/t\r\n")
    assert load_config(["--config", str(path)], env={}).cloud_url == "https://r.example"


# -- the control URL --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cloud", "control"),
    [
        ("https://relay.example.com", "wss://relay.example.com/control?role=pits&version=1"),
        ("https://relay.example.com/", "wss://relay.example.com/control?role=pits&version=1"),
        ("http://127.0.0.1:8000", "ws://127.0.0.1:8000/control?role=pits&version=1"),
        ("https://example.com/pitlink", "wss://example.com/pitlink/control?role=pits&version=1"),
        ("https://example.com/a/b/", "wss://example.com/a/b/control?role=pits&version=1"),
        ("wss://relay.example.com", "wss://relay.example.com/control?role=pits&version=1"),
        ("ws://[::1]:8000", "ws://[::1]:8000/control?role=pits&version=1"),
        # The endpoint itself, as people copy it from a relay's docs: /control is not doubled.
        ("wss://relay.example.com/control", "wss://relay.example.com/control?role=pits&version=1"),
        (
            "https://relay.example.com/control/",
            "wss://relay.example.com/control?role=pits&version=1",
        ),
        ("https://example.com/a/control", "wss://example.com/a/control?role=pits&version=1"),
    ],
)
def test_control_url(cloud: str, control: str) -> None:
    assert control_url(cloud) == control
    config = load_config(["--cloud-url", cloud, "--token-file", "/t"], env={})
    assert config.control_url == control


@pytest.mark.parametrize(
    "cloud",
    [
        "",
        "relay.example.com",
        "ftp://relay.example.com",
        "https://",
        "https:relay",
        "wss://relay.example.com/control?role=pits&version=1",
        "https://relay.example.com/#top",
    ],
)
def test_bad_control_url_refused(cloud: str) -> None:
    with pytest.raises(ConfigError) as caught:
        control_url(cloud)
    assert "\n" not in str(caught.value)
    assert repr(cloud) in str(caught.value)


@pytest.mark.parametrize(
    ("flag", "value", "words"),
    [
        ("--origin-concurrency", "0", "must be at least 1"),  # 0 once made every fetch hang
        ("--log-level", "loud", "DEBUG, INFO, WARNING, ERROR"),
        ("--ping-interval", "soon", "'soon' is not a number"),
    ],
)
def test_a_bad_flag_is_one_plain_line(flag: str, value: str, words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config([*REQUIRED, flag, value], env={})
    message = str(caught.value)
    assert flag in message and words in message and "\n" not in message
    assert "usage:" not in message


# -- each setting is checked where it is declared ---------------------------------------------


@pytest.mark.parametrize(
    ("flag", "value", "words"),
    [
        ("--status-port", "65536", "a port is 0 to 65535"),
        ("--status-port", "http", "is not a port number"),
        ("--fetch-timeout", "0", "must be a number above 0"),
        ("--ping-timeout", "-1", "must be a number above 0"),
        ("--reconnect-base", "0", "must be a number above 0"),
        ("--reconnect-cap", "0", "must be a number above 0"),
        ("--origin-check-interval", "0", "must be a number above 0"),
        ("--check-interval", "-60", "must be a number above 0"),
        ("--error-hold", "-1", "must not be negative"),
        ("--max-body-bytes", "0", "must be at least 1"),
        ("--max-concurrent-commands", "0", "must be at least 1"),
        ("--allow", "events/**", "must start with /"),
        ("--fpvtrackside", "ftp://laptop", "expected an address like http://192.168.1.20:8080"),
        ("--cloud-url", "relay.example.com", "must look like https://relay.example.com"),
    ],
)
def test_each_setting_refuses_what_it_cannot_use(
    tmp_path: Path, flag: str, value: str, words: str
) -> None:
    argv = ["--cloud-url", "https://r.example", "--token-file", "/t"]
    with pytest.raises(ConfigError) as caught:
        load_config([*argv, flag, value], env={})
    message = str(caught.value)
    assert message.startswith(f"argument {flag}: ")
    assert words in message and "\n" not in message
    key = flag[2:].replace("-", "_").upper()
    with pytest.raises(ConfigError) as caught:
        load_config(["--config", str(conf(tmp_path, f"{key}={value}\n")), *argv], env={})
    assert str(caught.value).startswith(f"{key}={value!r} is not valid: ")
    with pytest.raises(ConfigError, match=f"PITLINK_{key}="):
        load_config(argv, env={f"PITLINK_{key}": value})


def test_switches_and_zero_where_it_may(tmp_path: Path) -> None:
    path = conf(tmp_path, "PAUSED=yes\nALLOW_NETWORK_RESTART=true\nERROR_HOLD=0\nSTATUS_PORT=0\n")
    config = load_config(["--config", str(path), *REQUIRED], env={})
    assert (config.paused, config.allow_network_restart) == (True, True)
    assert (config.error_hold, config.status_port) == (0.0, 0)
    assert load_config(REQUIRED, env={}).paused is False
    with pytest.raises(ConfigError, match="PAUSED='later' is not a yes/no value"):
        load_config(REQUIRED, env={"PITLINK_PAUSED": "later"})


def test_several_relays_the_first_dialled_first() -> None:
    env = {"PITLINK_CLOUD_URL": "https://a.example, https://b.example", "PITLINK_TOKEN_FILE": "/t"}
    config = load_config([], env=env)
    assert (config.cloud_url, config.cloud_urls) == ("https://a.example", ("https://b.example",))
    config = load_config(["--cloud-url", "https://c.example"], env=env)
    assert (config.cloud_url, config.cloud_urls) == ("https://c.example", ())


def test_help_lists_every_setting_with_its_default(capsys: pytest.CaptureFixture[str]) -> None:
    from pits_appliance.cli import main
    from pits_appliance.config import SETTINGS

    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: pits-agent")
    text = " ".join(out.split())
    for setting in SETTINGS:
        assert f" {setting.option} " in text
        shown = setting.default_shown.replace("`", "")
        assert (
            f"(default {shown})" in text or f"(default: {shown})" in text or (shown == "(required)")
        )
    assert "--status-port STATUS_PORT the status port (default 8081)" in text
    assert "--cloud-url CLOUD_URL the relay" in text


def test_a_cloud_ca_named_in_pitlink_conf_is_beside_it(tmp_path: Path) -> None:
    conf = tmp_path / "boot" / "pitlink.conf"
    conf.parent.mkdir()
    conf.write_text("CLOUD_URL=https://relay.example\nTOKEN_FILE=/t\nCLOUD_CA=relay-ca.pem\n")
    config = load_config(["--config", str(conf)], env={})
    assert config.cloud_ca == tmp_path / "boot" / "relay-ca.pem"
    absolute = load_config([*REQUIRED, "--cloud-ca", "/etc/ssl/ours.pem"], env={})
    assert absolute.cloud_ca == Path("/etc/ssl/ours.pem")
    assert (absolute.set_clock, load_config([*REQUIRED, "--set-clock"], env={}).set_clock) == (
        False,
        True,
    )


# -- the status page's PIN ----------------------------------------------------------------------


def test_the_status_pin_from_flag_environment_or_file(tmp_path: Path) -> None:
    assert load_config(REQUIRED, env={}).status_pin is None  # made at first start
    assert load_config([*REQUIRED, "--status-pin", "123456"], env={}).status_pin == "123456"
    env = {"PITLINK_STATUS_PIN": "000000000001"}
    assert load_config(REQUIRED, env=env).status_pin == "000000000001"  # leading zeros kept
    path = conf(tmp_path, "STATUS_PIN = 654321 \nSTATUS_PIN=\n")  # the last line wins: unset
    assert load_config(["--config", str(path), *REQUIRED], env={}).status_pin is None
    path = conf(tmp_path, "STATUS_PIN=\nSTATUS_PIN='654321'\n")
    assert load_config(["--config", str(path), *REQUIRED], env={}).status_pin == "654321"


@pytest.mark.parametrize(
    "pin", ["12345", "1234567890123", "12 3456", "12345a", "١٢٣٤٥٦", "-123456"]
)
def test_a_status_pin_that_is_not_6_to_12_digits_is_refused_without_repeating_it(
    tmp_path: Path, pin: str
) -> None:
    """The refusal is shown on the status page, to anyone on the pits network."""
    for argv, env in [
        ([*REQUIRED, "--status-pin", pin], {}),
        (REQUIRED, {"PITLINK_STATUS_PIN": pin}),
        (["--config", str(conf(tmp_path, f"STATUS_PIN={pin}\n")), *REQUIRED], {}),
    ]:
        with pytest.raises(ConfigError) as caught:
            load_config(argv, env=env)
        assert (
            str(caught.value) == "STATUS_PIN is not a PIN: use 6 to 12 digits (0-9), nothing else"
        )


# -- no token in clear --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "fix"),
    [
        ("http://relay.example.com", "https://relay.example.com"),
        ("HTTP://relay.example.com:8000/pitlink", "https://relay.example.com:8000/pitlink"),
        ("ws://relay.example.com/control", "wss://relay.example.com/control"),
        ("http://192.168.1.5:8000", "https://192.168.1.5:8000"),
        ("http://[fd00::1]:8000", "https://[fd00::1]:8000"),
        ("http://0.0.0.0:8000", "https://0.0.0.0:8000"),
        # Names that merely look local are names: DNS answers for them.
        ("http://localhost.relay.example", "https://localhost.relay.example"),
        ("http://127.0.0.1.nip.io", "https://127.0.0.1.nip.io"),
        ("http://[::ffff:127.0.0.1]:8000", "https://[::ffff:127.0.0.1]:8000"),
    ],
)
def test_a_plain_relay_address_is_refused_naming_the_fix(url: str, fix: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(["--cloud-url", url, "--token-file", "/t"], env={})
    assert str(caught.value) == (
        f"CLOUD_URL {url} would send this box's token unencrypted: use {fix} "
        "(ALLOW_PLAIN_HTTP=yes allows it on a test bench)"
    )
    # A second relay is checked as the first.
    env = {"PITLINK_CLOUD_URL": f"https://a.example,{url}", "PITLINK_TOKEN_FILE": "/t"}
    with pytest.raises(ConfigError, match="unencrypted"):
        load_config([], env=env)
    with pytest.raises(ConfigError, match="unencrypted"):
        AgentConfig(cloud_url=url, token_file=Path("/t"))
    # A lab may say it means it.
    allowed = load_config(["--cloud-url", url, "--token-file", "/t", "--allow-plain-http"], env={})
    assert allowed.cloud_url == url and allowed.allow_plain_http
    assert load_config([], env={**env, "PITLINK_ALLOW_PLAIN_HTTP": "yes"}).cloud_urls == (url,)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8000",
        "http://127.1.2.3",
        "ws://[::1]:8000",
        "http://localhost:8000",
        "http://LOCALHOST.",
        "https://relay.example.com",
        "wss://192.168.1.5",
    ],
)
def test_encrypted_or_loopback_relay_addresses_need_no_leave(url: str) -> None:
    assert load_config(["--cloud-url", url, "--token-file", "/t"], env={}).cloud_url == url
