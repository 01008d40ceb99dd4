"""The relay's configuration: one frozen dataclass, built in one place from flags and env."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cloud.ratelimit import parse_networks
from wire.paths import DEFAULT_ALLOWLIST, Allowlist
from wire.settings import Parser, SettingsError, log_level, positive_int, resolve

MIB = 1024 * 1024


def _ttl_rule(text: str) -> tuple[str, float]:
    pattern, sep, seconds = text.rpartition("=")
    try:
        if not sep or not pattern.startswith("/"):
            raise ValueError
        value = float(seconds)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not PATTERN=SECONDS, e.g. /events/*/Results.json=5"
        ) from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: the seconds must not be negative")
    Allowlist([pattern])  # a bad pattern fails now, in its own words
    return pattern, value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must not be negative")
    return value


def _rate(text: str) -> float | None:
    """A non-negative number where 0 means off (None)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must not be negative (0 turns it off)")
    return value or None


def _proxies(items: list[str]) -> tuple[str, ...]:
    """Check proxy addresses now, so a typo fails at start and not on the first request."""
    parse_networks(items)
    return tuple(item.strip() for item in items if item.strip())


@dataclass(frozen=True, kw_only=True)
class CloudConfig:
    """Everything `cloud-relay serve` can be told."""

    host: str = "127.0.0.1"
    port: int = 8080
    jwks: Path
    revoked: Path | None = None
    state_dir: Path | None = None
    active_pits: str | None = None
    fetch_timeout: float = 8.0
    freshness: float = 1.0
    ttl: tuple[tuple[str, float], ...] = ()
    cache_max_entries: int = 10_000
    cache_max_bytes: int = 256 * MIB
    max_body_bytes: int = 8 * MIB
    ping_interval: float = 5.0
    ping_timeout: float = 15.0
    per_conn_concurrency: int = 8
    queue_size: int = 64
    ready_queue_threshold: int = 32
    pits_fetch_rate: float | None = 100.0
    pits_fetch_burst: float = 200.0
    client_rate: float | None = 50.0
    client_burst: float = 200.0
    client_miss_rate: float | None = 10.0
    client_miss_burst: float = 50.0
    trusted_proxy: tuple[str, ...] = ()
    renew_before: float | None = 7 * 86400.0
    redis_url: str | None = None
    node_id: str | None = None
    redis_cache_ttl: float = 3600.0
    grace_period: float = 10.0
    workers: int = 1
    public_allowlist: tuple[str, ...] = field(default=DEFAULT_ALLOWLIST)
    admin_host: str | None = None
    admin_port: int | None = None
    admin_address: str | None = None
    idle_timeout: float = 30.0
    max_header_bytes: int = 16 * 1024
    log_level: str = "INFO"


def build_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    d = CloudConfig(jwks=Path("."))
    a = parser.add_argument
    a("--host", default=d.host, help="address to listen on (default %(default)s)")
    a("--port", type=int, default=d.port, help="port to listen on (default %(default)s)")
    a("--jwks", type=Path, help="the key set file (JWKS) that verifies tokens (required)")
    a(
        "--revoked",
        type=Path,
        help="revoked token ids, one per line (default: the JWKS file's name + .revoked)",
    )
    a(
        "--state-dir",
        type=Path,
        help="a writable folder for what the relay notes (which tokens it renewed); "
        "default: beside the JWKS file",
    )
    a(
        "--active-pits",
        default=None,
        help="pits served at /events and /httpfiles (default: the only one)",
    )
    a(
        "--fetch-timeout",
        type=float,
        default=d.fetch_timeout,
        help="overall deadline of a public request, s (default %(default)s)",
    )
    a(
        "--freshness",
        type=float,
        default=d.freshness,
        help="seconds a cached copy is served without asking the pits (default %(default)s)",
    )
    a(
        "--ttl",
        type=_ttl_rule,
        action="append",
        default=[],
        help="PATTERN=SECONDS freshness for matching paths; repeatable",
    )
    a(
        "--cache-max-entries",
        type=int,
        default=d.cache_max_entries,
        help="cache bound in entries (default %(default)s)",
    )
    a(
        "--cache-max-bytes",
        type=int,
        default=d.cache_max_bytes,
        help="cache bound in body bytes (default %(default)s)",
    )
    a(
        "--max-body-bytes",
        type=int,
        default=d.max_body_bytes,
        help="largest body accepted from a pits (default %(default)s)",
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
        help="close a pits connection silent this long, s (default %(default)s)",
    )
    a(
        "--per-conn-concurrency",
        type=positive_int,
        default=d.per_conn_concurrency,
        help="fetches in flight per pits (default %(default)s)",
    )
    a(
        "--queue-size",
        type=_non_negative_int,
        default=d.queue_size,
        help="fetches waiting per pits before load is shed (default %(default)s)",
    )
    a(
        "--ready-queue-threshold",
        type=_non_negative_int,
        default=d.ready_queue_threshold,
        help="/readyz is 503 while a pits queue is deeper (default %(default)s)",
    )
    a(
        "--pits-fetch-rate",
        type=_rate,
        default=d.pits_fetch_rate,
        help="fetches a second to one pits, 0 for no limit (default %(default)s)",
    )
    a(
        "--pits-fetch-burst",
        type=float,
        default=d.pits_fetch_burst,
        help="fetches one pits may take at once (default %(default)s)",
    )
    a(
        "--client-rate",
        type=_rate,
        default=d.client_rate,
        help="public requests a second per client address, 0 for no limit (default %(default)s)",
    )
    a(
        "--client-burst",
        type=float,
        default=d.client_burst,
        help="requests a client may make at once (default %(default)s)",
    )
    a(
        "--client-miss-rate",
        type=_rate,
        default=d.client_miss_rate,
        help="requests a second per client address that start a fetch from a pits, 0 for no "
        "limit (default %(default)s)",
    )
    a(
        "--client-miss-burst",
        type=float,
        default=d.client_miss_burst,
        help="such requests a client may make at once (default %(default)s)",
    )
    a(
        "--trusted-proxy",
        action="append",
        default=[],
        help="address or CIDR of a proxy whose X-Forwarded-For is believed; repeatable",
    )
    a(
        "--renew-before",
        type=_rate,
        default=d.renew_before,
        help="renew a pits token this many s before it expires, 0 never (default %(default)s)",
    )
    a(
        "--redis-url",
        help="redis://host:port/db shared by several replicas (default: none, one process)",
    )
    a("--node-id", help="this replica's name in the cluster (default: generated)")
    a(
        "--redis-cache-ttl",
        type=float,
        default=d.redis_cache_ttl,
        help="seconds a body stays in the shared cache (default %(default)s)",
    )
    a(
        "--workers",
        type=positive_int,
        default=d.workers,
        help="processes sharing the port (needs --redis-url when more than 1; default %(default)s)",
    )
    a(
        "--grace-period",
        type=float,
        default=d.grace_period,
        help="on SIGTERM, seconds to finish requests in flight (default %(default)s)",
    )
    a(
        "--public-allowlist",
        action="append",
        default=[],
        help="path pattern served publicly; repeatable (default / /events/** /httpfiles/**)",
    )
    a(
        "--admin-host",
        help="serve the admin page and API only on this host name, and nothing else there",
    )
    a(
        "--admin-port",
        type=int,
        help="serve the admin page and API on a listener of their own, on this port",
    )
    a(
        "--admin-address",
        help="address of the admin listener (default: the same as --host)",
    )
    a(
        "--idle-timeout",
        type=float,
        default=d.idle_timeout,
        help="close a client connection idle (or sending its headers) this long, s (default %(default)s)",
    )
    a(
        "--max-header-bytes",
        type=positive_int,
        default=d.max_header_bytes,
        help="largest request header accepted (default %(default)s)",
    )
    a(
        "--log-level",
        type=log_level,
        default=d.log_level,
        help="DEBUG, INFO, WARNING or ERROR (default %(default)s)",
    )
    return parser


def config_from_args(argv: Sequence[str], env: Mapping[str, str] | None = None) -> CloudConfig:
    """Parse `serve` flags (with PITLINK_* environment defaults) into a CloudConfig."""
    parser = build_parser(
        Parser(
            prog="cloud-relay serve", description="Run the relay: boxes dial in, spectators read."
        )
    )
    ns = resolve(parser, argv, os.environ if env is None else env)
    if ns.jwks is None:
        raise SettingsError(
            "--jwks (or PITLINK_JWKS) is required: the key set that verifies tokens; "
            "make one with `cloud-relay keygen --jwks FILE`"
        )
    if ns.workers > 1 and not ns.redis_url:
        raise SettingsError(
            "--workers above 1 needs --redis-url: the workers reach each other through it"
        )
    if ns.workers > 1 and ns.port == 0:
        raise SettingsError("--workers above 1 needs a fixed --port (each worker binds it)")
    if ns.admin_port is not None and ns.workers > 1:
        raise SettingsError("--admin-port serves one process: use --admin-host with --workers")
    return CloudConfig(
        host=ns.host,
        port=ns.port,
        jwks=ns.jwks,
        revoked=ns.revoked,
        state_dir=ns.state_dir,
        active_pits=ns.active_pits or None,
        fetch_timeout=ns.fetch_timeout,
        freshness=ns.freshness,
        ttl=tuple(ns.ttl),
        cache_max_entries=ns.cache_max_entries,
        cache_max_bytes=ns.cache_max_bytes,
        max_body_bytes=ns.max_body_bytes,
        ping_interval=ns.ping_interval,
        ping_timeout=ns.ping_timeout,
        per_conn_concurrency=ns.per_conn_concurrency,
        queue_size=ns.queue_size,
        ready_queue_threshold=ns.ready_queue_threshold,
        pits_fetch_rate=ns.pits_fetch_rate,
        pits_fetch_burst=ns.pits_fetch_burst,
        client_rate=ns.client_rate,
        client_burst=ns.client_burst,
        client_miss_rate=ns.client_miss_rate,
        client_miss_burst=ns.client_miss_burst,
        trusted_proxy=_proxies(ns.trusted_proxy),
        renew_before=ns.renew_before,
        redis_url=ns.redis_url or None,
        node_id=ns.node_id or None,
        redis_cache_ttl=ns.redis_cache_ttl,
        grace_period=ns.grace_period,
        workers=ns.workers,
        public_allowlist=tuple(ns.public_allowlist) or DEFAULT_ALLOWLIST,
        admin_host=(ns.admin_host or "").strip().lower() or None,
        admin_port=ns.admin_port,
        admin_address=ns.admin_address or None,
        idle_timeout=ns.idle_timeout,
        max_header_bytes=ns.max_header_bytes,
        log_level=ns.log_level,
    )
