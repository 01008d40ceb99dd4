"""The relay's configuration: one frozen dataclass whose fields declare the settings.

Each field says once what its flag means, how it is read and checked, and its default;
wire.settings makes the flags, the PITLINK_* environment, `--help` and the docs' table from it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cloud.clients import Origin, parse_networks, parse_public_url
from wire.paths import DEFAULT_ALLOWLIST
from wire.settings import (
    Parser,
    SettingsError,
    add_flags,
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

MIB = 1024 * 1024
REPLICAS = "several replicas on Redis"  # a table and a --help section of their own


def _ttl_rule(text: str) -> tuple[str, float]:
    pattern, sep, seconds = text.rpartition("=")
    try:
        if not sep or not pattern.startswith("/"):
            raise ValueError
        value = float(seconds)
    except ValueError:
        raise ValueError(
            f"{text!r} is not PATTERN=SECONDS, e.g. /events/*/Results.json=5"
        ) from None
    if value < 0:
        raise ValueError(f"{text!r}: the seconds must not be negative")
    return path_pattern(pattern), value


def _proxy(text: str) -> str:
    """Checked now, so that a typo fails at start and not on the first request."""
    parse_networks([text])
    return text.strip()


def _public_url(text: str) -> Origin | None:
    return parse_public_url(text) if text.strip() else None


def _prefix(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 128:
        raise ValueError(f"{text!r} is not a prefix length from 1 to 128")
    return value


def _host_name(text: str) -> str | None:
    return text.strip().lower() or None


_DOMAIN = re.compile(
    r"(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
)


def _domain(text: str) -> str | None:
    name = text.strip().lower().rstrip(".")
    if not name:
        return None
    if len(name) > 200 or not _DOMAIN.fullmatch(name):
        raise ValueError(f"{text[:80]!r} is not a domain name")
    return name


@dataclass(frozen=True, kw_only=True)
class CloudConfig:
    """Everything `cloud-relay serve` can be told."""

    host: str = setting("127.0.0.1", "address to listen on")
    port: int = setting(8080, "port to listen on", tcp_port)
    jwks: Path = setting(  # noqa: RUF009 (setting() is a field())
        help="the key set file (JWKS) that verifies tokens", convert=Path
    )
    active_pits: str | None = setting(
        None,
        "which pits `/events/**` and `/httpfiles/**` at the root serve; never changes by itself",
        text_or_none,
        shown="the first pits to connect",
    )
    state_dir: Path | None = setting(  # noqa: RUF009 (setting() is a field())
        None,
        "a writable folder for what the relay notes (the tokens it renewed)",
        Path,
        shown="beside the JWKS file",
    )
    fetch_timeout: float = setting(
        8.0, "overall deadline of one public request, seconds", positive_float
    )
    freshness: float = setting(
        1.0, "seconds a cached copy is served without asking the pits", non_negative_float
    )
    no_schema_check: bool = setting(
        False,
        "do not check new bodies from pits against FPVTrackside's JSON Schemas (upstream drift)",
        switch=True,
    )
    no_push: bool = setting(
        False,
        "do not take pushes from boxes: every pits is pulled from as by a relay before push "
        "(for comparisons; the live feed then tells only of boxes connecting and going)",
        switch=True,
    )
    no_age_notice: bool = setting(
        False,
        "do not add the relay's age notice (a bar saying the box is offline, or the copies old) "
        "to pits' HTML pages: they are then served byte for byte",
        switch=True,
    )
    age_notice_poll: float = setting(
        10.0, "seconds between the age notice's looks at its box's state", positive_float
    )
    age_notice_max_bytes: int = setting(
        1 * MIB,
        "largest pits HTML page the age notice is added to; larger ones are served unchanged",
        positive_int,
    )
    ttl: tuple[tuple[str, float], ...] = setting(
        (),
        "freshness for matching paths (`*` one segment, `**` any depth); repeatable",
        _ttl_rule,
        repeatable=True,
        metavar="PATTERN=SECONDS",
    )
    cache_max_entries: int = setting(10_000, "cache bound, entries", positive_int)
    cache_max_bytes: int = setting(256 * MIB, "cache bound, body bytes", positive_int)
    max_body_bytes: int = setting(8 * MIB, "largest body accepted from a pits", positive_int)
    ping_interval: float = setting(
        5.0, "seconds between pings on each pits connection", positive_float
    )
    ping_timeout: float = setting(
        15.0, "a pits connection silent this long is closed, seconds", positive_float
    )
    revoked: Path | None = setting(  # noqa: RUF009 (setting() is a field())
        None, "revoked token ids, one per line", Path, shown="the JWKS file's name + `.revoked`"
    )
    per_conn_concurrency: int = setting(8, "fetches in flight to one pits", positive_int)
    queue_size: int = setting(
        64,
        "fetches waiting for one pits; past it requests are shed (503 + `Retry-After`)",
        non_negative_int,
    )
    ready_queue_threshold: int = setting(
        32, "`/readyz` answers 503 while a pits queue is deeper", non_negative_int
    )
    pits_fetch_rate: float | None = setting(
        100.0,
        "fetches a second to one pits (0: no limit); past it the stale copy, or 429",
        rate,
    )
    pits_fetch_burst: float = setting(200.0, "fetches one pits may take at once", positive_float)
    client_rate: float | None = setting(
        50.0,
        "public requests a second per client address (0: no limit); past it 429 + `Retry-After`",
        rate,
    )
    client_burst: float = setting(200.0, "requests a client may make at once", positive_float)
    client_miss_rate: float | None = setting(
        10.0,
        "requests a second per client address that start a fetch from a pits (0: no limit); "
        "past it the stale copy, or 429",
        rate,
    )
    client_miss_burst: float = setting(
        50.0, "such requests a client may make at once", positive_float
    )
    client_ipv6_prefix: int = setting(
        64,
        "an IPv6 client is its network of this prefix length, for the per-client limits (one "
        "host may send from any address of its /64)",
        _prefix,
    )
    trusted_proxy: tuple[str, ...] = setting(
        (),
        "address or CIDR of a proxy whose `X-Forwarded-For`, `X-Forwarded-Proto` and "
        "`X-Forwarded-Host` are believed; repeatable",
        _proxy,
        repeatable=True,
    )
    public_url: Origin | None = setting(  # noqa: RUF009 (setting() is a field())
        None,
        "the relay's address as the public reaches it (`https://relay.example.com`), from "
        "which every absolute address it writes is made: redirects to pits hosts, the front "
        "page, the admin page's links",
        _public_url,
        shown="from a trusted proxy's `X-Forwarded-Proto`/`-Host`, else the request",
    )
    renew_before: float | None = setting(
        7 * 86400.0,
        "renew a pits token over its connection this many seconds before it expires (0: never)",
        rate,
    )
    public_allowlist: tuple[str, ...] = setting(
        DEFAULT_ALLOWLIST, "paths served publicly; repeatable", path_pattern, repeatable=True
    )
    admin_host: str | None = setting(
        None,
        "serve the admin page and API only on this host name (and nothing else there)",
        _host_name,
    )
    admin_port: int | None = setting(
        None, "serve the admin page and API on a listener of their own, on this port", tcp_port
    )
    pits_domain: str | None = setting(
        None,
        "serve pits ID at ID.DOMAIN as FPVTrackside serves its own root (a wildcard DNS name); "
        "the admin then answers only on DOMAIN itself or --admin-host",
        _domain,
    )
    admin_address: str | None = setting(
        None, "address of that listener", text_or_none, shown="`--host`"
    )
    idle_timeout: float = setting(
        30.0,
        "close a client connection idle, or still sending its headers, this long (seconds)",
        positive_float,
    )
    max_header_bytes: int = setting(16 * 1024, "largest request header accepted", positive_int)
    write_timeout: float = setting(
        30.0,
        "close a client connection that takes nothing of a response this long (seconds): a "
        "bundle download, a feed, any answer",
        positive_float,
    )
    feed_max_subscribers: int = setting(
        20_000,
        "live feed subscribers (`<pits base>/pitlink/live`) this process holds, all pits",
        positive_int,
    )
    feed_per_client: int = setting(
        # A venue's Wi-Fi, or a mobile network's shared IPv4 address, is one client to the
        # relay and many phones on the race page: the bound is for a flood, not a crowd.
        100,
        "live feed subscribers one client address may hold at once",
        positive_int,
    )
    feed_heartbeat: float = setting(
        15.0,
        "seconds between the feed's keep-alive comments (proxies close a silent connection)",
        positive_float,
    )
    bundle_dir: Path | None = setting(  # noqa: RUF009 (setting() is a field())
        None,
        "a writable folder of update bundles and their offers (shared by all replicas); "
        "none: updates through the relay are off",
        Path,
    )
    max_bundle_bytes: int = setting(
        1024 * MIB, "largest update bundle the admin API accepts", positive_int
    )
    workers: int = setting(
        1,
        'processes sharing the port (needs `--redis-url` above 1); see "Several replicas on Redis"',
        positive_int,
    )
    log_level: str = setting(
        "INFO", "how much to log: `DEBUG`, `INFO`, `WARNING` or `ERROR`", log_level_name
    )
    redis_url: str | None = setting(
        None,
        "`redis://host:port/db` shared by the replicas; none: one process alone",
        text_or_none,
        group=REPLICAS,
    )
    node_id: str | None = setting(
        None,
        "this replica's name (in logs, `/readyz` and the admin view)",
        text_or_none,
        shown="generated",
        group=REPLICAS,
    )
    redis_cache_ttl: float = setting(
        3600.0,
        "seconds a body stays in the shared cache (what FPVTrackside does not have, an empty "
        "body or `[]`, a minute at most)",
        positive_float,
        group=REPLICAS,
    )
    grace_period: float = setting(
        10.0,
        "on `SIGTERM`, seconds to finish the requests in flight",
        non_negative_float,
        group=REPLICAS,
    )


SETTINGS = settings_of(CloudConfig)


def build_parser() -> Parser:
    """The flags of `cloud-relay serve`."""
    parser = Parser(
        prog="cloud-relay serve", description="Run the relay: boxes dial in, spectators read."
    )
    add_flags(parser, SETTINGS)
    return parser


def config_from_args(argv: Sequence[str], env: Mapping[str, str] | None = None) -> CloudConfig:
    """Parse `serve` flags (with PITLINK_* environment defaults) into a CloudConfig."""
    values = resolve(SETTINGS, build_parser(), argv, os.environ if env is None else env)
    if values["jwks"] is None:
        raise SettingsError(
            "--jwks (or PITLINK_JWKS) is required: the key set that verifies tokens; "
            "make one with `cloud-relay keygen --jwks FILE`"
        )
    config = CloudConfig(**values)
    if config.workers > 1 and not config.redis_url:
        raise SettingsError(
            "--workers above 1 needs --redis-url: the workers reach each other through it"
        )
    if config.workers > 1 and config.port == 0:
        raise SettingsError("--workers above 1 needs a fixed --port (each worker binds it)")
    if config.admin_port is not None and config.workers > 1:
        raise SettingsError("--admin-port serves one process: use --admin-host with --workers")
    return config
