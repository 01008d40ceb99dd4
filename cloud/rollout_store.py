"""The rollouts kept in a bundle folder (`rollouts.json`): started, resumed and cancelled by the
operator, stepped by each relay on its tick (what a step decides is cloud.rollout's)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

from cloud.bundles import Bundle, BundleError, BundleStore, check_id, check_pits_ids, write_atomic
from cloud.rollout import (
    MAX_ROLLOUTS,
    MAX_WAVE,
    ROLLOUTS,
    Box,
    Changes,
    Rollout,
    advance,
    not_acted,
    read_rollouts,
)
from wire import ErrorCode
from wire.errors import DamagedError
from wire.untrusted import stamp_of
from wire.versions import is_version

log = logging.getLogger("pitlink.cloud.rollout")


class Rollouts:
    """The rollouts kept in a bundle folder: started, stepped, resumed, cancelled."""

    def __init__(self, store: BundleStore, *, wall: Callable[[], float] | None = None):
        self.store = store
        self.wall = wall or store.wall
        self._cached: dict[str, Rollout] = {}
        self._stamp: tuple[int, int, int] | None = None

    @property
    def path(self) -> Path:
        return self.store.root / ROLLOUTS

    def all(self) -> dict[str, Rollout]:
        """bundle id → its rollout, re-read when the file changed; a damaged file stands for
        none (said once, until it changes)."""
        stamp = stamp_of(self.path)
        if stamp is None:
            self._cached, self._stamp = {}, None
        elif stamp != self._stamp:
            try:
                self._cached = read_rollouts(self.path)
            except (OSError, DamagedError) as exc:
                log.error(
                    "rollouts file unreadable: no rollout moves",
                    extra={"path": str(self.path), "error": str(exc)[:200]},
                )
                self._cached = {}
            self._stamp = stamp
        return {k: Rollout.parse(v.describe()) for k, v in self._cached.items()}

    def _change(self, bundle_id: str, change: Callable[[Rollout | None], Rollout | None]) -> None:
        """Read, change and write one rollout under the folder's lock."""
        with self.store.locked():
            try:
                current = read_rollouts(self.path) if self.path.exists() else {}
            except (OSError, DamagedError) as exc:
                raise BundleError(
                    f"the rollouts file {self.path} cannot be read ({exc}): repair or delete "
                    "it, then try again",
                    ErrorCode.UNAVAILABLE,
                    503,
                ) from None
            changed = change(current.get(bundle_id))
            if changed is None:
                current.pop(bundle_id, None)
            else:
                current[bundle_id] = changed
            if len(current) > MAX_ROLLOUTS:
                raise BundleError(f"more than {MAX_ROLLOUTS} rollouts: remove old bundles")
            data = {k: v.describe() for k, v in current.items()}
            write_atomic(self.path, json.dumps(data, indent=1, sort_keys=True).encode())
        self._stamp = None

    # -- the operator's verbs -------------------------------------------------------------------

    def start(self, bundle_id: str, wave: int, first: list[str], who: str) -> Rollout:
        bundle = self.store.get(check_id(bundle_id))
        if bundle is None:
            raise BundleError(f"no bundle {bundle_id}", ErrorCode.DENIED, 404)
        if not is_version(bundle.version):
            raise BundleError(
                f"version {bundle.version!r} is not MAJOR.MINOR.PATCH[+BUILD]: the boxes could "
                "not tell whether it is newer than theirs",
                ErrorCode.DENIED,
                409,
            )
        if not 1 <= wave <= MAX_WAVE:
            raise BundleError(f"the wave is 1 to {MAX_WAVE} boxes")
        named = check_pits_ids(first) if first else []
        if len(named) > wave:
            raise BundleError(f"{len(named)} boxes named for a wave of {wave}")
        rollout = Rollout(
            bundle=bundle.id,
            version=bundle.version,
            wave=wave,
            first=named,
            started=self.wall(),
            by=who[:200],
        )

        def begin(old: Rollout | None) -> Rollout:
            if old is not None and old.state != "cancelled":
                raise BundleError(
                    f"bundle {bundle.id} is being rolled out already ({old.state}): resume or "
                    "cancel that rollout first",
                    ErrorCode.DENIED,
                    409,
                )
            return rollout

        self._change(bundle.id, begin)
        log.info(
            "rollout started",
            extra={"bundle": bundle.id, "version": bundle.version, "wave": wave, "first": named},
        )
        return rollout

    def resume(self, bundle_id: str) -> Rollout:
        """A halted rollout goes on; the boxes that failed are left out of it."""
        done: list[Rollout] = []

        def go_on(r: Rollout | None) -> Rollout:
            if r is None or r.state != "halted":
                raise BundleError(f"no halted rollout of bundle {bundle_id}", ErrorCode.DENIED, 409)
            r.skipped = list(dict.fromkeys([*r.skipped, *r.failures()]))
            r.state, r.halt = "running", None
            done.append(r)
            return r

        self._change(check_id(bundle_id), go_on)
        log.info("rollout resumed", extra={"bundle": bundle_id, "skipped": done[0].skipped})
        return done[0]

    def cancel(self, bundle_id: str) -> tuple[Rollout, list[str]]:
        """Stop a rollout for good; returns it and the boxes whose offers were withdrawn."""
        done: list[Rollout] = []

        def stop(r: Rollout | None) -> Rollout:
            if r is None or r.state == "cancelled":
                raise BundleError(
                    f"no rollout of bundle {bundle_id} to cancel", ErrorCode.DENIED, 409
                )
            r.state = "cancelled"
            done.append(r)
            return r

        self._change(check_id(bundle_id), stop)
        withdrawn = not_acted(done[0], self.store.offers())
        if withdrawn:
            self.store.withdraw(withdrawn)
        log.info("rollout cancelled", extra={"bundle": bundle_id, "withdrawn": withdrawn})
        return done[0], withdrawn

    def forget(self, bundle_id: str) -> None:
        """The bundle was removed: so is its rollout."""
        if bundle_id in self.all():
            self._change(bundle_id, lambda r: None)

    # -- the relay's tick -----------------------------------------------------------------------

    def step(self, boxes: list[Box]) -> None:
        """Move each rollout on with the boxes connected here; files are written only when
        something changed (checked first on a copy, then again under the lock)."""
        rollouts = self.all()
        if all(r.state == "cancelled" for r in rollouts.values()):
            return
        offers = self.store.offers()
        now = self.wall()
        for bundle_id, r in rollouts.items():
            if r.state == "cancelled":
                continue
            bundle = self.store.get(bundle_id)
            if bundle is None:
                continue
            before = r.describe()
            changes = advance(r, bundle, boxes, offers, now)
            if r.describe() == before and not (changes.offer or changes.withdraw):
                continue
            self._apply(bundle, boxes, now)

    def _apply(self, bundle: Bundle, boxes: list[Box], now: float) -> None:
        found: list[Changes] = []
        fresh: list[Rollout] = []

        def step(r: Rollout | None) -> Rollout | None:
            if r is not None:
                found.append(advance(r, bundle, boxes, self.store.offers(), now))
                fresh.append(r)
            return r

        try:
            self._change(bundle.id, step)
        except BundleError as exc:
            log.warning("rollout not moved on", extra={"bundle": bundle.id, "error": str(exc)})
            return
        if not found:
            return
        changes, r = found[0], fresh[0]
        if changes.halted and r.halt is not None:
            log.warning(
                "rollout halted",
                extra={
                    "bundle": bundle.id,
                    "version": r.version,
                    "pits_id": r.halt["pitsId"],
                    "state": r.halt["state"],
                    "withdrawn": changes.withdraw,
                },
            )
        if changes.withdraw:
            self.store.withdraw(changes.withdraw)
        if changes.offer:
            self.store.offer(bundle.id, changes.offer)
            log.info("rollout offered", extra={"bundle": bundle.id, "pits_ids": changes.offer})
