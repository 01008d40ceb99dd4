"""The agent's Prometheus metrics, in a registry of their own per agent instance."""

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


class AgentMetrics:
    """Every metric the agent exports on its status port."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.ws_connected = Gauge(P + "ws_connected", "1 while the cloud link is up", registry=r)
        self.reconnects = Counter(
            P + "reconnects", "Cloud connection attempts after the first", registry=r
        )
        self.last_success = Gauge(
            P + "last_success_timestamp_seconds", "When a fetch last succeeded", registry=r
        )
        self.origin_fetch = Histogram(
            P + "origin_fetch_seconds",
            "Time of fetches from FPVTrackside",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=r,
        )
        self.fetches = Counter(P + "fetches", "Fetch commands answered", ["outcome"], registry=r)
        self.tasks = Gauge(P + "asyncio_tasks", "Tasks alive on the event loop", registry=r)
        self.tasks.set_function(_count_tasks)
        self.connectivity = Gauge(
            P + "connectivity_state",
            "1 for the uplink's current state: full, portal, limited, none or unknown",
            ["state"],
            registry=r,
        )
        self.frames_dropped = Counter(
            P + "frames_dropped", "Frames from the cloud dropped", ["reason"], registry=r
        )
        # Watching FPVTrackside and pushing to the relay (pits_appliance.watcher).
        self.lan_requests = Counter(
            P + "lan_requests",
            "Requests the watcher sent FPVTrackside, by what came of them: changed, same, bad "
            "(half-written, not JSON), failed (no answer), look (looking for the race now)",
            ["outcome"],
            registry=r,
        )
        self.watched_paths = Gauge(P + "watched_paths", "Paths watched now", registry=r)
        self.push_frames = Counter(
            P + "push_frames", "Push frames sent to the relay, by type", ["type"], registry=r
        )
        # FPVTrackside's ExtensionMode events (pits_appliance.extension).
        self.fpvt_received = Counter(
            P + "fpvtrackside_events_received",
            "Events FPVTrackside sent the box that were answered 200",
            registry=r,
        )
        self.fpvt_refused = Counter(
            P + "fpvtrackside_events_refused",
            "Events refused: address (not FPVTrackside's), rate, not_json, not_an_event",
            ["reason"],
            registry=r,
        )
        self.fpvt_lost = Counter(
            P + "fpvtrackside_events_lost", "Events missing from FPVTrackside's seq", registry=r
        )
        self.fpvt_restarts = Counter(
            P + "fpvtrackside_restarts", "Times FPVTrackside's seq started again", registry=r
        )
        self.fpvt_forwarded = Counter(
            P + "fpvtrackside_events_forwarded", "Events forwarded to the relay", registry=r
        )
        self.fpvt_dropped = Counter(
            P + "fpvtrackside_events_dropped",
            "Events not forwarded: not_pushing (the relay takes none, or paused), held_too_many",
            ["reason"],
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
