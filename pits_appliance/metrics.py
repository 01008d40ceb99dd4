"""The agent's Prometheus metrics, in a registry of their own per agent instance."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

P = "pitlink_"


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
        self.connectivity = Gauge(
            P + "connectivity_state",
            "1 for the uplink's current state: full, portal, limited, none or unknown",
            ["state"],
            registry=r,
        )
        self.frames_dropped = Counter(
            P + "frames_dropped", "Frames from the cloud dropped", ["reason"], registry=r
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
