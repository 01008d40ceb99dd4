"""Updates through the relay: offering bundles to connected boxes, and hearing how they went.

A box is sent an `offer` frame when an offer is made to it while it is connected here, and
each time it says hello with an offer standing, unless it already runs that version or has
already told how an update to that version ended (good, rolled back, refused): a box that
rolled back is not pushed into the same bundle again. Withdrawing sends `offer` with no bundle.

The standing offers live in the bundle folder (cloud.bundles); each replica re-reads them on
its tick, so an offer made by the CLI, or on another replica sharing the folder, reaches the
boxes connected here within a tick.
"""

from __future__ import annotations

import logging

from cloud.bundles import Bundle, BundleStore
from cloud.control import PitsConnection
from cloud.metrics import Metrics
from cloud.registry import Registry
from wire import messages as m

log = logging.getLogger("pitlink.cloud.updates")

# How an update ended: the box will not take the same version again by itself.
FINAL_STATES = frozenset({"good", "rolled-back", "refused"})


def wants_offer(hello: m.PitsHello | None, last: m.UpdateReport | None, bundle: Bundle) -> bool:
    """Whether a box that said `hello` and last reported `last` should be offered `bundle`."""
    if hello is not None and hello.sw_version == bundle.version:
        return False
    return not (last is not None and last.version == bundle.version and last.state in FINAL_STATES)


class Updates:
    """Offers sent to the boxes connected here, and their update reports counted and logged."""

    def __init__(
        self, store: BundleStore | None, registry: Registry[PitsConnection], metrics: Metrics
    ):
        self.store = store
        self.registry = registry
        self.metrics = metrics
        self.downloading: set[str] = set()  # pits ids with a bundle download under way

    @property
    def enabled(self) -> bool:
        return self.store is not None

    def connected(self, pits_id: str) -> None:
        """A box said hello here: offer it what stands for it."""
        conn = self.registry.get(pits_id)
        if conn is not None and self.store is not None:
            self._bring_up_to_date(conn, self._offers())

    def refresh(self) -> list[str]:
        """Bring each box connected here up to date with the standing offers: the tick calls
        this, and so does the admin after it changed one. Returns the pits ids sent a frame."""
        if self.store is None:
            return []
        offers = self._offers()
        return [c.pits_id for c in self.registry.live() if self._bring_up_to_date(c, offers)]

    def _offers(self) -> dict[str, str]:
        assert self.store is not None
        try:
            return self.store.offers()
        except OSError as exc:
            log.warning("bundle folder unreadable", extra={"error": str(exc)})
            return {}

    def _bring_up_to_date(self, conn: PitsConnection, offers: dict[str, str]) -> bool:
        """Send the offer standing for this box, or withdraw the one it was sent, if either
        changed since this connection was last told; True if a frame was sent."""
        assert self.store is not None
        want = offers.get(conn.pits_id)
        if want == conn.offered:
            return False
        bundle = self.store.get(want) if want is not None else None
        if bundle is not None and wants_offer(conn.hello, conn.update, bundle):
            if not conn.send(bundle.offer()):
                return False
            conn.offered = bundle.id
            log.info(
                "offer sent",
                extra={"pits_id": conn.pits_id, "bundle": bundle.id, "version": bundle.version},
            )
            return True
        if conn.offered is not None and conn.send(m.Offer(bundle=None)):
            conn.offered = None
            log.info("offer withdrawn", extra={"pits_id": conn.pits_id})
            return True
        return False

    def reported(self, conn: PitsConnection, report: m.UpdateReport) -> None:
        """A box said where its update stands: counted, and logged when it ended."""
        self.metrics.update_reports.labels(report.state).inc()
        fields = {"pits_id": conn.pits_id, "state": report.state, "version": report.version}
        if report.state in FINAL_STATES or report.state == "failed":
            log.info("update ended", extra={**fields, "detail": report.message})
        else:
            log.debug("update report", extra=fields)
