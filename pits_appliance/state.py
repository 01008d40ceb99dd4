"""What the agent knows about its world, for the status page, /healthz and the logs."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from pits_appliance.connectivity import portal_link
from wire import messages as m


@dataclass
class AgentState:
    """Mutable, owned by the agent; times are wall-clock seconds (they are shown to people)."""

    pits_id: str = ""
    ws_connected: bool = False
    connected_since: float | None = None
    last_success: float | None = None
    last_fetch: float | None = None
    origin_reachable: bool | None = None
    origin_checked: float | None = None
    origin_event: str | None = None
    origin_event_name: str | None = None
    origin_error: str | None = None
    fpvtrackside: m.FpvTrackside | None = None  # which FPVTrackside (pits_appliance.upstream)
    cloud_error: str | None = None
    cloud_failure: str | None = None  # the kind of the last failed dial (pits_appliance.dialing)
    close_code: int | None = None
    round_trip: float | None = None
    reconnects: int = 0
    next_attempt_in: float | None = None
    connectivity: str = "unknown"
    connectivity_detail: str = ""
    portal_url: str | None = None
    relay_trouble: str | None = None  # the Internet answers, the relay not (connectivity.Verdict)
    recovery_action: str | None = None
    recovery_at: float | None = None
    paused: bool = False
    config_error: str | None = None
    clock: str = "unknown"  # pits_appliance.clock.Status
    clock_skew: float | None = None
    token_issued: float | None = None
    token_expires: float | None = None
    fpvtrackside_url: str = ""
    relay_url: str = ""
    sw_version: str = ""
    update: dict[str, Any] = field(default_factory=dict)  # Updater.view(), for the page
    pushing: bool = False  # push frames go to the relay (pits_appliance.linkframes)
    race_now: str | None = None  # the race now's Race.json (pits_appliance.racenow)
    watched: int = 0  # paths the watcher reads again and again
    last_push: float | None = None  # when a change last went to the relay
    fpvt_events_last: float | None = None  # when FPVTrackside's last event was taken
    fpvt_events_from: str | None = None  # its Hello, in words: "FPVTrackside 2.77.0 on Windows"
    changed_at: dict[str, float] = field(default_factory=dict)

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "portal_url":
            # Shown as a link on the status page, whoever sets it: never javascript:, data:,
            # or a relative path (connectivity.portal_link; the page checks once more).
            value = portal_link(value)
        super().__setattr__(name, value)

    def set(self, name: str, value: Any, now: float | None = None) -> None:
        """Set a field, remembering when its value last changed."""
        if getattr(self, name) != value:
            setattr(self, name, value)
            self.changed_at[name] = time.time() if now is None else now

    def health(self) -> dict[str, Any]:
        return {
            "pitsId": self.pits_id,
            "wsConnected": self.ws_connected,
            "connectedSince": self.connected_since,
            "lastSuccess": self.last_success,
            "originReachable": self.origin_reachable,
            "originEvent": self.origin_event,
            "originError": self.origin_error,
            "fpvtrackside": None if self.fpvtrackside is None else self.fpvtrackside.payload(),
            "cloudError": self.cloud_error,
            "reconnects": self.reconnects,
            "connectivity": self.connectivity,
            "portalUrl": self.portal_url,
            "paused": self.paused,
            "clock": self.clock,
        }
