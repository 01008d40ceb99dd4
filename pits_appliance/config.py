"""The agent's configuration: one frozen dataclass whose fields declare the settings.

Each field says once what its flag means, how it is read and checked, and its default;
wire.settings makes the flags, the PITLINK_* environment, the pitlink.conf keys, `--help` and
the docs' table from it.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from pits_appliance import ConfigError
from wire.paths import DEFAULT_ALLOWLIST
from wire.settings import (
    Parser,
    SettingsError,
    add_flags,
    lenient,
    log_level_name,
    non_negative_float,
    parse_conf,
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

MIB = 1024 * 1024

# Settings in pitlink.conf that the image's boot scripts read (networking); the agent accepts
# and ignores them, so one file serves both.
IMAGE_KEYS = frozenset(
    {
        "WIFI_SSID",
        "WIFI_PASSPHRASE",
        "WIFI_COUNTRY",
        "STATIC_ADDRESS",
        "STATIC_GATEWAY",
        "STATIC_DNS",
        # The trial boot after an update (image/rootfs/usr/lib/pitlink/pitlink-health).
        "UPDATE_TRIAL_SECONDS",
        "UPDATE_HEALTHY_SECONDS",
    }
)


def control_url(cloud_url: str) -> str:
    """`https://relay.example` or `wss://relay.example` -> `wss://relay.example/control?...`.

    The endpoint itself (`wss://relay.example/control`) is accepted too: the `/control` is
    not doubled. A query or fragment is refused, naming the URL, rather than dropped.
    """
    parts = urlsplit(cloud_url)
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parts.scheme)
    if scheme is None or not parts.netloc:
        raise ConfigError(f"cloud URL {cloud_url!r} must look like https://relay.example.com")
    if parts.query or parts.fragment:
        raise ConfigError(
            f"cloud URL {cloud_url!r} must be the relay's address alone, with no ?query or #part"
        )
    path = parts.path.rstrip("/")
    if path.endswith("/control"):
        path = path[: -len("/control")]
    return urlunsplit((scheme, parts.netloc, path + "/control", "role=pits&version=1", ""))


def loopback_url(url: str) -> bool:
    """Whether a URL's host is this machine itself: 127.0.0.0/8, ::1 or `localhost`."""
    host = (urlsplit(url).hostname or "").rstrip(".")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def plain_url(url: str) -> bool:
    """Whether a relay URL would carry the token unencrypted to another machine: `http://`
    or `ws://` to anything but loopback."""
    return urlsplit(url).scheme.lower() in ("http", "ws") and not loopback_url(url)


def _encrypted(url: str) -> str:
    """`http://relay.example` -> `https://relay.example` (and `ws://` -> `wss://`)."""
    scheme, rest = url.split("://", 1)
    return ("wss" if scheme.lower() == "ws" else "https") + "://" + rest


# A PIN is digits only, to be typed on a phone's number pad; at least 6, so that the guesses
# the status page allows (pits_appliance.pin) cannot find it within a race weekend.
PIN = re.compile(r"[0-9]{6,12}")
PIN_WORDS = "6 to 12 digits (0-9)"


def _pin(text: str) -> str | None:
    """A PIN is checked in AgentConfig, whose message does not repeat it: a settings error is
    shown on the status page, to anyone on the pits network."""
    return text.strip() or None


def _http_url(text: str) -> str:
    parts = urlsplit(text if "://" in text else "http://" + text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("expected an address like http://192.168.1.20:8080")
    return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


def _check_url(text: str) -> str | None:
    """An http(s) address to probe, or None (empty: the check is off)."""
    if not text.strip():
        return None
    parts = urlsplit(text.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(
            "expected an address like http://connectivitycheck.gstatic.com/generate_204"
        )
    return text.strip()


def _between(low: float, high: float, unit: str) -> Callable[[str], float]:
    """A number from `low` to `high` (`unit` says of what, in the refusal)."""

    def convert(text: str) -> float:
        value = positive_float(text)
        if not low <= value <= high:
            raise ValueError(f"{text!r}: must be {low:g} to {high:g} {unit}")
        return value

    return convert


def _cloud_url(text: str) -> str:
    try:
        control_url(text)  # refuse a bad URL now, in plain words
    except ConfigError as exc:
        raise ValueError(str(exc)) from None
    return text


@dataclass(frozen=True, kw_only=True)
class AgentConfig:
    """Everything `pits-agent` can be told."""

    config_file: Path | None = setting(  # noqa: RUF009 (setting() is a field())
        None,
        "a `KEY=VALUE` file (on the image: `pitlink.conf` on the boot partition)",
        Path,
        flag="config",
    )
    cloud_url: str  # the first of the relays given, dialled first
    # The setting holds every relay given; load_config() keeps the first as cloud_url and the
    # rest here, to move on to after failures.
    cloud_urls: tuple[str, ...] = setting(
        (),
        "the relay, an `https://` address (`http://` only to this machine itself, or with "
        "`--allow-plain-http`); repeatable: tried in turn",
        _cloud_url,
        flag="cloud-url",
        repeatable=True,
        shown="(required)",
    )
    token: str | None = setting(
        None,
        "this box's token; taken into `STATE_DIR/token` on first start, and again whenever a "
        "different one is given",
    )
    state_dir: Path | None = setting(  # noqa: RUF009 (setting() is a field())
        None,
        "where the box keeps what must survive a reboot; the token file is `STATE_DIR/token`",
        Path,
    )
    token_file: Path = setting(  # noqa: RUF009 (setting() is a field())
        help="the file holding this box's token (renewals are written there)",
        convert=Path,
        shown="`STATE_DIR/token`",
    )
    cloud_ca: Path | None = setting(  # noqa: RUF009 (setting() is a field())
        None,
        "a CA certificate (PEM) the relay's certificate may chain to, besides the public ones "
        "the box trusts: for a relay with a private CA. In `pitlink.conf`, a file name is "
        "beside `pitlink.conf` (on the card's boot partition)",
        Path,
        shown="none: the public CAs only",
    )
    set_clock: bool = setting(
        False,
        "move the system clock forward to the relay's time while NTP has not synchronised "
        "(a box without a battery-backed clock)",
        switch=True,
        shown="off; on in the image",
    )
    fpvtrackside: str = setting("http://127.0.0.1:8080", "FPVTrackside's web server", _http_url)
    pits_id: str | None = setting(None, "this pits' id", text_or_none, shown="the token's subject")
    status_host: str = setting("0.0.0.0", "address of the status port")
    status_port: int = setting(8081, "the status port", tcp_port)
    status_pin: str | None = setting(
        None,
        f"the PIN the status page asks for, once per browser session, before its buttons "
        f"(Pause, Reconnect, Install now) act: {PIN_WORDS}",
        _pin,
        shown="made at first start and written into the `--config` file (without one, into "
        "`STATE_DIR/status-pin`)",
    )
    allow_plain_http: bool = setting(
        False,
        "let the relay be an `http://` or `ws://` address of another machine: the token then "
        "crosses the network unencrypted, so only on a test bench (loopback needs no leave)",
        switch=True,
    )
    allowlist: tuple[str, ...] = setting(
        DEFAULT_ALLOWLIST,
        "paths the relay may fetch; repeatable. Set on the box alone: the relay can never widen it",
        path_pattern,
        flag="allow",
        repeatable=True,
    )
    fetch_timeout: float = setting(
        5.0, "deadline of one request to FPVTrackside, seconds", positive_float
    )
    max_body_bytes: int = setting(8 * MIB, "largest body read from FPVTrackside", positive_int)
    origin_concurrency: int = setting(
        2, "requests to FPVTrackside at once; identical ones share one request", positive_int
    )
    max_concurrent_commands: int = setting(
        8, "fetches handled at once; more are answered `BUSY` at once", positive_int
    )
    ping_interval: float = setting(5.0, "seconds between pings", positive_float)
    ping_timeout: float = setting(
        15.0,
        "the link is dropped and redialled when the relay is silent this long, seconds",
        positive_float,
    )
    reconnect_base: float = setting(
        1.0, "first reconnect delay ceiling, seconds (full jitter, doubling)", positive_float
    )
    reconnect_cap: float = setting(60.0, "largest reconnect delay, seconds", positive_float)
    origin_check_interval: float = setting(
        10.0, "seconds between checks that FPVTrackside answers", positive_float
    )
    no_push: bool = setting(
        False,
        "never push changes or FPVTrackside's events to the relay, even one that takes them: "
        "the relay then asks for everything, as with an older box",
        switch=True,
    )
    watch_interval: float = setting(
        0.2,
        "while pushing, seconds between reads of the race running now's `Race.json` (0.05 to 60)",
        _between(0.05, 60.0, "seconds"),
    )
    watch_event_interval: float = setting(
        1.0,
        "while pushing, seconds between reads of the open event's `Results.json` and "
        "`Rounds.json` (0.05 to 60)",
        _between(0.05, 60.0, "seconds"),
    )
    race_look_interval: float = setting(
        2.0,
        "seconds between looks for the race running now while none runs (0.1 to 600; five "
        "times that while one runs, unless FPVTrackside answers `/current`)",
        _between(0.1, 600.0, "seconds"),
    )
    lan_budget: float = setting(
        20.0,
        "requests a second the watching may send FPVTrackside, at most one at a time (1 to "
        "1000); past it the intervals stretch",
        _between(1.0, 1000.0, "requests a second"),
    )
    check_interval: float = setting(
        60.0,
        "seconds between connectivity checks while all is well (from 1 s, doubling, while not)",
        positive_float,
    )
    allow_network_restart: bool = setting(
        False,
        "let recovery restart networking as its last step",
        switch=True,
        shown="off; on in the image",
    )
    network_restart_command: str = setting(
        "systemctl restart systemd-networkd", "how recovery restarts networking"
    )
    captive_portal_api: str | None = setting(
        None,
        "the network's captive portal API (RFC 8908)",
        text_or_none,
        shown="from DHCP where systemd-networkd exposes it",
    )
    internet_check_url: str | None = setting(
        "http://connectivitycheck.gstatic.com/generate_204",
        "a well-known address that answers an empty 204 and is not the relay, asked when the "
        "relay's own check fails: when it answers, the Internet is fine and the status page "
        "points at the relay or `CLOUD_URL`; empty: never asked",
        _check_url,
        shown="Android's, `http://connectivitycheck.gstatic.com/generate_204`",
    )
    paused: bool = setting(False, "start with answering the relay paused", switch=True)
    print_pits_id: bool = setting(
        False,
        "print this box's pits id (from the settings or the token) and exit",
        switch=True,
    )
    error_hold: float = setting(
        60.0,
        "run by systemd (as on the box), on a settings error show it on the status page this "
        "many seconds before exiting, and systemd starts the agent again; at a terminal the "
        "agent says it and exits at once",
        non_negative_float,
    )
    log_level: str = setting(
        "INFO", "how much to log: `DEBUG`, `INFO`, `WARNING` or `ERROR`", log_level_name
    )
    update_rauc: str = setting(
        "rauc",
        "the RAUC command that checks and installs update bundles (`info`, `install`, `status`)",
    )
    update_reboot_command: str = setting(
        "systemctl reboot", "how the box restarts into a newly installed slot"
    )
    update_version_file: Path = setting(  # noqa: RUF009 (setting() is a field())
        Path("/usr/lib/pitlink/version"),
        "the image's version, one line; the version the box reports when the file exists",
        Path,
    )
    update_cmdline: Path = setting(  # noqa: RUF009 (setting() is a field())
        Path("/proc/cmdline"),
        "the kernel command line; `rauc.slot=A` or `B` there means a box with two root slots, "
        "which alone takes updates",
        Path,
    )
    update_idle_restart: float | None = setting(
        1200.0,
        "once an update is installed, restart into it after this many seconds without a fetch "
        "from the relay (spectators fetch all through a race); 0: only by Install now",
        rate,
    )
    update_dirs: tuple[Path, ...] = setting(
        (Path("/boot/firmware"), Path("/media/usb")),
        "folders looked in for `*.raucb` bundles to install without a relay (the boot partition, "
        "a USB stick); repeatable",
        Path,
        flag="update-dir",
        repeatable=True,
    )
    update_scan_interval: float = setting(
        60.0, "seconds between looks in the update folders", positive_float
    )
    update_attempts: int = setting(
        20,
        "failed requests in a row after which a bundle download gives up (it resumes where it "
        "stopped at each try)",
        positive_int,
    )
    update_during_races: bool = setting(
        False,
        "let an update download, install and restart while a race runs (a test bench only)",
        switch=True,
    )
    update_race_fetch_window: float | None = setting(
        300.0,
        "when neither FPVTrackside's ExtensionMode nor its race files say whether a race runs: "
        "a relayed fetch in the last this many seconds counts as one (no download, install or "
        "restart then); 0: off",
        rate,
    )
    update_race_rate: float | None = setting(
        262144.0,
        "bytes a second a bundle download keeps to on average while race data flows (a fetch "
        "or a push in the last 30 s), outside a race; 0: no cap",
        rate,
    )
    update_race_poll: float = setting(
        5.0, "seconds between looks whether the race an update waits for has ended", positive_float
    )
    update_usb_dir: Path = setting(  # noqa: RUF009 (setting() is a field())
        Path("/run/pitlink/usb"),
        "where the image mounts a USB stick (read-only); the status page lists its `*.raucb` "
        "bundles for the downgrade action",
        Path,
    )

    def __post_init__(self) -> None:
        if self.status_pin is not None and not PIN.fullmatch(self.status_pin):
            raise ConfigError(f"STATUS_PIN is not a PIN: use {PIN_WORDS}, nothing else")
        if not self.allow_plain_http:
            for url in (self.cloud_url, *self.cloud_urls):
                if plain_url(url):
                    raise ConfigError(
                        f"CLOUD_URL {url} would send this box's token unencrypted: use "
                        f"{_encrypted(url)} (ALLOW_PLAIN_HTTP=yes allows it on a test bench)"
                    )

    @property
    def control_url(self) -> str:
        """The relay's WebSocket endpoint for this agent."""
        return control_url(self.cloud_url)


SETTINGS = settings_of(AgentConfig)


def build_parser() -> Parser:
    """The flags of `pits-agent`."""
    parser = Parser(
        prog="pits-agent",
        description="Dial out to the Pitlink cloud relay and serve FPVTrackside's data through it.",
    )
    add_flags(parser, SETTINGS)
    return parser


def _refuse_unknown_keys(text: str, source: str) -> None:
    """A key no setting has, named with its line and the setting it most likely means."""
    known = {s.key for s in SETTINGS} | IMAGE_KEYS
    for number, line in enumerate(text.splitlines(), start=1):
        for key in parse_conf(line, source=source):  # one line: its key, or none
            if key not in known:
                close = difflib.get_close_matches(key, sorted(known), n=1)
                hint = f": did you mean {close[0]}?" if close else ""
                raise ConfigError(f"{source} line {number}: unknown setting {key[:40]}{hint}")


def load_config(argv: Sequence[str], env: Mapping[str, str] | None = None) -> AgentConfig:
    """Flags beat environment, environment beats the config file. Raises ConfigError."""
    env = os.environ if env is None else env
    config_path = lenient(SETTINGS, ["config_file"], argv, env)["config_file"]
    file_values: dict[str, str] = {}
    try:
        if config_path is not None:
            try:
                # utf-8-sig: Notepad's "UTF-8 with BOM" must read like plain UTF-8.
                text = config_path.read_text(encoding="utf-8-sig")
            except OSError as exc:
                raise ConfigError(
                    f"cannot read config file {config_path}: {exc.strerror}"
                ) from None
            file_values = parse_conf(text, source=str(config_path))
            _refuse_unknown_keys(text, str(config_path))
        values = resolve(SETTINGS, build_parser(), argv, env, file_values, ignored=IMAGE_KEYS)
    except SettingsError as exc:
        raise ConfigError(str(exc)) from None
    urls = values["cloud_urls"]
    if not urls:
        raise ConfigError("no cloud URL: set CLOUD_URL in the config file or --cloud-url")
    if values["token_file"] is None and values["state_dir"] is not None:
        values["token_file"] = values["state_dir"] / "token"
    if values["token_file"] is None:
        raise ConfigError(
            "no token: set TOKEN and STATE_DIR (or TOKEN_FILE) in the config file, or --token-file"
        )
    ca = values["cloud_ca"]
    if ca is not None and not ca.is_absolute() and config_path is not None:
        values["cloud_ca"] = config_path.parent / ca  # a file beside pitlink.conf
    token = values["token"]

    if token is not None and not token.strip():
        raise ConfigError("TOKEN is empty: paste the token the relay's operator gave you")
    values.update(cloud_url=urls[0], cloud_urls=urls[1:], token=(token or "").strip() or None)
    return AgentConfig(**values)
