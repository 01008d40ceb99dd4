"""The live parts of the relay, wired together: what boxes push (cloud.push), the feeds
(cloud.feed) and their subscribers (cloud.feed_http), and the feeds across replicas
(cloud.feed_replicas)."""

from __future__ import annotations

import time
from collections.abc import Callable

import tornado.ioloop

from cloud.admin import PublicAllowlist
from cloud.clients import Clients
from cloud.cluster import Cluster
from cloud.config import CloudConfig
from cloud.control import PitsConnection
from cloud.drain import Drain
from cloud.feed import Feed
from cloud.feed_http import FeedGate
from cloud.feed_replicas import FeedReplicas
from cloud.hosts import HostRouting
from cloud.http_base import Stalls
from cloud.metrics import Metrics
from cloud.push import PushIntake
from cloud.ratelimit import SharedLimiter
from cloud.registry import Registry
from cloud.relay import Relay


class Live:
    """Push intake, feeds and their gate for one relay; ticked by the relay."""

    def __init__(
        self,
        config: CloudConfig,
        *,
        registry: Registry[PitsConnection],
        serving: Relay,
        allowlist: PublicAllowlist,
        metrics: Metrics,
        cluster: Cluster | None,
        clients: Clients,
        client_limits: SharedLimiter,
        stalls: Stalls,
        drain: Drain,
        relay_path: Callable[[str, str | None], tuple[str, str] | None],
        hosts: HostRouting | None,
        pits_moved: bool,
        server: str,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.clock = clock
        self.feed = Feed(
            metrics=metrics,
            wall=time.time,
            max_subscribers=config.feed_max_subscribers,
            per_client=config.feed_per_client,
        )
        self.replicas = (
            None
            if cluster is None
            else FeedReplicas(
                cluster.redis, self.feed, cluster.cache, clock=clock, forget=self._forget
            )
        )
        self.cache = serving.cache
        if cluster is not None and self.replicas is not None:
            cluster.on_feed = self.replicas.heard
        self.push = PushIntake(
            registry=registry,
            serving=serving,
            feed=self.feed,
            allowlist=allowlist,
            metrics=metrics,
            max_body_bytes=config.max_body_bytes,
            clock=clock,
            share=None if self.replicas is None else self.replicas.share,
        )
        registry.on_register.append(self.push.connected)
        registry.on_unregister.append(self.push.disconnected)
        self.gate = FeedGate(
            feed=self.feed,
            relay_path=relay_path,
            clients=clients,
            client_limits=client_limits,
            stalls=stalls,
            metrics=metrics,
            drain=drain,
            server=server,
            # The admin's own host answers only the admin (cloud.app).
            admin_host=config.admin_host if config.admin_port is None else None,
            hosts=hosts,
            pits_moved=pits_moved,
            load=None if self.replicas is None else self.replicas.load,
        )
        self.heartbeat_every = config.feed_heartbeat
        self._heartbeat: tornado.ioloop.PeriodicCallback | None = None

    def _forget(self, pits_id: str, path: str, etag: str) -> None:
        """Another replica's box changed `path`: our older copy goes (the shared one is new)."""
        key = (pits_id, "GET", path)
        entry = self.cache.get(key)
        if entry is not None and entry.etag != etag:
            self.cache.forget(key)

    def tick(self) -> None:
        """From the relay's tick: `watch` frames, feeds of boxes gone elsewhere, replicas."""
        self.push.tick()
        self.feed.expire(self.clock())
        if self.replicas is not None:
            self.replicas.tick()

    def start(self) -> None:
        self._heartbeat = tornado.ioloop.PeriodicCallback(
            self.feed.heartbeat, self.heartbeat_every * 1000
        )
        self._heartbeat.start()
        if self.replicas is not None:
            self.replicas.start()

    async def stop(self) -> None:
        """Every subscriber is cut (EventSource dials again, on another replica)."""
        if self._heartbeat is not None:
            self._heartbeat.stop()
        self.feed.close_all()
        if self.replicas is not None:
            await self.replicas.stop()
