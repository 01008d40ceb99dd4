"""The relay as one object: its parts wired together, its routes, and its lifecycle."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable
from typing import Any

import tornado
import tornado.httpserver
import tornado.httputil
import tornado.ioloop
import tornado.netutil
import tornado.web

from cloud.active import ActivePits
from cloud.admin import Admin, PublicAllowlist
from cloud.age_notice import AgeNotice
from cloud.age_state import BoxAge, StaleAnswers
from cloud.bundles import BundleStore
from cloud.cache import Cache
from cloud.clients import Clients, Origin, PublicAddress, parse_networks
from cloud.cluster import Cluster
from cloud.config import CloudConfig
from cloud.control import FEATURES, ControlSettings, PitsConnection, Transport
from cloud.drain import Drain
from cloud.drift import DriftWatch, Schemas
from cloud.handlers import Layout, admin_application, public_application
from cloud.hitfirst import HitFirst
from cloud.hits import Hits
from cloud.hosts import HostRouting
from cloud.http_base import Stalls
from cloud.keystore import KeyStore
from cloud.listen import bind, http_server
from cloud.live import Live
from cloud.metrics import Metrics
from cloud.ratelimit import RateLimiter, SharedLimiter
from cloud.registry import Registry
from cloud.relay import Freshness, Relay
from cloud.renewal import Renewals
from cloud.routing import Router
from cloud.updates import Updates
from wire import CloseCode
from wire.push import FEATURE_PUSH

log = logging.getLogger("pitlink.cloud")


class CloudRelay:
    """The cloud relay: its parts wired together, its routes and its lifecycle.

    The parts are plain objects that know only what they are given (the registry, the cache,
    the serving logic, the admin, the cluster); this object builds them, hands the handlers
    what they use (cloud.handlers.RelayParts), and runs the server.
    """

    def __init__(self, config: CloudConfig, *, clock: Callable[[], float] = time.monotonic):
        self.config = config
        self.clock = clock
        self.metrics = Metrics()
        renewed = None if config.state_dir is None else config.state_dir / "renewed"
        self.keystore = KeyStore(config.jwks, config.revoked, renewed=renewed)
        self.registry: Registry[PitsConnection] = Registry(self.metrics)
        self.keystore.listeners.append(
            lambda: self.registry.revoke(self.keystore.revoked, frozenset(self.keystore.keys.kids))
        )
        self.client_limits = SharedLimiter(
            RateLimiter(config.client_rate, config.client_burst), "client", clock=clock
        )
        self.clients = Clients(
            parse_networks(config.trusted_proxy), ipv6_prefix=config.client_ipv6_prefix
        )
        self.public = PublicAddress(config.public_url, self.clients)
        self.stalls = Stalls(config.write_timeout, self.metrics, clock=clock)
        self.cache = Cache(max_entries=config.cache_max_entries, max_bytes=config.cache_max_bytes)
        self.metrics.cache_entries.set_function(lambda: len(self.cache))
        self.metrics.cache_bytes.set_function(lambda: self.cache.bytes)
        self.serving = Relay(
            registry=self.registry,
            cache=self.cache,
            metrics=self.metrics,
            freshness=Freshness(config.freshness, config.ttl),
            fetch_timeout=config.fetch_timeout,
            pits_limiter=RateLimiter(config.pits_fetch_rate, config.pits_fetch_burst),
            miss_limiter=RateLimiter(config.client_miss_rate, config.client_miss_burst),
            clock=clock,
            drift=None
            if config.no_schema_check
            else DriftWatch(
                Schemas(),
                mismatches=self.metrics.schema_mismatches,
                last_mismatch=self.metrics.schema_mismatch_last,
                unchecked=self.metrics.schema_unchecked,
                log=logging.getLogger("pitlink.cloud.drift"),
                wall=time.time,
                monotonic=clock,
            ),
        )
        self.active = ActivePits(config.active_pits)
        self.registry.on_register.append(self._offer_active)
        bundles = (
            None
            if config.bundle_dir is None
            else BundleStore(config.bundle_dir, max_bytes=config.max_bundle_bytes)
        )
        self.updates = Updates(bundles, self.registry, self.metrics)
        self.registry.on_register.append(self.updates.connected)
        self.public_allowlist = PublicAllowlist(config.public_allowlist)
        self.hosts = (
            None
            if config.pits_domain is None
            else HostRouting(config.pits_domain, config.admin_host)
        )
        self.router = Router(
            active=self.active,
            allowlist=self.public_allowlist,
            live=self._live_ids,
            hosts=self.hosts,
        )
        self.drain = Drain()
        self._background: set[asyncio.Task[None]] = set()
        self.cluster: Cluster | None = None
        if config.redis_url:
            self.cluster = cluster = Cluster(
                config.redis_url,
                registry=self.registry,
                active=self.active,
                metrics=self.metrics,
                serve=lambda pits, path, request_id: self.serving.get(
                    pits, path, request_id=request_id, local_only=True
                ),
                clock=clock,
                fetch_timeout=config.fetch_timeout,
                node_id=config.node_id,
                cache_ttl=config.redis_cache_ttl,
            )
            self.serving.share(cluster)
            self.client_limits.remote = cluster.limits
            self.registry.on_register.append(lambda p: self._spawn(cluster.holders.claim(p)))
            self.registry.on_unregister.append(lambda p: self._spawn(cluster.holders.release(p)))
        self.live = Live(
            config,
            registry=self.registry,
            serving=self.serving,
            allowlist=self.public_allowlist,
            metrics=self.metrics,
            cluster=self.cluster,
            clients=self.clients,
            client_limits=self.client_limits,
            stalls=self.stalls,
            drain=self.drain,
            relay_path=self.router.relay_path,
            hosts=self.hosts,
            pits_moved=self.pits_moved,
            server=f"TornadoServer/{tornado.version}",
            clock=clock,
        )
        if self.cluster is not None:
            self.cluster.describe_more = self.live.push.describe
        # The age notice on pits' HTML pages (cloud.age_notice), and what its script asks.
        self.age_notice = (
            None if config.no_age_notice else AgeNotice(max_bytes=config.age_notice_max_bytes)
        )
        self.box_age = BoxAge(
            registry=self.registry,
            channels=self.live.feed.channels.get,
            stale=StaleAnswers(wall=time.time),
            poll=config.age_notice_poll,
            wall=time.time,
        )
        self.renewals = Renewals(
            self.keystore, once=None if self.cluster is None else self.cluster.limits.claim_once
        )
        self.admin = Admin(
            registry=self.registry,
            cache=self.cache,
            metrics=self.metrics,
            allowlist=self.public_allowlist,
            active=self.active,
            choose_active=self.choose_active,
            ready=self.ready,
            updates=self.updates,
            cluster=self.cluster,
            drift=self.serving.drift.first if self.serving.drift is not None else None,
            live=self.live.push.describe,
            pits_url=None if self.hosts is None else self.pits_url,
        )
        self.control_settings = ControlSettings(
            ping_interval=config.ping_interval,
            ping_timeout=config.ping_timeout,
            handshake_timeout=config.ping_timeout,
            max_in_flight=config.per_conn_concurrency,
            queue_size=config.queue_size,
            max_body_bytes=config.max_body_bytes,
            renew_before=config.renew_before,
            limits={
                "maxBodyBytes": config.max_body_bytes,
                "maxInFlight": config.per_conn_concurrency,
                "fetchTimeoutMs": int(config.fetch_timeout * 1000),
            },
            refuse_id=None if self.hosts is None else self.hosts.refusal,
            features=tuple(f for f in FEATURES if not (config.no_push and f == FEATURE_PUSH)),
        )
        self.app = self.make_app()
        self.hits = Hits(
            serving=self.serving,
            route=self.route,
            drain=self.drain,
            client_limits=self.client_limits,
            clients=self.clients,
            metrics=self.metrics,
            server=f"TornadoServer/{tornado.version}",
            # The admin's own host answers only the admin (see make_app).
            admin_host=config.admin_host if config.admin_port is None else None,
            hosts=self.hosts,
            pits_moved=self.pits_moved,
            notice=self.age_notice,
            max_prepared=config.cache_max_entries,
            wall=time.time,
        )
        self.server: tornado.httpserver.HTTPServer | None = None
        self.admin_server: tornado.httpserver.HTTPServer | None = None
        self.port: int | None = None
        self.admin_port: int | None = None
        self._ticker: tornado.ioloop.PeriodicCallback | None = None

    def make_app(self) -> tornado.web.Application:
        """The public application (cloud.handlers.public_application)."""
        return public_application(Layout(self, self.config, self.hosts, self.pits_moved))

    def make_admin_app(self) -> tornado.web.Application:
        """The admin listener's application (`--admin-port`)."""
        return admin_application(Layout(self, self.config, self.hosts, self.pits_moved))

    # -- used by handlers ---------------------------------------------------------------------

    def verify_token(self, token: str, *, role: str | None) -> dict[str, Any]:
        return self.keystore.verify(token, role=role)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def readiness(self) -> dict[str, Any]:
        """What /readyz says: ready unless draining or some pits queue is too deep."""
        return {
            "ready": self.ready(),
            "draining": self.drain.draining,
            "connections": len(self.registry.live()),
            "maxQueue": self.registry.max_queue(),
            "queueThreshold": self.config.ready_queue_threshold,
            "redis": "off" if self.cluster is None else ("up" if self.cluster.up else "down"),
            "node": None if self.cluster is None else self.cluster.node_id,
        }

    def ready(self) -> bool:
        """Ready unless some pits queue is deeper than the threshold."""
        if self.drain.draining:
            return False
        return self.registry.max_queue() <= self.config.ready_queue_threshold

    def _tick(self) -> None:
        self.keystore.maybe_reload()
        self.registry.tick()
        self.updates.refresh()
        self.live.tick()

    def new_connection(
        self, claims: dict[str, Any], transport: Transport, *, kid: str | None = None
    ) -> PitsConnection:
        conn = PitsConnection(
            pits_id=claims["sub"],
            claims=claims,
            kid=kid,
            transport=transport,
            registry=self.registry,
            settings=self.control_settings,
            metrics=self.metrics,
            clock=self.clock,
            renew=self.renewals.renew,
            on_update=self.updates.reported,
            on_push=self.live.push.take,
        )
        self.registry.add(conn)
        return conn

    def route(self, path: str, host: str | None = None) -> tuple[str, str]:
        """Map a normalized public path (on `host`) to (pits id, FPVTrackside path), or raise."""
        return self.router.route(path, host)

    def pits_url(self, pits_id: str, origin: Origin | None) -> str | None:
        """A pits' own address (`--pits-domain`) as the public reaches it (`origin`: its scheme
        and port; the relay's own setting, or plain `https`, when no request says); None without
        the flag, or for an id that cannot be a host name."""
        name = None if self.hosts is None else self.hosts.host_of(pits_id)
        if name is None:
            return None
        origin = origin or self.public.public or Origin("https", name)
        return f"{origin.scheme}://{name}{origin.port}/"

    @property
    def pits_moved(self) -> bool:
        """Pits content lives on each pits' host, and the admin on the relay's own name: there,
        a pits path is sent on to the pits' host (never served on the admin's origin)."""
        c = self.config
        return c.pits_domain is not None and c.admin_host is None and c.admin_port is None

    def active_pits_id(self) -> str | None:
        """The active pits, or None when there is none."""
        return self.active.pits_id

    def push_of(self, pits_id: str) -> dict[str, Any]:
        """Does this pits' box push, and when it last changed a file (cloud.push)."""
        return self.live.push.describe(pits_id)

    def _live_ids(self) -> list[str]:
        return [conn.pits_id for conn in self.registry.live()]

    def _offer_active(self, pits_id: str) -> None:
        """A pits finished its handshake: the first one becomes active when none is."""
        if self.active.offer(self._live_ids()):
            log.info("active pits adopted: the first to connect", extra={"pits_id": pits_id})
            if self.cluster is not None:
                self._spawn(self.cluster.adopt_active(pits_id))

    def choose_active(self, pits_id: str | None) -> None:
        """An admin's choice of the active pits (None: automatic again)."""
        self.active.choose(pits_id, self._live_ids())
        if self.cluster is not None:
            self._spawn(self.cluster.publish_active(self.active.pits_id, self.active.how))

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self, sockets: list[socket.socket] | None = None) -> int:
        """Listen (on the configured address, or the given sockets) and start pinging."""
        if sockets is None:
            sockets = bind(self.config.port, self.config.host)
        if self.cluster is not None:
            await self.cluster.start()
        self.server = http_server(
            HitFirst(self.hits, self.app, self.stalls.watch, self.live.gate), self.config
        )
        self.server.add_sockets(sockets)
        self.live.start()
        self.port = sockets[0].getsockname()[1]
        if self.config.admin_port is not None:
            address = self.config.admin_address or self.config.host
            admin_sockets = bind(self.config.admin_port, address)
            self.admin_server = http_server(self.make_admin_app(), self.config)
            self.admin_server.add_sockets(admin_sockets)
            self.admin_port = admin_sockets[0].getsockname()[1]
            log.info("admin listening", extra={"host": address, "port": self.admin_port})
        elif self.config.admin_host is None and self.config.pits_domain is None:
            log.warning(
                "the admin page shares its origin with pits content: give it one of its own "
                "with --admin-host or --admin-port"
            )
        if self.config.public_url is None and not self.config.trusted_proxy:
            log.warning(
                "addresses the relay writes (redirects, links) take each request's own scheme "
                "and Host: behind a TLS proxy, give --public-url (or --trusted-proxy)"
            )
        tick = max(0.05, min(self.config.ping_interval, self.config.ping_timeout) / 5)
        self._ticker = tornado.ioloop.PeriodicCallback(self._tick, tick * 1000)
        self._ticker.start()
        log.info("relay listening", extra={"host": self.config.host, "port": self.port})
        return self.port

    async def shutdown(self, grace: float | None = None) -> None:
        """Leave gracefully: stop taking requests, finish those in flight, then let the pits go.

        The pits connections are closed with 4000 only after the requests in flight are
        answered (they need them), so that the agents dial again at once, and land on another
        replica behind the load balancer, with nothing lost.
        """
        grace = self.config.grace_period if grace is None else grace
        self.drain.draining = True
        if self.server is not None:
            self.server.stop()
        self.live.feed.close_all()  # EventSource dials again at once, and lands elsewhere
        if not await self.drain.wait(grace):
            log.warning("grace period over", extra={"in_flight": self.drain.count})
        for conn in list(self.registry.all):
            conn.close(CloseCode.RECONNECT, "relay restarting: reconnect now")
        await self.stop()

    async def stop(self) -> None:
        """Stop listening and close every pits connection."""
        if self._ticker is not None:
            self._ticker.stop()
        servers = [x for x in (self.server, self.admin_server) if x is not None]
        for server in servers:
            server.stop()
        for conn in list(self.registry.all):
            conn.close(CloseCode.GOING_AWAY, "relay shutting down")
        await self.live.stop()
        if self.cluster is not None:
            await self.cluster.stop()
        for server in servers:
            await server.close_all_connections()
        await asyncio.sleep(0)
