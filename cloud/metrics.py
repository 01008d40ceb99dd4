"""The relay's Prometheus metrics, in a registry of their own per relay instance.

A registry per instance (not the process-global one) lets several relays live in one test
process without their numbers mixing. Label sets are bounded: no path or request id labels.
"""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

P = "pitlink_"


def _count_tasks() -> float:
    """Tasks on the running loop (0 outside one): a leak shows as a number that only grows."""
    try:
        return float(len(asyncio.all_tasks()))
    except RuntimeError:
        return 0.0


class Metrics:
    """Every metric the relay exports."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.control_connections = Gauge(
            P + "control_connections", "Pits WebSocket connections by state", ["state"], registry=r
        )
        self.ws_roundtrip = Histogram(
            P + "ws_roundtrip_seconds",
            "Ping to pong round trip on pits connections",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=r,
        )
        self.fetch_in_flight = Gauge(
            P + "fetch_in_flight", "Fetches sent to pits and not yet answered", registry=r
        )
        self.fetch_queue_depth = Gauge(
            P + "fetch_queue_depth", "Fetches waiting for a free slot, all pits", registry=r
        )
        self.fetches = Counter(P + "fetches", "Fetches sent to pits", registry=r)
        self.cache_hits = Counter(P + "cache_hits", "Requests served fresh from cache", registry=r)
        self.cache_misses = Counter(
            P + "cache_misses", "Requests that needed a body from the pits", registry=r
        )
        self.cache_revalidations = Counter(
            P + "cache_revalidations",
            "Requests served from cache after the pits confirmed it (304)",
            registry=r,
        )
        self.cache_stale = Counter(
            P + "cache_stale_served", "Requests served a stale copy", registry=r
        )
        self.cache_negative = Counter(
            P + "cache_negative_hits",
            "Requests answered from a remembered negative answer (no fetch)",
            registry=r,
        )
        self.cache_bytes_saved = Counter(
            P + "cache_bytes_saved",
            "Body bytes the uplink did not carry thanks to 304s",
            registry=r,
        )
        self.cache_entries = Gauge(P + "cache_entries", "Entries in the cache", registry=r)
        self.cache_bytes = Gauge(P + "cache_bytes", "Body bytes held in the cache", registry=r)
        self.errors = Counter(
            P + "errors", "Public requests answered with an error", ["code"], registry=r
        )
        self.schema_mismatches = Counter(
            P + "schema_mismatches",
            "New bodies from FPVTrackside that differ from their endpoint's schema (still served)",
            ["endpoint"],
            registry=r,
        )
        self.schema_mismatch_last = Gauge(
            P + "schema_mismatch_last_timestamp_seconds",
            "When a body last differed from its schema (Unix time; 0: never)",
            registry=r,
        )
        self.schema_unchecked = Counter(
            P + "schema_unchecked",
            "New bodies too large to check against their schema",
            registry=r,
        )
        self.frames_dropped = Counter(
            P + "frames_dropped",
            "Frames from pits dropped (malformed, unknown or expired id)",
            ["reason"],
            registry=r,
        )
        self.shed = Counter(P + "shed", "Requests shed because a pits queue was full", registry=r)
        self.rate_limited = Counter(
            P + "rate_limited", "Requests refused by a rate limit", ["scope"], registry=r
        )
        self.redis_up = Gauge(
            P + "redis_up",
            "1 while the cluster's Redis answers (0 also when there is none)",
            registry=r,
        )
        self.forwarded = Counter(
            P + "forwarded_fetches", "Fetches sent to the replica holding the pits", registry=r
        )
        self.served_for_replicas = Counter(
            P + "served_for_replicas",
            "Requests from other replicas served for a pits held here",
            registry=r,
        )
        self.auth_failures = Counter(
            P + "auth_failures", "Control connections refused before upgrade", registry=r
        )
        self.update_reports = Counter(
            P + "update_reports",
            "Update reports from pits, by state (wire.messages.UPDATE_STATES)",
            ["state"],
            registry=r,
        )
        self.bundle_downloads = Counter(
            P + "bundle_downloads",
            "Bundle downloads by pits, by outcome (`ok`, `partial` for a range, `refused`, `busy`)",
            ["outcome"],
            registry=r,
        )
        self.rollout_halted = Gauge(
            P + "rollout_halted",
            "1 while the rollout of a bundle is halted (a box rolled back or failed), else 0",
            ["bundle"],
            registry=r,
        )
        self.stalled_writes = Counter(
            P + "stalled_writes",
            "Client connections closed because they took nothing of a response for --write-timeout",
            registry=r,
        )
        self.push_frames = Counter(
            P + "push_frames",
            "Push frames from boxes (`change`, `still`, `watching`, `fpvtrackside-event`), "
            "by outcome (`taken`, `refused`)",
            ["type", "outcome"],
            registry=r,
        )
        self.watch_sent = Counter(
            P + "watch_sent", "`watch` frames sent to boxes (what spectators read)", registry=r
        )
        self.feed_subscribers = Gauge(
            P + "feed_subscribers", "Live feed subscribers on this process", registry=r
        )
        self.feed_events = Counter(
            P + "feed_events",
            "Events sent on the live feeds, by kind (`pits`, `race`, `change`, `fpvtrackside`)",
            ["kind"],
            registry=r,
        )
        self.feed_refused = Counter(
            P + "feed_refused",
            "Feed subscriptions refused, by limit (`client`, `process`, `rate`, `draining`)",
            ["limit"],
            registry=r,
        )
        self.feed_dropped = Counter(
            P + "feed_dropped",
            "Feed subscribers cut off, by why (`slow`: too much unsent; `shutdown`; one that takes nothing for --write-timeout is in pitlink_stalled_writes_total)",
            ["reason"],
            registry=r,
        )
        self.tasks = Gauge(P + "asyncio_tasks", "Tasks alive on the event loop", registry=r)
        self.tasks.set_function(_count_tasks)

    def render(self) -> bytes:
        return generate_latest(self.registry)
