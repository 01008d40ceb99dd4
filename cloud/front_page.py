"""What a visitor finds at the relay's `/`: the connected pits, their pages and data, and how to
use them, with every address as the public reaches the relay (cloud.clients.PublicAddress)."""

from __future__ import annotations

import time

from tornado.escape import url_escape, xhtml_escape

from cloud.clients import Origin
from cloud.http_base import BaseHandler
from cloud.offline import Departure
from wire.event import event_id_from_page


def ago(seconds: float) -> str:
    """How long ago, in the unit a person reads best."""
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{int(seconds)} s"
    if seconds < 5400:
        return f"{int(seconds // 60)} min"
    return f"{seconds / 3600:.1f} h"


class FrontPageHandler(BaseHandler):
    """`/`: every connected pits with its links, and the address to give a dashboard."""

    def get(self) -> None:
        origin = self.origin()
        active = self.relay.active_pits_id()
        rows = "".join(
            self._row(origin, conn.pits_id, conn.connected_since_wall, conn.pits_id == active)
            for conn in sorted(self.relay.registry.live(), key=lambda c: c.pits_id)
        )
        # Boxes whose link ended in the last day: listed as offline, never as live.
        now = time.time()
        rows += "".join(
            self._offline_row(origin, gone, now)
            for gone in self.relay.registry.offline.recent(now)
            if self.relay.registry.get(gone.pits_id) is None
        )
        # With --pits-domain, each pits' own name: shown with a placeholder for the id.
        own = self.relay.pits_url("x", origin)
        where = (
            f"<code>{xhtml_escape(own.replace('://x.', '://<pits id>.', 1))}</code>"
            if own is not None
            else f"<code>{xhtml_escape(origin.url('/pits/'))}&lt;pits id&gt;/</code>"
        )
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        self.set_header("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'")
        self.finish(
            "<!doctype html><html lang=en><meta charset=utf-8>"
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            "<title>Pitlink relay</title>"
            "<style>body{font:16px/1.45 system-ui,sans-serif;max-width:46em;margin:1em auto;"
            "padding:0 1em}code{background:#f3f3f3;padding:0 .2em}li{margin:.5em 0;overflow-wrap:anywhere}"
            ".offline{color:#57606a}.offline strong{color:#cf222e}</style>"
            "<h1>Pitlink relay</h1>"
            "<p>Live FPV race data from the pits, as FPVTrackside serves it at the race.</p>"
            "<h2>Pits</h2>"
            f"<ul id=pits>{rows or '<li>None yet: a box appears here once it connects.</li>'}</ul>"
            "<h2>Dashboards and overlays</h2>"
            "<p>Give a dashboard or a stream overlay the address "
            f"{where} where it would take FPVTrackside's "
            "address: every path FPVTrackside serves is there, "
            "<code>events/&lt;event id&gt;/Race.json</code> and the rest, refreshed about "
            "every second.</p>"
            "<p>A pits' <code>pitlink/race</code> is a live page of the race running now, for "
            "phones and, with <code>?overlay=1</code>, for a stream; its "
            "<code>pitlink/live</code> is a feed (Server-Sent Events) of every change as it "
            "happens, for dashboards.</p>"
        )

    def _row(self, origin: Origin, pits_id: str, since: float, active: bool) -> str:
        quoted = url_escape(pits_id, plus=False)
        name = xhtml_escape(pits_id)
        # Its own host with --pits-domain (its page works there unchanged), else its path.
        own = self.relay.pits_url(pits_id, origin)
        root = xhtml_escape(own) if own is not None else f"/pits/{quoted}/"
        links = [
            f'<a href="{root}">race page</a>',
            f'<a href="{root}pitlink/race">live race</a>',
            f'<a href="{root}pitlink/live">live feed</a>',
        ]
        event = self._event_of(pits_id)
        if event is not None:
            links += [
                f'<a href="{root}events/{event}/{file}">{file}</a>'
                for file in ("Event.json", "Pilots.json", "Rounds.json", "Results.json")
            ]
        links.append(f'<a href="{root}httpfiles/Channels.json">Channels.json</a>')
        if own is not None:
            links.append(f"<code>{xhtml_escape(own.partition('://')[2].rstrip('/'))}</code>")
        note = (
            " (active: also at <code>/events/…</code>, <code>/httpfiles/…</code>)" if active else ""
        )
        now = time.time()
        minutes = max(0, int(now - since) // 60)
        live = self.relay.push_of(pits_id)
        changed = live.get("newestChangeAt")
        pushing = (
            "pulled on request"
            if not live.get("pushing")
            else "pushing changes"
            + (f", newest {max(0, int(now - changed))} s ago" if changed is not None else "")
        )
        return (
            f"<li data-pits={quoted}><strong>{name}</strong>{note}, connected {minutes} min, "
            f"<span class=push>{pushing}</span>: " + " · ".join(links) + "</li>"
        )

    def _offline_row(self, origin: Origin, gone: Departure, now: float) -> str:
        """A box no longer connected: since when, and why its link ended (its last copies are
        still served, with their age in the headers; its live page says it is offline)."""
        quoted = url_escape(gone.pits_id, plus=False)
        own = self.relay.pits_url(gone.pits_id, origin)
        root = xhtml_escape(own) if own is not None else f"/pits/{quoted}/"
        stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(gone.last_seen))
        return (
            f"<li data-pits={quoted} class=offline><strong>{xhtml_escape(gone.pits_id)}</strong> "
            f"<span class=since>offline since {stamp} (last seen {ago(now - gone.last_seen)} "
            f"ago)</span>, last error: <span class=error>{xhtml_escape(gone.error)}</span>: "
            f'<a href="{root}pitlink/race">live race</a> (says how old its last copy is)</li>'
        )

    def _event_of(self, pits_id: str) -> str | None:
        """The event the pits has open, read from its page if the relay holds a copy."""
        entry = self.relay.cache.get((pits_id, "GET", "/"))
        return event_id_from_page(entry.body) if entry is not None else None
