"""What the box says and does on an open link: the relay's frames in, the box's own out.

In: `fetch` (pits_appliance.fetching), `watch` (the watcher's, when pushing), `token`
(renewals), `offer` (updates), `error`; dropped frames counted and logged sparingly. Out:
`update` reports, `fpvtrackside` (which FPVTrackside the box sees, to a relay that takes it),
and the push frames (wire.push) while the relay takes them: `push_listeners` hear when that
begins and ends (the watcher, FPVTrackside's events).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

from pits_appliance.fetching import Fetches
from pits_appliance.metrics import AgentMetrics
from pits_appliance.outbox import Outbox
from pits_appliance.state import AgentState
from pits_appliance.tokens import TokenStore, validity
from pits_appliance.update import Updater
from wire import messages as m
from wire.push import PushMessage, Watch
from wire.session import Dropped, Event, Received, RoundTrip, Session

log = logging.getLogger("pitlink.pits.link")


class PushListener(Protocol):
    """What hears that pushing to the relay begins and ends."""

    def start(self, send: Callable[[PushMessage], bool]) -> None: ...

    def stop(self) -> None: ...


class LinkFrames:
    """Frames in and out of the current link (the Outbox holds the link itself)."""

    def __init__(
        self,
        *,
        outbox: Outbox,
        fetches: Fetches,
        state: AgentState,
        metrics: AgentMetrics,
        tokens: TokenStore,
        updater: Updater | None = None,
    ):
        self.outbox = outbox
        self.fetches = fetches
        self.state = state
        self.metrics = metrics
        self.tokens = tokens
        self.updater = updater
        if updater is not None:
            updater.send = self.send_update
        self.push_listeners: list[PushListener] = []
        self.watch: Callable[[Watch], None] | None = None  # the relay's `watch` frames go here

    # -- the link's life ------------------------------------------------------------------------

    def opened(self, session: Session) -> None:
        """The handshake is done."""
        hello = session.hello
        if isinstance(hello, m.PitsHello) and hello.fpvtrackside != self.state.fpvtrackside:
            self.send_fpvtrackside()  # seen while the hello was on its way
        self._push(self.pushing)

    def ended(self) -> None:
        """The link is gone: fetches under way are dropped, pushing ends."""
        self.fetches.cancel_all()
        self._push(False)

    def paused(self) -> None:
        """Answering the relay was paused or resumed at the pits: pushing stops or starts."""
        self._push(self.pushing)

    def _push(self, on: bool) -> None:
        """Tell the listeners when pushing begins or ends."""
        if on == self.state.pushing:
            return
        self.state.set("pushing", on)
        for listener in self.push_listeners:
            if on:
                listener.start(self.push)
            else:
                listener.stop()

    # -- in -------------------------------------------------------------------------------------

    def handle(self, event: Event) -> None:
        """A session event other than the link's opening and closing."""
        if isinstance(event, Received):
            self._on_message(event.frame_id, event.message)
        elif isinstance(event, Dropped):
            self.metrics.frames_dropped.labels(event.reason).inc()
            if event.held is not None:
                log.warning(
                    "dropped frame from the relay",
                    extra={
                        "reason": event.reason,
                        "detail": event.detail,
                        "suppressed": event.held,
                    },
                )
        elif isinstance(event, RoundTrip):
            self.state.round_trip = event.seconds

    def _on_message(self, frame_id: str, msg: m.Message) -> None:
        if isinstance(msg, m.Fetch):
            self.fetches.take(frame_id, msg)
        elif isinstance(msg, Watch):
            if self.outbox.pushing and self.watch is not None:
                self.watch(msg)
            else:  # the box named no `push` (--no-push): a relay should not send one
                self.metrics.frames_dropped.labels("unexpected").inc()
        elif isinstance(msg, m.Token):
            self._store_token(msg.token)
        elif isinstance(msg, m.Offer):
            if self.updater is not None:
                self.updater.offer(msg)
        elif isinstance(msg, m.Error):
            log.warning(
                "relay reported an error", extra={"code": str(msg.code), "error": msg.message}
            )

    def _store_token(self, token: str) -> None:
        """A renewal from the relay: the store keeps it only if it may replace the current one."""
        if self.tokens.offer(token):
            self.state.token_issued, self.state.token_expires = validity(token)
        else:
            self.metrics.frames_dropped.labels("bad_token").inc()

    # -- out ------------------------------------------------------------------------------------

    def send_update(self, report: m.UpdateReport) -> None:
        """Tell the relay where an update stands, if the link is up (the next hello says it
        otherwise)."""
        if self.state.ws_connected:
            self.outbox.send(report)

    def send_fpvtrackside(self) -> None:
        """Tell the relay which FPVTrackside the box sees now, if the link is up and the relay
        takes `fpvtrackside` frames (an older one would close the link on one; it learns at the
        next hello)."""
        seen = self.state.fpvtrackside
        if seen is not None and self.state.ws_connected:
            if self.outbox.relay_takes(m.FEATURE_FPVTRACKSIDE):
                self.outbox.send(seen)

    @property
    def pushing(self) -> bool:
        """Push frames go to the relay now (see Outbox.pushing), unless paused at the pits."""
        return self.outbox.pushing and not self.state.paused

    def push(self, message: PushMessage) -> bool:
        """Send one push frame if pushing (a `change` may wait for a backlog); False if not."""
        return self.pushing and self.outbox.push(message)
