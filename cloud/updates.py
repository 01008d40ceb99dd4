"""Updates through the relay: offering bundles to connected boxes, and hearing how they went.

A box is sent an `offer` frame when an offer is made to it while it is connected here, and
each time it says hello with an offer standing, unless the bundle is not newer than the
version it runs (wire.versions: the relay never offers a step back, nor a version it cannot
order) or it has already told how an update to that version ended (good, rolled back,
refused): a box that rolled back is not pushed into the same bundle again. Withdrawing sends
`offer` with no bundle.

The standing offers live in the bundle folder (cloud.bundles); each replica re-reads them on
its tick, so an offer made by the CLI, or on another replica sharing the folder, reaches the
boxes connected here within a tick. Rollouts in waves (cloud.rollout) are stepped on the same
tick, before the offers are sent, and whenever a box reports how an update ended.
"""

from __future__ import annotations

import logging

from cloud.bundles import Bundle, BundleStore
from cloud.control import PitsConnection
from cloud.metrics import Metrics
from cloud.registry import Registry
from cloud.rollout import Box
from cloud.rollout_store import Rollouts
from wire import messages as m
from wire.versions import newer

log = logging.getLogger("pitlink.cloud.updates")

# How an update ended: the box will not take the same version again by itself.
FINAL_STATES = frozenset({"good", "rolled-back", "refused"})


def goes_forward(hello: m.PitsHello | None, bundle: Bundle) -> bool:
    """Whether the bundle is newer than what the box says it runs (unknown before its hello)."""
    if hello is None:
        return True
    try:
        return newer(bundle.version, hello.sw_version)
    except ValueError:  # either cannot be ordered: never offered
        return False


def wants_offer(hello: m.PitsHello | None, last: m.UpdateReport | None, bundle: Bundle) -> bool:
    """Whether a box that said `hello` and last reported `last` should be offered `bundle`."""
    if not goes_forward(hello, bundle):
        return False
    return not (last is not None and last.version == bundle.version and last.state in FINAL_STATES)


class Updates:
    """Offers sent to the boxes connected here, and their update reports counted and logged."""

    def __init__(
        self, store: BundleStore | None, registry: Registry[PitsConnection], metrics: Metrics
    ):
        self.store = store
        self.rollouts = None if store is None else Rollouts(store)
        self.registry = registry
        self.metrics = metrics
        self.downloading: set[str] = set()  # pits ids with a bundle download under way
        self._halted_labels: set[str] = set()

    @property
    def enabled(self) -> bool:
        return self.store is not None

    def connected(self, pits_id: str) -> None:
        """A box said hello here: offer it what stands for it."""
        conn = self.registry.get(pits_id)
        if conn is not None and self.store is not None:
            self._step_rollouts()
            self._bring_up_to_date(conn, self._offers())

    def refresh(self) -> list[str]:
        """Bring each box connected here up to date with the standing offers: the tick calls
        this, and so does the admin after it changed one. Returns the pits ids sent a frame."""
        if self.store is None:
            return []
        self._step_rollouts()
        offers = self._offers()
        return [c.pits_id for c in self.registry.live() if self._bring_up_to_date(c, offers)]

    def _step_rollouts(self) -> None:
        if self.rollouts is None:
            return
        try:
            boxes = [Box(c.pits_id, c.hello, c.update) for c in self.registry.live()]
            self.rollouts.step(boxes)
            rollouts = self.rollouts.all()
        except OSError as exc:
            log.warning("bundle folder unreadable", extra={"error": str(exc)})
            return
        gauge = self.metrics.rollout_halted
        for gone in self._halted_labels - set(rollouts):
            gauge.remove(gone)
        for bundle_id, rollout in rollouts.items():
            gauge.labels(bundle_id).set(1 if rollout.state == "halted" else 0)
        self._halted_labels = set(rollouts)

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
        """A box said where its update stands: counted, logged when it ended, and a rollout it
        is part of moved on (or halted) at once."""
        self.metrics.update_reports.labels(report.state).inc()
        fields = {"pits_id": conn.pits_id, "state": report.state, "version": report.version}
        if report.state in FINAL_STATES or report.state == "failed":
            log.info("update ended", extra={**fields, "detail": report.message})
            self.refresh()
        else:
            log.debug("update report", extra=fields)
