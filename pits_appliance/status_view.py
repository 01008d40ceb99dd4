"""What the status page says, in plain words, from what the agent knows. Pure: time in.

Each row has a mark (green, amber or red), a title, a sentence that says what to do when
something is wrong, and since when it has been so.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlsplit

from pits_appliance.config import plain_url
from pits_appliance.dialing import UNREACHABLE, wants_https
from pits_appliance.state import AgentState
from pits_appliance.status_live import events_row, push_row
from pits_appliance.status_rows import AMBER, GREEN, RED, ago
from pits_appliance.status_rows import row as _row
from pits_appliance.status_rows import when as _when
from pits_appliance.upstream import in_words
from wire import PROTOCOL_VERSION

RENEW_WINDOW_S = 7 * 86400  # the relay's default --renew-before


def fpvtrackside_row(s: AgentState) -> dict[str, Any]:
    since = s.changed_at.get("origin_reachable")
    if s.origin_reachable is None:
        return _row(
            "fpvtrackside", AMBER, "Checking FPVTrackside…", f"Asking {s.fpvtrackside_url}."
        )
    if not s.origin_reachable:
        return _row(
            "fpvtrackside",
            RED,
            "FPVTrackside is not answering",
            f"FPVTrackside is not answering at {s.fpvtrackside_url}: check that its web server is "
            "enabled and the laptop is on this network.",
            since,
        )
    which = in_words(s.fpvtrackside)
    which = f" {which}." if which else ""
    if not s.origin_event:
        return _row(
            "fpvtrackside",
            AMBER,
            "FPVTrackside answers, but no event is open",
            "Open the event in FPVTrackside; spectators see it as soon as it is open." + which,
            since,
        )
    return _row(
        "fpvtrackside",
        GREEN,
        "FPVTrackside is answering",
        (
            f"Event “{s.origin_event_name}” is open."
            if s.origin_event_name
            else f"Event {s.origin_event} is open."
        )
        + which,
        since,
    )


def internet_row(s: AgentState) -> dict[str, Any]:
    since = s.changed_at.get("connectivity")
    detail = f" ({s.connectivity_detail})" if s.connectivity_detail else ""
    if s.connectivity == "full":
        text = "The relay's check answered as it should."
        if not s.ws_connected and s.relay_trouble == "https":
            text = "The relay's address answered, asking for https: see the relay line."
        elif not s.ws_connected and s.relay_trouble:
            text = "Other sites answer, the relay does not: see the relay line."
        return _row("internet", GREEN, "The Internet is reachable", text, since)
    if s.connectivity == "portal":
        return _row(
            "internet",
            RED,
            "The Internet is blocked by a sign-in page",
            "See below: the network wants a sign-in before it lets the box out.",
            since,
        )
    if s.connectivity == "limited":
        return _row(
            "internet",
            AMBER,
            "The Internet is not answering properly",
            f"The network is up but the relay's check did not get through{detail}. A phone hotspot "
            "may be out of data, or the venue network may block it: try another network.",
            since,
        )
    if s.connectivity == "none":
        return _row(
            "internet",
            RED,
            "No Internet",
            f"The box has no way out{detail}: check the network cable or the Wi-Fi name and "
            "password in pitlink.conf, and that the router or hotspot is on.",
            since,
        )
    return _row(
        "internet", AMBER, "Checking the Internet…", "The first check runs when the box starts."
    )


def portal_row(s: AgentState) -> dict[str, Any]:
    since = s.changed_at.get("connectivity")
    if s.connectivity != "portal":
        return _row(
            "portal",
            GREEN,
            "No captive portal in the way",
            "Nothing asks the box to sign in.",
            since,
        )
    if s.portal_url:
        text = (
            "The venue's network wants a sign-in. Open the address below on a phone or laptop on "
            "the same network as the box, accept the terms, then wait a minute: the box finds its "
            "way out by itself. If the sign-in is per device, ask the venue to let the box's "
            "address through."
        )
    else:
        text = (
            "The venue's network wants a sign-in but did not say where. Open any web page on a "
            "phone on the same network as the box; the sign-in page should appear."
        )
    return _row("portal", RED, "A captive portal is in the way", text, since, link=s.portal_url)


def cloud_row(s: AgentState, now: float) -> dict[str, Any]:
    since = s.changed_at.get("ws_connected")
    if s.paused:
        return _row(
            "cloud",
            AMBER,
            "Paused: the box is not answering the relay",
            "Spectators see the last copies the relay holds. Press Resume to answer again.",
            s.changed_at.get("paused"),
        )
    if s.ws_connected:
        parts = [f"Since {_when(s.connected_since)} ({ago(now - (s.connected_since or now))})"]
        if s.round_trip is not None:
            parts.append(f"round trip {s.round_trip * 1000:.0f} ms")
        parts.append(
            f"last fetch {ago(now - s.last_fetch)} ago" if s.last_fetch else "no fetch yet"
        )
        return _row("cloud", GREEN, "Connected to the relay", ", ".join(parts) + ".", since)
    reason = s.cloud_error or "Connecting to the relay."
    host = urlsplit(s.relay_url).hostname or s.relay_url
    if s.relay_trouble == "https" and s.cloud_failure != "wants_https":
        reason = wants_https(s.relay_url)
    elif s.relay_trouble == "unreachable" and s.cloud_failure in UNREACHABLE:
        reason = (
            f"{reason.rstrip('.')}. Other sites answer, so the Internet is fine: check CLOUD_URL "
            f"in pitlink.conf (is {host} the relay's address?), or call the relay's operator: "
            "the relay may be down"
        )
    if s.connectivity == "portal" and s.cloud_failure in (None, "not_a_relay", "timeout", "tls"):
        # What the dial met was most likely the portal's page: the portal line says what to do.
        reason = "The captive portal above is in the way: the box connects once it lets it through."
    if not reason.endswith("."):
        reason += "."
    nxt = f" Next try in about {ago(s.next_attempt_in)}." if s.next_attempt_in else ""
    step = ""
    if s.recovery_action and s.recovery_at:
        step = f" Last recovery step: {s.recovery_action}, {ago(now - s.recovery_at)} ago."
    return _row(
        "cloud",
        RED,
        "Not connected to the relay",
        reason[0].upper() + reason[1:] + nxt + step,
        since,
    )


def plain_row(s: AgentState) -> dict[str, Any]:
    """Only with ALLOW_PLAIN_HTTP: the box refuses a plain relay address otherwise."""
    return _row(
        "plain",
        AMBER,
        "The token crosses the network unencrypted",
        f"The relay's address is {s.relay_url}, with ALLOW_PLAIN_HTTP on: anyone on the way "
        "can read this box's token and pose as it. Fine on a test bench; at a venue use the "
        "relay's https:// address and remove ALLOW_PLAIN_HTTP from pitlink.conf.",
    )


def token_row(s: AgentState, now: float) -> dict[str, Any]:
    """Amber only when a person should act: the token is about to expire and was not renewed.

    While the box is connected the relay renews its token (7 days before expiry by default),
    so a token far from its end, or one whose renewal is still ahead, needs nobody. A token in
    the last tenth of its life (at least an hour) should have been renewed by then. Red, with
    the relay's reason, while the relay refuses it, whatever its dates say.
    """
    if not s.ws_connected and s.cloud_failure == "token" and s.cloud_error:
        why = s.cloud_error
        return _row(
            "token",
            RED,
            "The relay refuses this box's token",
            why[0].upper() + why[1:] + ("" if why.endswith(".") else "."),
            s.changed_at.get("cloud_error"),
        )
    if s.token_expires is None:
        return _row(
            "token",
            AMBER,
            "Token without an expiry date",
            "The relay decides whether it is still good.",
        )
    left = s.token_expires - now
    until = _when(s.token_expires)
    if left <= 0:
        return _row(
            "token",
            RED,
            f"The token expired on {until}",
            "Ask the relay's operator for a new token and put it in pitlink.conf (TOKEN=).",
        )
    lifetime = s.token_expires - s.token_issued if s.token_issued is not None else None
    if lifetime is None or lifetime <= 0:
        lifetime = 10 * RENEW_WINDOW_S
    # Connected, a token is renewed as it enters the relay's window; one in the last tenth of
    # its life (or of the window) was not. Not connected, say so in time to connect it.
    overdue = min(RENEW_WINDOW_S, max(3600.0, 0.1 * lifetime))
    soon = min(RENEW_WINDOW_S, max(3600.0, 0.5 * lifetime))
    if not s.ws_connected and left < soon:
        return _row(
            "token",
            AMBER,
            f"The token expires on {until}",
            "It is renewed by itself once the box is connected to the relay: connect it before then.",
        )
    if left < overdue:
        return _row(
            "token",
            AMBER,
            f"The token expires on {until}",
            "It should have been renewed by now: connect the box to the relay, or ask the "
            "relay's operator for a new token.",
        )
    return _row(
        "token",
        GREEN,
        f"Token valid until {until}",
        "Renewed by itself while connected.",
    )


def clock_row(s: AgentState) -> dict[str, Any]:
    """Certificates are checked against the clock: a box without a battery-backed clock must
    get the time from NTP or from the relay before it can trust the relay (pits_appliance.clock)."""
    since = s.changed_at.get("clock")
    if s.clock == "ntp":
        return _row("clock", GREEN, "The clock is set", "Synchronised by NTP.", since)
    if s.clock == "agrees":
        return _row("clock", GREEN, "The clock is set", "It agrees with the relay's.", since)
    if s.clock == "set":
        return _row(
            "clock",
            GREEN,
            "The clock is set",
            "Set from the relay's time (NTP does not get through this network).",
            since,
        )
    if s.clock == "wrong":
        off = f" by {ago(abs(s.clock_skew))}" if s.clock_skew is not None else ""
        return _row(
            "clock",
            AMBER,
            f"The clock is off{off}",
            "NTP does not get through and the box may not set its clock itself "
            "(SET_CLOCK in pitlink.conf): certificates may be refused until it is set.",
            since,
        )
    return _row(
        "clock",
        AMBER,
        "The clock is not set yet",
        "The box takes the time from NTP, or from the relay as soon as it reaches it; until "
        "then it cannot check the relay's certificate.",
    )


def software_row(s: AgentState) -> dict[str, Any]:
    return _row(
        "software",
        GREEN,
        f"Pits id {s.pits_id or 'unknown'}",
        f"Pitlink {s.sw_version}, protocol version {PROTOCOL_VERSION}.",
    )


def _mb(n: int) -> str:
    return f"{n / 1048576:.0f} MB" if n >= 10 * 1048576 else f"{n / 1048576:.1f} MB"


def update_row(s: AgentState) -> dict[str, Any]:
    """Which version runs in which slot, and where an update stands, in plain words."""
    u = s.update
    running = f"Version {u.get('version') or s.sw_version}"
    if u.get("slot"):
        running += f" in slot {u['slot']}"
    if not u.get("available", False):
        why = u.get("whyNot") or "updates are off"
        return _row("update", GREEN, running, f"No updates on this box: {why}.", state=None)
    state, version, message = u.get("state"), u.get("updateVersion"), u.get("message") or ""
    done, total = u.get("done"), u.get("total")
    extra = {"state": state, "done": done, "total": total, "canInstall": u.get("canInstall")}
    held = u.get("held")
    if isinstance(held, dict):
        step = {"downloading": "downloading", "installing": "installing"}.get(
            str(held.get("step")), "restarting"
        )
        return _row(
            "update",
            AMBER,
            f"Version {version} waits for the race to end",
            f"Nothing is {step} while a race runs ({held.get('why')}); it goes on by itself "
            "once the race ends.",
            **extra,
        )
    if state in (None, "good"):
        text = message or "Up to date."
        return _row("update", GREEN, running, text, **extra)
    if state in ("offered", "downloading"):
        progress = ""
        if total:
            progress = f"{_mb(done or 0)} of {_mb(total)} ({100 * (done or 0) // total}%)"
        return _row(
            "update",
            AMBER,
            f"Downloading version {version}",
            f"{progress}. The race data goes first; nothing restarts until you say so or the "
            "box is idle.".lstrip(". "),
            **extra,
        )
    if state == "installing":
        return _row("update", AMBER, f"Installing version {version}", message, **extra)
    if state == "installed" and u.get("canInstall"):
        return _row("update", AMBER, f"Version {version} is ready", message, **extra)
    if state in ("installed", "restarting"):
        return _row("update", AMBER, running, message, **extra)
    if state == "rolled-back":
        return _row("update", RED, f"Version {version} was rolled back", message, **extra)
    return _row(
        "update",
        AMBER,
        f"Update to version {version} {'refused' if state == 'refused' else 'failed'}",
        message + " The box keeps running the version it has.",
        **extra,
    )


def view(s: AgentState, now: float | None = None) -> dict[str, Any]:
    """The whole page's content."""
    now = time.time() if now is None else now
    if s.config_error:
        rows = [
            _row(
                "settings",
                RED,
                "The settings have a problem",
                f"{s.config_error}. Fix pitlink.conf on the card's boot partition (any laptop can "
                "edit it) and restart the box.",
            )
        ]
    else:
        rows = [
            fpvtrackside_row(s),
            internet_row(s),
            portal_row(s),
            cloud_row(s, now),
            *push_row(s, now),
            events_row(s, now),
            *([plain_row(s)] if plain_url(s.relay_url) else []),
            clock_row(s),
            token_row(s, now),
            software_row(s),
            update_row(s),
        ]
    for row in rows:
        row["sinceText"] = f"for {ago(now - row['since'])}" if row.get("since") else ""
    worst = (
        RED
        if any(r["mark"] == RED for r in rows)
        else AMBER
        if any(r["mark"] == AMBER for r in rows)
        else GREEN
    )
    headline = {
        GREEN: "All is well: race data is reaching the Internet.",
        AMBER: "Working, with something to look at.",
        RED: "Something needs fixing: see the red lines.",
    }[worst]
    return {
        "overall": worst,
        "headline": headline,
        "rows": rows,
        "paused": s.paused,
        "connected": s.ws_connected,
        "pitsId": s.pits_id,
        "configError": bool(s.config_error),
        "canInstall": bool(s.update.get("canInstall")),
        "usbBundles": s.update.get("usb") or [],
        "now": now,
    }
