"""What the admin API can see and do, as a plain object over the relay's parts.

Every action is written to the audit log with who did it (the admin token's subject). The
public allowlist can be narrowed and widened here, within what the relay was started with;
the pits' own allowlist lives on the box and nothing here can widen it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlsplit

from cloud.active import ActivePits
from cloud.bundles import Bundle, BundleError, BundleStore
from cloud.cache import Cache
from cloud.clients import Origin
from cloud.cluster import Cluster
from cloud.control import PitsConnection
from cloud.drift import Seen
from cloud.metrics import Metrics
from cloud.registry import Registry
from cloud.replica_messages import Action
from cloud.rollout_store import Rollouts
from cloud.updates import Updates
from wire import ErrorCode, ProtocolError
from wire.paths import Allowlist, normalize_path

audit = logging.getLogger("pitlink.cloud.admin")

# Paths whose allowlist answer is remembered, at most (then forgotten all at once), and the
# longest remembered (a path may be as long as a 16 KiB request line).
MAX_REMEMBERED = 4096
MAX_REMEMBERED_LENGTH = 512
UPDATES_OFF = "updates are off on this relay: start it with --bundle-dir"


class PublicAllowlist:
    """The relay's public patterns, each of which can be switched off and on at runtime."""

    def __init__(self, patterns: Iterable[str]):
        self.entries: dict[str, bool] = {p: True for p in patterns}
        Allowlist(self.entries)  # refuse a bad pattern at start
        self._compiled = Allowlist(self.entries)
        # Answers already given: every public request asks, mostly for the same few paths.
        self._answers: dict[str, bool] = {}

    def allows(self, path: str) -> bool:
        answer = self._answers.get(path)
        if answer is None:
            answer = self._compiled.allows(path)
            if len(path) <= MAX_REMEMBERED_LENGTH:
                if len(self._answers) >= MAX_REMEMBERED:
                    self._answers.clear()
                self._answers[path] = answer
        return answer

    def set(self, pattern: str, enabled: bool) -> None:
        if pattern not in self.entries:
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"no allowlist entry {pattern[:100]!r}")
        self.entries[pattern] = enabled
        self._compiled = Allowlist(p for p, on in self.entries.items() if on)
        self._answers = {}

    def describe(self) -> list[dict[str, Any]]:
        return [{"pattern": p, "enabled": on} for p, on in self.entries.items()]


def _mismatch(seen: Seen) -> dict[str, Any]:
    """The first place this pits' FPVTrackside data differs from its schema, for the page."""
    m = seen.mismatch
    return {
        "at": seen.at,
        "endpoint": m.endpoint,
        "pointer": m.pointer,
        "kind": m.kind,
        "expected": m.expected,
        "message": m.message,
    }


class Admin:
    """The admin API's verbs; `who` is the admin token's subject, for the audit line.

    It is given the parts it acts on, not the relay: the registry, the cache and its numbers,
    the public allowlist, the active pits (and how to choose it), readiness, and the cluster
    when replicas share Redis.
    """

    def __init__(
        self,
        *,
        registry: Registry[PitsConnection],
        cache: Cache,
        metrics: Metrics,
        allowlist: PublicAllowlist,
        active: ActivePits,
        choose_active: Callable[[str | None], None],
        ready: Callable[[], bool],
        updates: Updates | None = None,
        cluster: Cluster | None = None,
        drift: Callable[[str], Seen | None] | None = None,
        pits_url: Callable[[str, Origin | None], str | None] | None = None,
        live: Callable[[str], dict[str, Any]] | None = None,
    ):
        self.registry = registry
        self.live = live  # does a box push, and when it last changed a file (cloud.push)
        self.drift = drift
        self.pits_url = pits_url  # `--pits-domain`: each pits' own address
        self.cache = cache
        self.metrics = metrics
        self.public_allowlist = allowlist
        self.active_pits = active
        self.choose_active = choose_active
        self.ready = ready
        self.cluster = cluster
        self.updates = updates or Updates(None, registry, metrics)

    @property
    def node_id(self) -> str | None:
        return None if self.cluster is None else self.cluster.node_id

    def _audit(self, who: str, action: str, **fields: Any) -> None:
        audit.info("admin action", extra={"admin": who, "action": action, **fields})

    async def connections(self, origin: Origin | None = None) -> list[dict[str, Any]]:
        """Every pits connection: this replica's live, and the other replicas' as they report;
        each pits' own address (`--pits-domain`) as the public reaches the relay (`origin`)."""
        now = time.time()
        here = self.node_id
        rows = []
        for conn in self.registry.live():
            row = conn.describe()
            row["lastSeenS"] = round(max(0.0, conn.clock() - conn.last_rx), 1)
            row["node"] = here
            seen = None if self.drift is None else self.drift(conn.pits_id)
            row["schemaMismatch"] = None if seen is None else _mismatch(seen)
            if self.live is not None:
                row.update(self.live(conn.pits_id))
            rows.append(row)
        others = await self._others()
        mine = {r["pitsId"] for r in rows}
        rows.extend(r for r in others if r.get("state") != "offline" and r["pitsId"] not in mine)
        offers = self._offers()
        for row in rows:
            offered = offers.get(row["pitsId"])
            row["offer"] = (
                None if offered is None else {"bundle": offered.id, "version": offered.version}
            )
            row["connectedForS"] = round(now - float(row.get("since") or now), 1)
            row.setdefault("lastSeenS", None)
            row.setdefault("schemaMismatch", None)
            row.setdefault("pushing", False)
            changed = row.get("newestChangeAt")
            row["newestChangeS"] = (
                None if not isinstance(changed, int | float) else round(max(0.0, now - changed), 1)
            )
            own = None if self.pits_url is None else self.pits_url(row["pitsId"], origin)
            row["url"] = own
            row["host"] = None if own is None else urlsplit(own).hostname
            row["active"] = row["pitsId"] == self.active_pits.pits_id
        return sorted(rows, key=lambda r: (r["pitsId"], str(r.get("node"))))

    async def _others(self) -> list[dict[str, Any]]:
        """What the other replicas publish (their live and offline boxes), or nothing."""
        if self.cluster is None:
            return []
        here = self.node_id
        rows = await self.cluster.all_connections() or []
        return [r for r in rows if r.get("node") != here and isinstance(r.get("pitsId"), str)]

    async def offline(self, live: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
        """The boxes connected in the last day that are no longer (here or, as the other
        replicas publish them, there): when each was last seen and why its link ended."""
        now = time.time()
        connected = {r["pitsId"] for r in (live if live is not None else await self.connections())}
        rows: dict[str, dict[str, Any]] = {}
        for gone in self.registry.offline.recent(now):
            rows[gone.pits_id] = dict(gone.describe(now), node=self.node_id)
        for row in await self._others():
            seen = row.get("lastSeenAt")
            if row.get("state") != "offline" or not isinstance(seen, int | float):
                continue
            if now - seen > self.registry.offline.keep:
                continue
            mine = rows.get(row["pitsId"])
            if mine is None or mine["lastSeenAt"] < seen:
                rows[row["pitsId"]] = dict(row, lastSeenS=round(max(0.0, now - seen), 1))
        return sorted(
            (r for p, r in rows.items() if p not in connected), key=lambda r: -r["lastSeenAt"]
        )

    def refused(self) -> list[dict[str, Any]]:
        """Boxes refused at the door lately, by the pits id their token claims (not verified)."""
        now = time.time()
        return [r.describe(now) for r in self.registry.refused.recent(now)]

    async def _act(self, who: str, pits_id: str, action: Action) -> None:
        """Do it here if the pits is connected here, else send it to the replica that holds it."""
        conn = self.registry.get(pits_id)
        if conn is not None:
            conn.act(action)
        elif self.cluster is None or not await self.cluster.admin(pits_id, action, who):
            raise ProtocolError(ErrorCode.UNAVAILABLE, f"pits {pits_id} is not connected")
        self._audit(who, action, pits_id=pits_id)

    async def reconnect(self, who: str, pits_id: str) -> None:
        await self._act(who, pits_id, "reconnect")

    async def pause(self, who: str, pits_id: str, paused: bool) -> None:
        await self._act(who, pits_id, "pause" if paused else "resume")

    async def purge(self, who: str, pits_id: str | None, prefix: str) -> int:
        prefix = normalize_path(prefix or "/")
        count = self.cache.purge(pits_id or None, prefix)
        if self.cluster is not None:
            count += await self.cluster.cache.purge(pits_id or None, prefix)
        self._audit(who, "purge", pits_id=pits_id, prefix=prefix, purged=count)
        return count

    def cache_stats(self) -> dict[str, Any]:
        stats = self.cache.stats()
        m = self.metrics
        return {
            "entries": stats.entries,
            "bytes": stats.bytes,
            "evictions": stats.evictions,
            "maxEntries": self.cache.max_entries,
            "maxBytes": self.cache.max_bytes,
            "hits": m.cache_hits._value.get(),
            "misses": m.cache_misses._value.get(),
            "revalidations": m.cache_revalidations._value.get(),
            "stale": m.cache_stale._value.get(),
            "bytesSaved": m.cache_bytes_saved._value.get(),
        }

    def allowlist(self) -> list[dict[str, Any]]:
        return self.public_allowlist.describe()

    def set_allowlist(self, who: str, pattern: str, enabled: bool) -> None:
        self.public_allowlist.set(pattern, enabled)
        self._audit(who, "allowlist", pattern=pattern, enabled=enabled)

    def set_active(self, who: str, pits_id: str | None) -> None:
        self.choose_active(pits_id or None)
        self._audit(who, "active_pits", pits_id=pits_id)

    def active(self) -> dict[str, Any]:
        """The active pits, the one an operator named (if any), and how it became active."""
        active = self.active_pits
        return {
            "activePits": active.pits_id,
            "activeChosen": active.chosen,
            "activeHow": active.how,
        }

    # -- updates ---------------------------------------------------------------------------------

    def store(self) -> BundleStore:
        if self.updates.store is None:
            raise BundleError(UPDATES_OFF, ErrorCode.DENIED, 404)
        return self.updates.store

    def _offers(self) -> dict[str, Bundle]:
        """pits id → the bundle standing offered to it."""
        store = self.updates.store
        if store is None:
            return {}
        bundles = {b.id: b for b in store.bundles()}
        return {p: bundles[b] for p, b in store.offers().items() if b in bundles}

    def bundles(self) -> dict[str, Any]:
        """The stored bundles, each with the pits ids it stands offered to."""
        store = self.updates.store
        if store is None:
            return {"enabled": False, "message": UPDATES_OFF, "bundles": []}
        offers = store.offers()
        rollouts = self._rollouts().all()
        rows = []
        for bundle in store.bundles():
            row = bundle.describe()
            row["offeredTo"] = sorted(p for p, b in offers.items() if b == bundle.id)
            rollout = rollouts.get(bundle.id)
            row["rollout"] = None if rollout is None else rollout.describe()
            rows.append(row)
        return {"enabled": True, "maxBytes": store.max_bytes, "bundles": rows}

    def added(self, who: str, bundle: Bundle) -> None:
        self._audit(who, "bundle_add", bundle=bundle.id, version=bundle.version, arch=bundle.arch)

    def remove_bundle(self, who: str, bundle_id: str) -> list[str]:
        bundle, withdrawn = self.store().remove(bundle_id)
        self._rollouts().forget(bundle.id)
        self._audit(who, "bundle_remove", bundle=bundle.id, version=bundle.version)
        self.updates.refresh()
        return withdrawn

    def offer(self, who: str, bundle_id: str, pits_ids: list[str]) -> dict[str, Any]:
        """Offer a bundle to these pits: at once to those connected here, to the others when
        they next say hello (or, on other replicas sharing the folder, at their next tick)."""
        bundle = self.store().offer(bundle_id, pits_ids)
        self._audit(who, "offer", bundle=bundle.id, version=bundle.version, pits_ids=pits_ids)
        return {"bundle": bundle.id, "offered": pits_ids, "sent": self.updates.refresh()}

    def withdraw(self, who: str, pits_ids: list[str]) -> dict[str, Any]:
        withdrawn = self.store().withdraw(pits_ids)
        self._audit(who, "withdraw", pits_ids=withdrawn)
        return {"withdrawn": withdrawn, "sent": self.updates.refresh()}

    def _rollouts(self) -> Rollouts:
        if self.updates.rollouts is None:
            raise BundleError(UPDATES_OFF, ErrorCode.DENIED, 404)
        return self.updates.rollouts

    def rollout(self, who: str, bundle_id: str, wave: int, first: list[str]) -> dict[str, Any]:
        """Start offering a bundle in a wave of `wave` boxes (`first` among them), then to
        the rest once the wave is good (cloud.rollout)."""
        rollout = self._rollouts().start(bundle_id, wave, first, who)
        self._audit(who, "rollout", bundle=bundle_id, version=rollout.version, wave=wave)
        self.updates.refresh()
        return self._rollout_of(bundle_id)

    def resume_rollout(self, who: str, bundle_id: str) -> dict[str, Any]:
        rollout = self._rollouts().resume(bundle_id)
        self._audit(who, "rollout_resume", bundle=bundle_id, skipped=rollout.skipped)
        self.updates.refresh()
        return self._rollout_of(bundle_id)

    def cancel_rollout(self, who: str, bundle_id: str) -> dict[str, Any]:
        _rollout, withdrawn = self._rollouts().cancel(bundle_id)
        self._audit(who, "rollout_cancel", bundle=bundle_id, withdrawn=withdrawn)
        self.updates.refresh()
        return {**self._rollout_of(bundle_id), "withdrawn": withdrawn}

    def _rollout_of(self, bundle_id: str) -> dict[str, Any]:
        rollout = self._rollouts().all().get(bundle_id)
        return {"rollout": None if rollout is None else rollout.describe()}

    async def overview(self, origin: Origin | None = None) -> dict[str, Any]:
        connections = await self.connections(origin)
        return {
            "updates": self.bundles(),
            "connections": connections,
            "offline": await self.offline(connections),
            "refused": self.refused(),
            **self.active(),
            "cache": self.cache_stats(),
            "allowlist": self.allowlist(),
            "ready": self.ready(),
            "node": self.node_id,
        }
