"""The agent's configuration: one frozen dataclass built from flags, environment and file."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from pits_appliance import ConfigError
from wire.paths import DEFAULT_ALLOWLIST
from wire.settings import Parser, SettingsError, log_level, parse_conf, positive_int, resolve

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
    }
)


@dataclass(frozen=True, kw_only=True)
class AgentConfig:
    """Everything `pits-agent` can be told."""

    cloud_url: str
    cloud_urls: tuple[str, ...] = ()  # more relays to move on to after failures
    token_file: Path
    fpvtrackside: str = "http://127.0.0.1:8080"
    pits_id: str | None = None
    status_host: str = "0.0.0.0"
    status_port: int = 8081
    allowlist: tuple[str, ...] = DEFAULT_ALLOWLIST
    fetch_timeout: float = 5.0
    max_body_bytes: int = 8 * MIB
    origin_concurrency: int = 2
    max_concurrent_commands: int = 8
    ping_interval: float = 5.0
    ping_timeout: float = 15.0
    reconnect_base: float = 1.0
    reconnect_cap: float = 60.0
    origin_check_interval: float = 10.0
    log_level: str = "INFO"
    token: str | None = None
    state_dir: Path | None = None
    check_interval: float = 60.0
    allow_network_restart: bool = False
    network_restart_command: str = "systemctl restart systemd-networkd"
    captive_portal_api: str | None = None
    paused: bool = False
    print_pits_id: bool = False

    @property
    def control_url(self) -> str:
        """The relay's WebSocket endpoint for this agent."""
        return control_url(self.cloud_url)


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


def _http_url(text: str) -> str:
    parts = urlsplit(text if "://" in text else "http://" + text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("expected an address like http://192.168.1.20:8080")
    return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


def build_parser() -> argparse.ArgumentParser:
    d = AgentConfig(cloud_url="", token_file=Path("."))
    p = Parser(
        prog="pits-agent",
        description="Dial out to the Pitlink cloud relay and serve FPVTrackside's data through it.",
    )
    a = p.add_argument
    a("--config", type=Path, help="a KEY=VALUE file read before environment and flags")
    a(
        "--cloud-url",
        action="append",
        default=[],
        help="the relay, e.g. https://relay.example.com (required); repeat for several, tried in turn",
    )
    a(
        "--token-file",
        type=Path,
        help="file holding this pits' token (default: STATE_DIR/token; one of the two is needed)",
    )
    a(
        "--fpvtrackside",
        type=_http_url,
        default=d.fpvtrackside,
        help="FPVTrackside's web server (default %(default)s)",
    )
    a("--pits-id", help="this pits' id (default: the token's subject)")
    a(
        "--status-host",
        default=d.status_host,
        help="address of the status page (default %(default)s)",
    )
    a(
        "--status-port",
        type=int,
        default=d.status_port,
        help="port of the status page (default %(default)s)",
    )
    a(
        "--allow",
        action="append",
        default=[],
        help="path pattern the cloud may fetch; repeatable (default / /events/** /httpfiles/**)",
    )
    a(
        "--fetch-timeout",
        type=float,
        default=d.fetch_timeout,
        help="deadline of one request to FPVTrackside, s (default %(default)s)",
    )
    a(
        "--max-body-bytes",
        type=int,
        default=d.max_body_bytes,
        help="largest body read from FPVTrackside (default %(default)s)",
    )
    a(
        "--origin-concurrency",
        type=positive_int,
        default=d.origin_concurrency,
        help="requests to FPVTrackside at once (default %(default)s)",
    )
    a(
        "--max-concurrent-commands",
        type=positive_int,
        default=d.max_concurrent_commands,
        help="fetches handled at once; more are answered BUSY (default %(default)s)",
    )
    a(
        "--ping-interval",
        type=float,
        default=d.ping_interval,
        help="seconds between pings (default %(default)s)",
    )
    a(
        "--ping-timeout",
        type=float,
        default=d.ping_timeout,
        help="reconnect when the cloud is silent this long, s (default %(default)s)",
    )
    a(
        "--reconnect-base",
        type=float,
        default=d.reconnect_base,
        help="first reconnect delay ceiling, s (default %(default)s)",
    )
    a(
        "--reconnect-cap",
        type=float,
        default=d.reconnect_cap,
        help="largest reconnect delay, s (default %(default)s)",
    )
    a(
        "--origin-check-interval",
        type=float,
        default=d.origin_check_interval,
        help="seconds between checks that FPVTrackside answers (default %(default)s)",
    )
    a(
        "--token",
        help="this pits' token; written to the state directory's token file on first start",
    )
    a("--state-dir", type=Path, help="where the box keeps what must survive a reboot (the token)")
    a(
        "--check-interval",
        type=float,
        default=d.check_interval,
        help="seconds between connectivity checks while all is well (default %(default)s)",
    )
    a(
        "--allow-network-restart",
        action="store_true",
        help="let recovery restart networking (on the image)",
    )
    a(
        "--network-restart-command",
        default=d.network_restart_command,
        help="how recovery restarts networking (default %(default)s)",
    )
    a(
        "--captive-portal-api",
        help="the network's captive portal API (RFC 8908), when not learned from DHCP",
    )
    a("--paused", action="store_true", help="start with answering the cloud paused")
    a(
        "--print-pits-id",
        action="store_true",
        help="print this box's pits id (from the settings or the token) and exit",
    )
    a(
        "--error-hold",
        type=float,
        default=60.0,
        help="on a settings error, show it on the status page this many s before exiting (default %(default)s)",
    )
    a(
        "--log-level",
        type=log_level,
        default=d.log_level,
        help="DEBUG, INFO, WARNING or ERROR (default %(default)s)",
    )
    return p


def load_config(argv: Sequence[str], env: Mapping[str, str] | None = None) -> AgentConfig:
    """Flags beat environment, environment beats the config file. Raises ConfigError."""
    env = os.environ if env is None else env
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", type=Path)
    known, _ = pre.parse_known_args(list(argv))
    config_path = known.config or (
        Path(env["PITLINK_CONFIG"]) if env.get("PITLINK_CONFIG") else None
    )
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
        ns = resolve(build_parser(), argv, env, file_values, ignored=IMAGE_KEYS)
    except SettingsError as exc:
        raise ConfigError(str(exc)) from None
    if not ns.cloud_url:
        raise ConfigError("no cloud URL: set CLOUD_URL in the config file or --cloud-url")
    token_file = ns.token_file
    if token_file is None and ns.state_dir is not None:
        token_file = ns.state_dir / "token"
    if token_file is None:
        raise ConfigError(
            "no token: set TOKEN and STATE_DIR (or TOKEN_FILE) in the config file, or --token-file"
        )
    if ns.token is not None and not ns.token.strip():
        raise ConfigError("TOKEN is empty: paste the token the relay's operator gave you")
    for url in ns.cloud_url:
        control_url(url)  # refuse a bad URL now, in plain words
    return AgentConfig(
        cloud_url=ns.cloud_url[0],
        cloud_urls=tuple(ns.cloud_url[1:]),
        token_file=token_file,
        token=(ns.token or "").strip() or None,
        state_dir=ns.state_dir,
        check_interval=ns.check_interval,
        allow_network_restart=ns.allow_network_restart,
        network_restart_command=ns.network_restart_command,
        captive_portal_api=ns.captive_portal_api,
        paused=ns.paused,
        print_pits_id=ns.print_pits_id,
        fpvtrackside=ns.fpvtrackside,
        pits_id=ns.pits_id or None,
        status_host=ns.status_host,
        status_port=ns.status_port,
        allowlist=tuple(ns.allow) or DEFAULT_ALLOWLIST,
        fetch_timeout=ns.fetch_timeout,
        max_body_bytes=ns.max_body_bytes,
        origin_concurrency=ns.origin_concurrency,
        max_concurrent_commands=ns.max_concurrent_commands,
        ping_interval=ns.ping_interval,
        ping_timeout=ns.ping_timeout,
        reconnect_base=ns.reconnect_base,
        reconnect_cap=ns.reconnect_cap,
        origin_check_interval=ns.origin_check_interval,
        log_level=ns.log_level,
    )
